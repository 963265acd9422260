//! A forge that rate-limits the host's token, through the real agent as a
//! service: for each forge's way of saying so (GitHub's 403 secondary limit,
//! GitLab's and Gitea's 429), the deploy goes on, the statuses wait in the
//! outbox while the forge asks, `ferry-agent status` and the journal say
//! until when (never a word of the token), and once the limit lifts every
//! status arrives, once each and in order.

use std::time::Duration;

use ferry_test_support::forge::{Forge, Kind, TOKEN};
use ferry_test_support::nix::Behaviour;

use super::{wait_until, World, SOURCE};

/// How long each limited answer asks the agent to wait.
const RETRY_AFTER: u64 = 4;

#[test]
fn a_rate_limited_forge_holds_the_statuses_not_the_deploy() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("c", Behaviour::Succeed),
        ("d", Behaviour::Succeed),
    ]);
    std::fs::write(w.bed.host_path("/etc/ferry/forge-token"), format!("{TOKEN}\n")).unwrap();
    let report = "[report]\nforge = \"gitea\"\n";
    let mut started = false;
    for (kind, system) in [(Kind::Github, "b"), (Kind::Gitlab, "c"), (Kind::Gitea, "d")] {
        let forge = Forge::start(kind);
        forge.limit(usize::MAX, RETRY_AFTER);
        let config = w
            .config
            .replace(report, &format!("[report]\nforge = \"{}\"\n", kind.name()))
            .replace(&w.forge.url(), &forge.api_url());
        std::fs::write(w.bed.host_path("/etc/ferry/agent.toml"), config).unwrap();
        if started {
            w.bed.exec(&["systemctl", "restart", "ferry-agent.service"]);
        } else {
            w.start_service();
            started = true;
        }
        let release = w.release(system);

        // Limited: the host says why its statuses wait, and deploys all the
        // same; nothing reaches the forge.
        wait_until(&w, 60, "ferry-agent status to tell the limit", || {
            let out = w.agent(&["status"]);
            String::from_utf8_lossy(&out.stdout).contains("the forge limits the rate of requests until")
        });
        wait_until(&w, 60, "the deploy while the forge limits", || {
            w.running() == w.systems[system]
        });
        assert!(forge.statuses().is_empty(), "{kind:?}: {:#?}", forge.statuses());
        let json = w.status_json();
        assert!(json["forge_rate_limited_until"].is_string(), "{kind:?}: {json}");
        forge.limit(0, 0);

        // Lifted: every status, once, in order.
        // (state, the description's start), on each commit; GitLab calls
        // pending "running".
        let pending = if kind == Kind::Gitlab {
            "running"
        } else {
            "pending"
        };
        let wanted = [(pending, "deploying release"), ("success", "web1 runs release")];
        wait_until(&w, 60, "every status once the limit lifts", || {
            forge.statuses().len() >= 4
        });
        std::thread::sleep(Duration::from_secs(2));
        let got: Vec<_> = forge.statuses();
        assert_eq!(got.len(), 4, "{kind:?}: each status once: {got:#?}");
        for sha in [release.as_str(), SOURCE] {
            let on: Vec<_> = got.iter().filter(|s| s.sha == sha).collect();
            assert_eq!(on.len(), wanted.len(), "{kind:?}: {got:#?}");
            for (s, (state, words)) in on.iter().zip(&wanted) {
                assert_eq!(s.state, *state, "{kind:?}: {got:#?}");
                assert!(s.description.starts_with(words), "{kind:?}: {got:#?}");
            }
        }

        // The forge was asked no more often than it allowed: after each
        // limited answer, nothing until its retry-after had passed; then
        // one request per status.
        let requests = forge.requests();
        let limited = requests.len() - 4;
        assert!(limited >= 1, "{kind:?}: {requests:#?}");
        for pair in requests.windows(2).take(limited) {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_secs(RETRY_AFTER),
                "{kind:?}: came back after {gap:?}"
            );
        }
        let json = w.status_json();
        assert_eq!(
            json["forge_rate_limited_until"],
            serde_json::Value::Null,
            "{kind:?}: {json}"
        );
        assert_eq!(json["statuses_queued"], 0, "{kind:?}: {json}");
    }

    let journal = w.journal("_SYSTEMD_UNIT=ferry-agent.service");
    assert!(
        journal.contains("the forge limits the rate of requests until"),
        "{journal}"
    );
    assert!(!journal.to_lowercase().contains("token"), "{journal}");
}
