//! The two-person rule: a release short of approvals changes nothing and
//! says so once; approvals that do not count; who may release; a deploy
//! resumed after a crash remembers the approval it was accepted at.

use super::*;

const A1: &str = "a111111111111111111111111111111111111111";

const A2: &str = "a222222222222222222222222222222222222222";

const A3: &str = "a333333333333333333333333333333333333333";

const TWO_APPROVERS: &str = "[approvals]\nrequired = 2\napprovers = [\"alice\", \"bob\", \"carol\"]\n";

fn approval(id: &str, principal: &str) -> Approval {
    Approval {
        commit: commit(id),
        signer: Signer {
            principal: principal.into(),
            fingerprint: format!("SHA256:{principal}"),
            key_type: "ssh-ed25519".into(),
        },
    }
}

/// Moves the fake branch to `tip`: release 1 with `approvals` on top.
fn approve(host: &Host, tip: &str, approvals: Vec<Approval>) {
    let mut w = host.w();
    let Verifies::As(release) = w.releases[&commit(R1)].clone() else {
        unreachable!("release 1 verifies")
    };
    w.releases
        .insert(commit(tip), Verifies::Approved(release, approvals));
    w.tip = commit(tip);
}

#[test]
fn a_release_awaiting_approvals_changes_nothing_and_says_so_once() {
    let host = Host::new();
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert_eq!(
        r,
        Pass::AwaitingApproval {
            serial: 1,
            approved: vec![],
            required: 2
        }
    );
    assert!(r.is_ok(), "awaiting approval is not an error");
    assert_eq!(host.changes(), Vec::<String>::new());
    let state = host.state();
    assert_eq!(
        state.anchor, None,
        "the anchor moves only for an accepted release"
    );
    assert_eq!(state.in_flight, None);
    // Posted on the release and its source commit, once.
    assert_eq!(
        posted(&host),
        [
            (
                commit(R1),
                StatusState::Pending,
                "release 1 awaits approval (0 of 2)".into()
            ),
            (
                commit(SOURCE),
                StatusState::Pending,
                "release 1 awaits approval (0 of 2)".into()
            ),
        ]
    );
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);

    // One approval: still waiting, and the forge hears who approved.
    approve(&host, A1, vec![approval(A1, "alice")]);
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert!(
        matches!(r, Pass::AwaitingApproval { ref approved, .. } if approved == &["alice"]),
        "{r:?}"
    );
    assert_eq!(host.changes(), Vec::<String>::new());
    assert_eq!(
        host.statuses().last().unwrap().1,
        "release 1 awaits approval (1 of 2: alice)"
    );
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);
    assert_eq!(host.statuses().len(), 4, "nothing is posted again at a poll");

    // The second approval: deployed, pending then success, anchored on the release.
    approve(&host, A2, vec![approval(A1, "alice"), approval(A2, "bob")]);
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    let s = host.statuses();
    let (deploying, runs) = (wording::deploying(&web1(), 1), wording::runs_release(&web1(), 1));
    assert_eq!(
        s[4..],
        [
            (StatusState::Pending, deploying.clone()),
            (StatusState::Pending, deploying),
            (StatusState::Success, runs.clone()),
            (StatusState::Success, runs),
        ]
    );
    let state = host.state();
    assert_eq!(state.anchor.map(|a| a.commit), Some(commit(R1)));
    assert_eq!(state.last_seen_tip, Some(commit(A2)));
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);
}

#[test]
fn approvals_that_do_not_count_leave_the_release_waiting() {
    for (what, approvals) in [
        (
            "the same approver twice",
            vec![approval(A1, "alice"), approval(A2, "alice")],
        ),
        (
            "the releaser",
            vec![approval(A1, "alice"), approval(A2, "ci@example.com")],
        ),
        (
            "not an approver",
            vec![approval(A1, "alice"), approval(A2, "mallory")],
        ),
    ] {
        let host = Host::new();
        approve(&host, A2, approvals);
        let r = run(&mut host.agent_with(TWO_APPROVERS));
        assert!(
            matches!(r, Pass::AwaitingApproval { ref approved, .. } if approved == &["alice"]),
            "{what}: {r:?}"
        );
        assert_eq!(host.changes(), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn a_host_without_the_requirement_deploys_at_once() {
    let host = Host::new();
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
}

#[test]
fn a_release_by_someone_who_may_not_release_is_refused() {
    let host = Host::new();
    let policy = "[approvals]\nreleasers = [\"release-bot\"]\n";
    let r = run(&mut host.agent_with(policy));
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("signed by ci@example.com, who may not release here")),
        "{r:?}"
    );
    assert_eq!(host.changes(), Vec::<String>::new());
    assert_eq!(
        host.statuses()[0],
        (
            StatusState::Failure,
            "refused: release signed by ci@example.com, who may not release".into()
        )
    );
}

#[test]
fn approvals_dropped_after_the_deploy_change_nothing() {
    let host = Host::new();
    approve(&host, A2, vec![approval(A1, "alice"), approval(A2, "bob")]);
    assert!(matches!(
        run(&mut host.agent_with(TWO_APPROVERS)),
        Pass::Deployed { .. }
    ));
    let before = host.changes();
    // The branch is rewound to the first approval: the release is still
    // the anchor, and the host keeps running it.
    approve(&host, A1, vec![approval(A1, "alice")]);
    host.w().running = Some(system('b'));
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert_eq!(r, Pass::AlreadyRunning);
    assert_eq!(host.changes(), before);
    assert_eq!(host.state().anchor.map(|a| a.commit), Some(commit(R1)));
}

#[test]
fn a_deploy_resumed_after_a_crash_remembers_the_approval_it_was_accepted_at() {
    let host = Host::new();
    approve(&host, A3, vec![approval(A1, "alice"), approval(A3, "carol")]);
    host.w().crash_at = Some("realise");
    assert!(killed(&mut host.agent_with(TWO_APPROVERS)));
    assert_eq!(host.state().in_flight.map(|f| f.tip), Some(commit(A3)));
    assert!(matches!(
        run(&mut host.agent_with(TWO_APPROVERS)),
        Pass::Deployed { .. }
    ));
    assert_eq!(host.state().last_seen_tip, Some(commit(A3)));
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);
}

/// An unsigned commit pushed on top of a release awaiting approvals is
/// refused; when the branch is rewound to the release, the forge already
/// has its "awaits approval" status, and it is not posted again.
#[test]
fn a_rewind_past_a_refused_commit_does_not_repeat_awaits_approval() {
    const BAD: &str = "bad0000000000000000000000000000000000000";
    let host = Host::new();
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert!(matches!(r, Pass::AwaitingApproval { .. }), "{r:?}");
    let awaiting = posted(&host);
    assert_eq!(awaiting.len(), 2, "{awaiting:?}");
    {
        let mut w = host.w();
        w.releases.insert(commit(BAD), Verifies::Unsigned);
        w.tip = commit(BAD);
    }
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert!(matches!(r, Pass::Refused(_)), "{r:?}");
    let refused = posted(&host);
    assert_eq!(refused.len(), 3, "the refusal, on the bad commit: {refused:?}");
    assert_eq!(refused[2].0, commit(BAD));

    host.w().tip = commit(R1);
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert!(matches!(r, Pass::AwaitingApproval { .. }), "{r:?}");
    assert_eq!(posted(&host), refused, "nothing new to say about release 1");
}
