//! The agent deploying another agent, with two real builds of it: the older
//! one (this tree) and a newer one (this tree built with the
//! `state-format-next` feature, which writes a newer format of the state's
//! extension that the older build cannot read). Each system of the test
//! carries one of them the way a NixOS system does: its activation installs
//! the agent's unit, and systemd is reloaded, not the agent restarted
//! (`restartIfChanged = false`).

use super::*;

/// Where the two builds are installed inside the testbed.
const OLDER: &str = "/usr/local/bin/ferry-agent-older";
const NEWER: &str = "/usr/local/bin/ferry-agent-newer";

/// The activation of a system carrying the agent `which` ("older" or
/// "newer"): its unit installed, systemd reloaded, and which one is
/// installed recorded for the test; then `then` (shell).
fn carries(which: &str, then: &str) -> Behaviour {
    let script = format!(
        "cp /etc/ferry/unit-{which} /etc/systemd/system/ferry-agent.service\n\
         systemctl daemon-reload\n\
         mkdir -p /run/ferry-test; echo {which} > /run/ferry-test/agent-unit\n\
         {then}"
    );
    Behaviour::Activation(Box::leak(script.into_boxed_str()))
}

impl World {
    /// Installs both builds and starts the service as the older one.
    fn start_older_agent(&self) {
        let newer = ferry_test_support::workspace_binary_with_features(
            "ferry-agent",
            "ferry-agent",
            &["state-format-next"],
        );
        self.bed.install(crate::common::agent_binary(), OLDER);
        self.bed.install(newer, NEWER);
        for (which, exe) in [("older", OLDER), ("newer", NEWER)] {
            std::fs::write(
                self.bed.host_path(&format!("/etc/ferry/unit-{which}")),
                agent_unit(exe),
            )
            .unwrap();
        }
        self.start_unit(&agent_unit(OLDER));
    }

    /// How many times the agent at `exe` started as the service (the
    /// journal's `_EXE`: which program logged it, in its own words or not).
    fn starts_of(&self, exe: &str) -> usize {
        let out = self.bed.exec(&[
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "_SYSTEMD_UNIT=ferry-agent.service",
            &format!("_EXE={exe}"),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .matches("ferry-agent started")
            .count()
    }

    /// The states of the statuses posted on `commit`, in order.
    fn states_of(&self, commit: &str) -> Vec<String> {
        self.status_of(commit).into_iter().map(|(s, _)| s).collect()
    }
}

/// A release whose system carries a newer agent fails its health check
/// after the newer agent took over mid-deploy (the older one was killed
/// during the switch): the newer agent rolls back to the system of the
/// older one, hands over to it (it does not run on as the agent of a
/// rejected system), and the older agent reads the state the newer one
/// wrote and goes on deploying. Then a healthy release carrying the newer
/// agent: the older agent switches without being stopped, reports it once,
/// and the newer one takes over and deploys the next release.
#[test]
fn an_agent_hands_over_to_the_agent_of_each_system_it_switches_to() {
    let seed = ferry_test_support::unique("u");
    let w = World::with_current(
        carries("older", ""),
        &[
            (
                "bad",
                carries(
                    "newer",
                    &format!("systemd-run --quiet --unit=broken-{seed} /bin/false\nsleep 6"),
                ),
            ),
            ("upgrade", carries("newer", "")),
            ("after", Behaviour::Succeed),
        ],
    );
    w.start_older_agent();
    let journal = || w.journal("_SYSTEMD_UNIT=ferry-agent.service");
    wait_until(&w, 60, "the older agent to start", || w.starts_of(OLDER) == 1);
    let installed = || {
        std::fs::read_to_string(w.bed.host_path("/run/ferry-test/agent-unit"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };

    // 1. A release carrying the newer agent and a unit that fails. The older
    //    agent starts the switch; the switch installs the newer agent's unit;
    //    the older agent is killed mid-switch, so systemd starts the newer.
    let r1 = w.release("bad");
    wait_until(&w, 60, "the switch to install the newer agent's unit", || {
        installed() == "newer"
    });
    let out = w
        .bed
        .exec(&["systemctl", "kill", "-s", "KILL", "ferry-agent.service"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(&w, 60, "the newer agent to take over", || w.starts_of(NEWER) == 1);
    // The newer agent resumes, finds the failed unit, rolls back to the
    // system of the older agent, and hands over to it.
    wait_until(&w, 90, "the rollback's failure status", || {
        w.states_of(&r1).contains(&"failure".to_owned())
    });
    assert_eq!(w.running(), w.systems["current"]);
    assert_eq!(installed(), "older");
    wait_until(
        &w,
        60,
        "the older agent to start again after the rollback",
        || w.starts_of(OLDER) == 2,
    );
    // The older agent met the newer agent's state format, and went on with
    // what it can read rather than refuse to start.
    wait_until(&w, 30, "the older agent to read the newer state", || {
        journal().contains("written by a newer ferry-agent (extension format 2; this one reads 1 to 1)")
    });
    // Not stranded: it deploys the next release (which carries the newer
    // agent again, healthy this time). The switch does not stop it; it
    // reports the release once, then hands over.
    let r2 = w.release("upgrade");
    wait_until(&w, 90, "the older agent to deploy the upgrade", || {
        w.states_of(&r2).contains(&"success".to_owned())
    });
    wait_until(&w, 60, "the newer agent to take over after the upgrade", || {
        w.starts_of(NEWER) == 2
    });
    assert_eq!(w.starts_of(OLDER), 2, "the switch did not stop the older agent");
    // The newer agent deploys what comes next.
    let r3 = w.release("after");
    wait_until(&w, 90, "the newer agent to deploy the next release", || {
        w.states_of(&r3).contains(&"success".to_owned())
    });
    assert_eq!(w.running(), w.systems["after"]);

    // Each release reported exactly once, whichever agent began and ended it.
    assert_eq!(w.states_of(&r1), ["pending", "failure"]);
    assert_eq!(w.states_of(&r2), ["pending", "success"]);
    assert_eq!(w.states_of(&r3), ["pending", "success"]);
    // One switch per release, and one rollback.
    let switches: Vec<String> = w.switch_log();
    let to = |system: &str| {
        switches
            .iter()
            .filter(|l| l.ends_with(&w.systems[system]))
            .count()
    };
    assert_eq!(
        (to("bad"), to("current"), to("upgrade"), to("after")),
        (1, 1, 1, 1),
        "{switches:?}"
    );
    let said = journal();
    assert!(!said.contains("is corrupt"), "{said}");
    assert_eq!(
        said.matches("restarting into the one installed now").count(),
        2,
        "after the rollback and after the upgrade: {said}"
    );
    let out = w.bed.exec(&["systemctl", "is-active", "ferry-agent.service"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "active");
}
