//! Power loss: a cut keeps only what reached the disk. The agent is traced
//! with `strace` through a deploy, a rollback, a refusal, a forge that
//! limits its rate and the switch unit's recorder, and every change it makes
//! in its state directory is held to the order a cut requires
//! (`ferry_test_support::strace::check`). With every change synced before
//! the next begins, what a cut at any instant leaves is what a kill at that
//! instant leaves, and resuming from a kill at every durable write is what
//! the kill tests prove.

use ferry_test_support::strace;

use super::*;

/// The state directory of `World`'s agent (the default).
const STATE: &str = "/var/lib/ferry-agent";

/// Files the agent writes in place, for information only: the lock's
/// holder (a pid, read only to name it in a refusal), the daemon's next
/// poll and what the last poll found waiting (both read by `status`). None
/// is read to decide anything.
const IN_PLACE: &[&str] = &["agent.lock", "next-poll", "waiting"];

/// node_exporter's textfile directory, where the agent puts its metrics.
const METRICS: &str = "/var/lib/ferry-agent-metrics";

/// The agent's clone of the deploy branch: libgit2's files. What it
/// relies on after a cut, its objects and refs, are synced by libgit2
/// before they are named; its configuration, written once when the clone is
/// made, is not.
const CLONE: &str = "/var/lib/ferry-agent/deploy.git";

/// The GC roots of the closures the agent realises: Nix puts each in place
/// (a symlink renamed over the last). A root a cut takes back leaves the
/// system's closure rooted by the system profile; a deploy resumed from
/// `realising` realises it again.
const GC_ROOTS: &str = "/var/lib/ferry-agent/gcroots";

impl World {
    /// Runs `args` of the agent under strace inside the testbed with
    /// `env`; returns whether it succeeded, what it said, and the trace.
    fn traced(&self, name: &str, env: &[&str], args: &[&str]) -> (bool, String, Vec<strace::Call>) {
        std::fs::create_dir_all(self.bed.host_path("/var/lib/ferry-trace")).unwrap();
        let trace = format!("/var/lib/ferry-trace/{name}");
        let mut argv: Vec<String> = vec!["env".into()];
        argv.extend(env.iter().map(|e| e.to_string()));
        argv.extend(strace::command(&trace));
        argv.extend([AGENT, "--config", "/etc/ferry/agent.toml"].map(String::from));
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = self
            .bed
            .exec(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(self.bed.host_path(&trace)).unwrap_or_else(|e| {
            panic!("no trace from strace ({e}): is strace installed? (scripts/install-deps)\n{said}")
        });
        // Kept for a look after a failure.
        let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("power-{name}.trace"));
        std::fs::write(&kept, &text).unwrap();
        (out.status.success(), said, strace::parse(&text))
    }
}

#[test]
fn every_durable_write_is_synced_in_the_order_a_power_cut_requires() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("fails", Behaviour::Exit(4)),
        ("c", Behaviour::Succeed),
    ]);
    // Metrics on: their counters in the state directory, the page in
    // node_exporter's directory.
    std::fs::create_dir_all(w.bed.host_path(METRICS)).unwrap();
    w.set_config(
        "[report]\n",
        &format!("[metrics]\ntextfile_dir = \"{METRICS}\"\n[report]\n"),
    );
    let mut runs = Vec::new();

    // A deploy from nothing: the state directory, the outbox, the state and
    // its extension, the statuses queued and delivered, the metrics.
    let r1 = w.release("b");
    let (ok, said, calls) = w.traced("deploy", &[], &["once"]);
    assert!(ok && said.contains("deployed"), "{said}");
    runs.push(("deploy", calls));
    // A switch that fails: rolled back.
    let r2 = w.release("fails");
    let (ok, said, calls) = w.traced("rollback", &[], &["once"]);
    assert!(!ok && said.contains("rolled back"), "{said}");
    runs.push(("rollback", calls));
    // A refusal (not signed).
    let refused = w.custom_release(
        &format!(
            "format = 1\nserial = 9\ncreated = 2026-11-21T23:00:00Z\n[hosts.web1]\ntoplevel = \"{}\"\n",
            w.systems["c"]
        ),
        None,
    );
    let (ok, said, calls) = w.traced("refusal", &[], &["once"]);
    assert!(!ok && said.contains("not signed"), "{said}");
    runs.push(("refusal", calls));
    w.reset_branch(&r2);
    // A forge that limits the rate: the statuses wait, the limit is kept.
    w.forge.answer.store(429, std::sync::atomic::Ordering::SeqCst);
    let r3 = w.release("c");
    let (ok, said, calls) = w.traced("rate-limited", &[], &["once"]);
    assert!(ok && said.contains("deployed"), "{said}");
    runs.push(("rate-limited", calls));
    // The switch unit's recorder, as its ExecStopPost runs it.
    let (ok, said, calls) = w.traced(
        "record",
        &["SERVICE_RESULT=success", "EXIT_CODE=exited", "EXIT_STATUS=0"],
        &["record-switch-result", &format!("{STATE}/ferry-switch-99.result")],
    );
    assert!(ok, "{said}");
    runs.push(("record", calls));

    let mut all = strace::Durable::default();
    let mut clone_named = 0;
    for (name, calls) in &runs {
        for under in [format!("{CLONE}/objects"), format!("{CLONE}/refs")] {
            match strace::synced_before_named(calls, &under) {
                Ok(n) => clone_named += n,
                Err(breaches) => panic!("{name}: {}", breaches.join("\n")),
            }
        }
        let checked = strace::check(calls, STATE, IN_PLACE, &[CLONE, GC_ROOTS]).and_then(|mut done| {
            let page = strace::check(calls, METRICS, &[], &[])?;
            done.replaced.extend(page.replaced);
            Ok(done)
        });
        match checked {
            Ok(done) => {
                all.replaced.extend(done.replaced);
                all.removed.extend(done.removed);
                all.created.extend(done.created);
            }
            Err(breaches) => panic!(
                "{name} (trace in {}/power-{name}.trace):\n{}",
                env!("CARGO_TARGET_TMPDIR"),
                breaches.join("\n")
            ),
        }
    }
    // The trace saw every kind of durable write, so the check above is not
    // passing for want of them.
    assert!(clone_named >= 3, "no pack, index and ref written by the fetches");
    let has = |set: &std::collections::BTreeSet<String>, part: &str| set.iter().any(|p| p.contains(part));
    for part in [
        "/state.json",
        "/state.ext/",
        "/outbox/",
        "/metrics.json",
        "/ferry_agent.prom",
        "/forge-rate-limit",
        "/ferry-switch-99.result",
    ] {
        assert!(has(&all.replaced, part), "no durable write of {part}: {all:?}");
    }
    for part in ["/outbox/", "/state.ext/"] {
        assert!(has(&all.removed, part), "no durable removal in {part}: {all:?}");
    }
    for dir in [
        STATE.to_owned(),
        format!("{STATE}/outbox"),
        format!("{STATE}/state.ext"),
    ] {
        assert!(all.created.contains(&dir), "{dir} not created durably: {all:?}");
    }
    // What was reported is what the runs said.
    assert!(w.status_of(&r1).iter().any(|(s, _)| s == "success"));
    assert!(w.status_of(&r2).iter().any(|(s, _)| s == "failure"));
    assert!(w.status_of(&refused).iter().any(|(s, _)| s == "failure"));
    assert!(w.status_of(&r3).is_empty(), "the forge asked to be left alone");
}
