//! The pipeline: a new release realised, switched, checked and reported;
//! what is refused, waited for and rolled back, and what stays untouched.

use super::*;

#[test]
fn a_new_release_is_realised_switched_checked_and_reported() {
    let host = Host::new();
    let r = run(&mut host.agent());
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    let b = system('b');
    assert_eq!(
        host.changes(),
        [
            format!("realise {}", b.name()),
            format!("profile {}", b.name()),
            format!("start switch 1 {} switch", b.name()),
            "health".into(),
        ]
    );
    let state = host.state();
    assert_eq!(state.in_flight, None);
    assert_eq!(state.anchor.map(|a| (a.commit, a.serial)), Some((commit(R1), 1)));
    assert_eq!(state.last_seen_tip, Some(commit(R1)));
    let success = state.last_success.expect("recorded");
    assert_eq!(success.result, OutcomeKind::Success);
    assert_eq!(success.toplevel, Some(b));
    assert_eq!(state.last_outcome, Some(success));
    // Each status goes to the release commit and its source commit.
    assert_eq!(
        host.statuses(),
        [
            (StatusState::Pending, wording::deploying(&web1(), 1)),
            (StatusState::Pending, wording::deploying(&web1(), 1)),
            (StatusState::Success, wording::runs_release(&web1(), 1)),
            (StatusState::Success, wording::runs_release(&web1(), 1)),
        ]
    );
    // Nothing more to do: the tip is remembered.
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
}

#[test]
fn the_anchor_moves_before_realising() {
    let host = Host::new();
    run(&mut host.agent());
    let seen = host.w().state_at_realise.clone().expect("realised");
    assert_eq!(seen.anchor.map(|a| (a.commit, a.serial)), Some((commit(R1), 1)));
    let flight = seen.in_flight.expect("recorded in flight");
    assert_eq!(flight.phase, Phase::Realising);
    assert_eq!(flight.previous, Some(system('a')));
    assert_eq!(flight.failed_before, ["old.service"]);
    // The tip is remembered only once the deploy ended.
    assert_eq!(seen.last_seen_tip, None);
}

#[test]
fn already_running_records_success_and_changes_nothing() {
    let host = Host::new();
    host.w().running = Some(system('b'));
    assert_eq!(run(&mut host.agent()), Pass::AlreadyRunning);
    assert_eq!(host.changes(), Vec::<String>::new());
    let state = host.state();
    assert_eq!(state.anchor.map(|a| a.serial), Some(1));
    assert_eq!(state.last_success.map(|o| o.result), Some(OutcomeKind::Success));
    assert_eq!(
        host.statuses().last(),
        Some(&(StatusState::Success, wording::runs_release(&web1(), 1)))
    );
}

/// A refusal case: how the world is set, the status it is reported with,
/// and words its description contains.
struct RefusalCase {
    name: &'static str,
    set: fn(&mut World),
    status: StatusState,
    says: &'static str,
}

#[test]
fn every_refusal_records_reports_and_leaves_the_host_untouched() {
    let cases = [
        RefusalCase {
            name: "unsigned",
            set: |w| {
                w.releases.insert(commit(R1), Verifies::Unsigned);
            },
            status: StatusState::Failure,
            says: "not signed",
        },
        RefusalCase {
            name: "unreadable commit",
            set: |w| {
                w.releases.insert(commit(R1), Verifies::Unreadable);
            },
            status: StatusState::Error,
            says: "cannot read the release commit",
        },
        RefusalCase {
            name: "no entry for this host",
            set: |w| {
                w.releases
                    .insert(commit(R1), Verifies::As(verified(R1, 1, None, t0())));
            },
            status: StatusState::Failure,
            says: "no entry for web1",
        },
        RefusalCase {
            name: "unsigned path in the cache",
            set: |w| w.cached = Cached::Unsigned,
            status: StatusState::Failure,
            says: "is not signed",
        },
        RefusalCase {
            name: "oversized narinfo",
            set: |w| w.cached = Cached::Oversized,
            status: StatusState::Failure,
            says: "served bad metadata",
        },
        RefusalCase {
            name: "disk space unknown",
            set: |w| w.cached = Cached::DiskUnknown,
            status: StatusState::Error,
            says: "cannot check free disk space",
        },
    ];
    for case in cases {
        let host = Host::new();
        (case.set)(&mut host.w());
        let r = run(&mut host.agent());
        assert!(matches!(r, Pass::Refused(_)), "{}: {r:?}", case.name);
        assert_eq!(host.changes(), Vec::<String>::new(), "{}", case.name);
        let state = host.state();
        assert_eq!(state.last_seen_tip, Some(commit(R1)), "{}", case.name);
        assert_eq!(state.anchor, None, "{}: the anchor does not move", case.name);
        assert_eq!(state.in_flight, None, "{}", case.name);
        let outcome = state.last_outcome.expect("recorded");
        assert_eq!(outcome.result, OutcomeKind::Refused, "{}", case.name);
        assert!(
            outcome.description.contains(case.says),
            "{}: {}",
            case.name,
            outcome.description
        );
        let (status, description) = host.statuses().pop().expect("reported");
        assert_eq!(status, case.status, "{}", case.name);
        assert_eq!(description, outcome.description, "{}", case.name);
        // Refused once: the same tip is not looked at again.
        assert_eq!(run(&mut host.agent()), Pass::UpToDate, "{}", case.name);
    }
}

#[test]
fn anti_rollback_refusals_leave_the_anchor_where_it_was() {
    let host = Host::new();
    run(&mut host.agent());
    let anchor = host.state().anchor;
    for (serial, descends, says) in [
        (2, false, "rewound"),
        (1, true, "not greater than the last accepted serial 1"),
    ] {
        {
            let mut w = host.w();
            w.tip = commit(R2);
            let r = verified(R2, serial, Some((system('c'), Action::Switch)), t0());
            w.releases.insert(commit(R2), Verifies::As(r));
            w.descends = descends;
            w.effects.clear();
        }
        let mut state = host.state();
        state.last_seen_tip = Some(commit(R1));
        StateDir::open(&host.dir.path().join("state"))
            .unwrap()
            .save(&state)
            .unwrap();
        let r = run(&mut host.agent());
        assert!(matches!(&r, Pass::Refused(why) if why.contains(says)), "{r:?}");
        assert_eq!(host.changes(), Vec::<String>::new());
        assert_eq!(host.state().anchor, anchor);
        assert_eq!(host.statuses().last().map(|s| s.0), Some(StatusState::Failure));
    }
}

#[test]
fn waiting_for_the_cache_is_a_wait_reported_once() {
    let host = Host::new();
    host.w().cached = Cached::Missing;
    let mut agent = host.agent();
    for _ in 0..3 {
        let r = run(&mut agent);
        assert!(matches!(r, Pass::WaitingForClosure { serial: 1, .. }), "{r:?}");
        let state = host.state();
        assert_eq!(
            state.last_seen_tip, None,
            "the tip is not remembered while waiting"
        );
        assert_eq!(state.anchor, None);
        assert_eq!(state.last_outcome, None);
    }
    assert_eq!(host.changes(), Vec::<String>::new());
    let waiting = |host: &Host| {
        host.statuses()
            .into_iter()
            .filter(|(s, d)| *s == StatusState::Pending && d.contains("waiting for the closure"))
            .count()
    };
    // Once, on the release commit and its source commit.
    assert_eq!(waiting(&host), 2, "{:?}", host.statuses());
    host.w().cached = Cached::Yes;
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(waiting(&host), 2);
    let deploying = host
        .statuses()
        .into_iter()
        .filter(|(_, d)| d.starts_with("deploying release 1"))
        .count();
    assert_eq!(deploying, 2, "one per commit, not one per attempt");
}

/// A cache that answers 503 for many polls, across a restart, posts the
/// release's pending status once per commit; a different status (waiting
/// for the closure) is still posted, and so is the final one, once.
#[test]
fn a_transient_cache_fault_posts_one_pending_status_across_polls_and_restarts() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let deploying = wording::deploying(&web1(), 1);
    let pending = vec![
        (commit(R1), StatusState::Pending, deploying.clone()),
        (commit(SOURCE), StatusState::Pending, deploying.clone()),
    ];
    let mut agent = host.agent();
    for poll in 0..4 {
        let err = transient(&mut agent);
        assert!(err.contains("HTTP 503"), "poll {poll}: {err}");
        assert_eq!(posted(&host), pending, "poll {poll}");
    }
    // A restart forgets nothing: the same status is not posted again.
    let mut agent = host.agent();
    for poll in 0..3 {
        transient(&mut agent);
        assert_eq!(posted(&host), pending, "after the restart, poll {poll}");
    }
    // Another status of the same release and context is posted.
    host.w().cached = Cached::Missing;
    let r = run(&mut agent);
    assert!(matches!(r, Pass::WaitingForClosure { serial: 1, .. }), "{r:?}");
    let waiting = wording::waiting_for_closure(1);
    let mut expected = pending.clone();
    expected.extend([
        (commit(R1), StatusState::Pending, waiting.clone()),
        (commit(SOURCE), StatusState::Pending, waiting),
    ]);
    assert_eq!(posted(&host), expected);
    host.w().cached = Cached::Unavailable;
    transient(&mut agent);
    assert_eq!(posted(&host), expected, "still waiting: nothing new to say");
    // Recovery: the final status, once per commit.
    host.w().cached = Cached::Yes;
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let success = wording::runs_release(&web1(), 1);
    expected.extend([
        (commit(R1), StatusState::Success, success.clone()),
        (commit(SOURCE), StatusState::Success, success),
    ]);
    assert_eq!(posted(&host), expected);
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
    assert_eq!(posted(&host), expected);
}

#[test]
fn a_realise_failure_is_an_error_and_nothing_is_switched() {
    let host = Host::new();
    host.w().realise_fails = vec![RealiseFails::Refused];
    let r = run(&mut host.agent());
    assert!(
        matches!(&r, Pass::Error(why) if why.starts_with("error: cannot realise")),
        "{r:?}"
    );
    assert!(!host
        .effects()
        .iter()
        .any(|e| e.starts_with("start") || e.starts_with("profile")));
    let state = host.state();
    assert_eq!(state.in_flight, None);
    assert_eq!(
        state.anchor.map(|a| a.serial),
        Some(1),
        "accepted: the anchor stays"
    );
    assert_eq!(
        host.statuses().last(),
        Some(&(
            StatusState::Error,
            wording::cannot_realise("nix-store: path is not valid")
        )),
        "the reason first, said once"
    );
}

#[test]
fn an_unhealthy_switch_is_rolled_back() {
    let host = Host::new();
    host.w().health = Health {
        failed_units: vec![
            "old.service".into(),
            "nginx.service".into(),
            "ferry-switch-1.service".into(),
        ],
        failed_commands: vec![],
    };
    let r = run(&mut host.agent());
    let a = system('a');
    let expected = format!("failed units: nginx.service; rolled back to {}", a.name());
    assert_eq!(r, Pass::Failed(expected.clone()));
    let changes = host.changes();
    assert_eq!(
        changes[changes.len() - 2..],
        [
            format!("profile {}", a.name()),
            format!("start rollback 1 {} switch", a.name())
        ]
    );
    assert_eq!(host.w().running, Some(a.clone()));
    assert_eq!(host.w().profile, Some(a));
    assert_eq!(host.statuses().last(), Some(&(StatusState::Failure, expected)));
    assert_eq!(host.state().last_success, None);
}
