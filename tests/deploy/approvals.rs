//! The two-person rule end to end: a host that requires two approvals
//! verifies a release, says once that it awaits approval and keeps its
//! system; a canary host without the requirement deploys the same release at
//! once; each approval (a signed commit on top of the release, pushed to the
//! real `git daemon`) is counted, and the second one deploys (pending, then
//! success, on the release commit).

use ferry_signer::keys::SigningKey;
use ferry_signer::{Action, HostEntry};

use super::{World, AGENT};
use ferry_test_support::nix::Behaviour;

const POLICY: &str =
    "[approvals]\nrequired = 2\napprovers = [\"alice\", \"bob\"]\nreleasers = [\"ci@example.com\"]\n";

/// (state, description) of the statuses posted on `commit` for `context`.
fn posted(w: &World, commit: &str, context: &str) -> Vec<(String, String)> {
    w.forge
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(commit) && r.body["context"] == context)
        .map(|r| {
            (
                r.body["state"].as_str().unwrap_or("").to_owned(),
                r.body["description"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

pub(super) fn approve(w: &World, key: &SigningKey) -> String {
    let repo = git2::Repository::open(&w.deploy.path).unwrap();
    let tip = ferry_signer::git::branch_tip(&repo, "deploy").unwrap().unwrap();
    ferry_signer::publish::approve(&repo, "deploy", tip, key, "approve")
        .unwrap()
        .to_string()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn a_host_requiring_two_approvals_waits_for_them_while_a_canary_deploys_at_once() {
    let w = World::new(&[("next", Behaviour::Succeed), ("canary", Behaviour::Succeed)]);
    let alice = SigningKey::generate("alice").unwrap();
    let bob = SigningKey::generate("bob").unwrap();
    let signers = [
        w.deploy.key.allowed_signers_line("ci@example.com"),
        alice.allowed_signers_line("alice"),
        bob.allowed_signers_line("bob"),
    ];
    std::fs::write(
        w.bed.host_path("/etc/ferry/allowed_signers"),
        signers.join("\n") + "\n",
    )
    .unwrap();
    std::fs::write(
        w.bed.host_path("/etc/ferry/agent.toml"),
        format!("{}{POLICY}", w.config),
    )
    .unwrap();
    // The canary: its own host entry, state and switch unit, no approvals.
    let canary_config = w
        .config
        .replace(
            "host = \"web1\"",
            "host = \"canary1\"\nstate_dir = \"/var/lib/ferry-canary\"",
        )
        .replace("[switch]\n", "[switch]\nunit = \"ferry-canary\"\n");
    std::fs::write(w.bed.host_path("/etc/ferry/canary.toml"), canary_config).unwrap();

    // One release for both hosts, by CI.
    let repo = git2::Repository::open(&w.deploy.path).unwrap();
    let entry = |system: &str| HostEntry {
        toplevel: w.systems[system].parse().unwrap(),
        action: Action::Switch,
    };
    let changes = ferry_signer::publish::ReleaseChanges {
        hosts: [
            ("web1".parse().unwrap(), entry("next")),
            ("canary1".parse().unwrap(), entry("canary")),
        ]
        .into(),
        ..Default::default()
    };
    let release =
        ferry_signer::publish::publish(&repo, "deploy", &w.deploy.key, &changes, None, chrono::Utc::now())
            .unwrap()
            .commit
            .to_string();

    // Production: awaits approval, nothing changes.
    let (ok, text) = w.once();
    assert!(ok, "{text}");
    assert!(text.contains("awaiting approval: release 1: 0 of 2"), "{text}");
    assert_eq!(w.running(), w.systems["current"]);
    assert_eq!(w.profile(), w.systems["current"]);
    assert!(w.switch_log().is_empty(), "{:?}", w.switch_log());

    // The canary deploys the same release at once.
    let out = w.bed.exec(&[AGENT, "--config", "/etc/ferry/canary.toml", "once"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("deployed"), "{text}");
    assert_eq!(w.running(), w.systems["canary"]);
    assert_eq!(
        posted(&w, &release, "ferry/canary1"),
        pairs(&[
            ("pending", "deploying release 1 to canary1"),
            ("success", "canary1 runs release 1")
        ])
    );

    // Production polls again: still waiting, and says nothing new; its
    // status says what it waits for.
    let (ok, text) = w.once();
    assert!(ok && text.contains("up to date"), "{text}");
    let status = w.agent(&["status"]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("waiting         awaiting approval: release 1: 0 of 2 (since "),
        "{shown}"
    );
    assert_eq!(
        w.status_json()["waiting"]["what"],
        "awaiting approval: release 1: 0 of 2"
    );
    assert_eq!(
        posted(&w, &release, "ferry/web1"),
        pairs(&[("pending", "release 1 awaits approval (0 of 2)")])
    );

    // Alice approves: counted, still waiting, the host keeps its system.
    let first = approve(&w, &alice);
    let (ok, text) = w.once();
    assert!(ok && text.contains("1 of 2 (alice)"), "{text}");
    assert_eq!(
        w.switch_log().len(),
        1,
        "only the canary switched: {:?}",
        w.switch_log()
    );
    assert_eq!(w.running(), w.systems["canary"]);

    // Bob approves: deployed, reported on the release commit.
    let tip = approve(&w, &bob);
    let (ok, text) = w.once();
    assert!(ok && text.contains("deployed"), "{text}");
    assert_eq!(w.running(), w.systems["next"]);
    assert_eq!(w.profile(), w.systems["next"]);
    assert_eq!(
        posted(&w, &release, "ferry/web1"),
        pairs(&[
            ("pending", "release 1 awaits approval (0 of 2)"),
            ("pending", "release 1 awaits approval (1 of 2: alice)"),
            ("pending", "deploying release 1 to web1"),
            ("success", "web1 runs release 1"),
        ])
    );
    assert!(
        posted(&w, &tip, "ferry/web1").is_empty(),
        "statuses go to the release, not the approval"
    );
    let (ok, text) = w.once();
    assert!(ok && text.contains("up to date"), "{text}");
    let status = w.status_json();
    assert_eq!(status["last_release"]["commit"], release.as_str(), "{status}");

    // The branch is rewound to drop bob's approval after the host deployed:
    // the release is still the anchor, so nothing changes and nothing fails.
    ferry_test_support::git(&w.deploy.path, &["update-ref", "refs/heads/deploy", &first]);
    let (ok, text) = w.once();
    assert!(ok && text.contains("already running the release"), "{text}");
    assert_eq!(w.running(), w.systems["next"]);
    assert_eq!(w.switch_log().len(), 2, "{:?}", w.switch_log());
    assert!(
        posted(&w, &release, "ferry/web1")
            .iter()
            .all(|(state, _)| state != "failure"),
        "{:?}",
        posted(&w, &release, "ferry/web1")
    );
}
