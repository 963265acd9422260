//! Faults: a transient fault reported once it persists, forgotten once it
//! clears; the wait for a closure across restarts; the preflight asking Nix
//! about paths on disk. Time moves by the fake clock, never by rewriting
//! `state.json`.

use super::*;

/// Credentials a cache refuses are for a person to fix: the `error`
/// status, naming the cache, is posted at the first refusal, not after
/// `report.error_after`; the retries go on.
#[test]
fn refused_cache_credentials_are_reported_at_once_naming_the_cache() {
    let host = Host::new();
    host.w().cached = Cached::Denied;
    let mut agent = host.agent();
    transient(&mut agent);
    let since = host.state().fault.expect("remembered").since;
    let error = wording::fault_description(
        "error: binary cache cache.example.com refused this host's credentials (HTTP 401)",
        since,
    );
    let deploying = wording::deploying(&web1(), 1);
    assert_eq!(
        posted(&host),
        [
            (commit(R1), StatusState::Pending, deploying.clone()),
            (commit(SOURCE), StatusState::Pending, deploying),
            (commit(R1), StatusState::Error, error.clone()),
            (commit(SOURCE), StatusState::Error, error),
        ]
    );
    transient(&mut agent);
    assert_eq!(posted(&host).len(), 4, "said once");
    host.w().cached = Cached::Yes;
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
}

/// A cache unreachable for longer than `report.error_after` turns the
/// release's status to one `error` (across polls and a restart), and back
/// to the normal statuses once the cache answers again.
#[test]
fn a_persisting_transient_fault_posts_one_error_status_then_normal_ones() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let deploying = wording::deploying(&web1(), 1);
    let mut expected = vec![
        (commit(R1), StatusState::Pending, deploying.clone()),
        (commit(SOURCE), StatusState::Pending, deploying.clone()),
    ];
    let mut agent = host.agent();
    transient(&mut agent);
    assert_eq!(posted(&host), expected, "a fresh fault is only retried");
    let since = host.state().fault.expect("the first failure is remembered").since;
    transient(&mut agent);
    assert_eq!(host.state().fault.unwrap().since, since, "the first one counts");
    assert_eq!(posted(&host), expected);
    // 15 minutes (the default `report.error_after`) later, still failing.
    host.w().now = since + chrono::Duration::minutes(15);
    transient(&mut agent);
    let error = wording::fault_description("error: binary cache unreachable: cache.example.com", since);
    expected.extend([
        (commit(R1), StatusState::Error, error.clone()),
        (commit(SOURCE), StatusState::Error, error.clone()),
    ]);
    assert_eq!(posted(&host), expected);
    for _ in 0..3 {
        transient(&mut agent);
    }
    transient(&mut host.agent());
    assert_eq!(posted(&host), expected, "one error status, not one per poll");
    // The cache is back: "deploying" again, then the ending.
    host.w().cached = Cached::Yes;
    let mut agent = host.agent();
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let success = wording::runs_release(&web1(), 1);
    expected.extend([
        (commit(R1), StatusState::Pending, deploying.clone()),
        (commit(SOURCE), StatusState::Pending, deploying),
        (commit(R1), StatusState::Success, success.clone()),
        (commit(SOURCE), StatusState::Success, success),
    ]);
    assert_eq!(posted(&host), expected);
    assert_eq!(host.state().fault, None, "forgotten once it cleared");
}

/// A fault that clears before `report.error_after` is forgotten: the next
/// one starts its own clock.
#[test]
fn a_fault_that_clears_early_is_never_reported_and_forgotten() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let mut agent = host.agent();
    transient(&mut agent);
    host.w().now += chrono::Duration::minutes(10);
    host.w().cached = Cached::Missing;
    assert!(matches!(run(&mut agent), Pass::WaitingForClosure { .. }));
    assert_eq!(host.state().fault, None);
    host.w().cached = Cached::Unavailable;
    transient(&mut agent);
    let since = host.state().fault.unwrap().since;
    assert_eq!(since, host.w().now, "a new clock");
    assert!(
        posted(&host).iter().all(|(_, s, _)| *s == StatusState::Pending),
        "{:?}",
        posted(&host)
    );
}

/// The first sighting of a missing closure is saved: a restarted agent
/// neither says "deploying" and "waiting" again nor waits another hour.
#[test]
fn the_wait_for_a_closure_survives_restarts() {
    let host = Host::new();
    // The signer's clock is a day ahead: only the host's first sighting
    // bounds the wait.
    let ahead = t0() + chrono::Duration::days(1);
    host.w().releases.insert(
        commit(R1),
        Verifies::As(verified(R1, 1, Some((system('b'), Action::Switch)), ahead)),
    );
    host.w().cached = Cached::Missing;
    let Pass::WaitingForClosure { until, .. } = run(&mut host.agent()) else {
        panic!("waiting expected")
    };
    let said = posted(&host);
    assert_eq!(said.len(), 4, "deploying and waiting, on two commits: {said:?}");
    for _ in 0..3 {
        let r = run(&mut host.agent());
        assert_eq!(r, Pass::WaitingForClosure { serial: 1, until });
    }
    assert_eq!(posted(&host), said, "nothing said again after restarts");
    // An hour after the first sighting, a restarted agent gives up.
    host.w().now += chrono::Duration::minutes(61);
    let r = run(&mut host.agent());
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("in none of the binary caches")),
        "{r:?}"
    );
    assert_eq!(host.state().closure_missing, None);
    let last = posted(&host).pop().unwrap();
    assert_eq!(last.1, StatusState::Failure);
}

/// A path that exists in the store directory but that Nix holds invalid is
/// not taken as present: Nix is asked about every path found on disk, and
/// the preflight checks the invalid one in the cache like a missing one.
#[test]
fn the_preflight_asks_nix_which_paths_on_disk_are_valid() {
    let host = Host::new();
    host.w().on_disk = vec![system('c'), system('d')];
    host.w().invalid = vec![system('d')];
    let r = run(&mut host.agent());
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    let asked: Vec<_> = host
        .effects()
        .into_iter()
        .filter(|e| e.starts_with("preflight") || e.starts_with("valid?"))
        .collect();
    let (c, d) = (system('c').name().to_owned(), system('d').name().to_owned());
    assert_eq!(
        asked,
        [
            "preflight except []".to_string(),
            format!("valid? [{c} {d}]"),
            format!("preflight except [{d}]"),
            format!("valid? [{c}]"),
        ]
    );
}

/// A release expired by a clock years ahead is refused as stale with the
/// clock's time in the status, judged again at every poll without a new
/// status, and deployed once the clock is set right — no new release needed.
#[test]
fn a_release_expired_by_a_wrong_clock_deploys_once_the_clock_is_right() {
    let host = Host::new();
    if let Some(Verifies::As(v)) = host.w().releases.get_mut(&commit(R1)) {
        v.release.expires = Some(t0() + chrono::Duration::days(30));
    }
    host.w().now = t0() + chrono::Duration::days(5 * 365);
    let r = run(&mut host.agent());
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("expired")),
        "{r:?}"
    );
    assert_eq!(
        posted(&host),
        [(
            commit(R1),
            StatusState::Failure,
            "stale: release 1 expired 2027-02-05 12:00 UTC (this host's clock: 2032-01-05 12:00 UTC)".into()
        )]
    );
    assert_eq!(host.state().last_seen_tip, None, "judged again at the next poll");
    let r = run(&mut host.agent());
    assert!(matches!(r, Pass::Refused(_)), "{r:?}");
    assert_eq!(posted(&host).len(), 1, "said once");
    // NTP sets the clock right: the same release deploys.
    host.w().now = t0() + chrono::Duration::hours(1);
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(host.state().last_seen_tip, Some(commit(R1)));
}

/// A release that expires while the host runs it, the branch (or mirror)
/// frozen at it since: judged again once past its expiry and said to be
/// stale, once, nothing switched; a new agent (a restart) learns the
/// expiry by verifying the unchanged tip once, and only once.
#[test]
fn a_tip_frozen_past_its_expiry_is_said_stale_without_touching_the_host() {
    let host = Host::new();
    if let Some(Verifies::As(v)) = host.w().releases.get_mut(&commit(R1)) {
        v.release.expires = Some(t0() + chrono::Duration::days(1));
    }
    let mut agent = host.agent();
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let verifications = |host: &Host| host.w().verifications;
    let changes = host.changes();
    // Unchanged and not expired: up to date, not verified again, also by
    // a new agent after its first poll.
    assert_eq!(run(&mut agent), Pass::UpToDate);
    assert_eq!(verifications(&host), 1);
    let mut restarted = host.agent();
    assert_eq!(run(&mut restarted), Pass::UpToDate);
    assert_eq!(run(&mut restarted), Pass::UpToDate);
    assert_eq!(verifications(&host), 2, "once per start");

    host.w().now = t0() + chrono::Duration::days(2);
    let r = run(&mut restarted);
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("expired")),
        "{r:?}"
    );
    let (_, state, said) = posted(&host).pop().unwrap();
    assert_eq!(state, StatusState::Failure);
    assert!(said.starts_with("stale: release 1 expired "), "{said}");
    let count = posted(&host).len();
    assert!(matches!(run(&mut restarted), Pass::Refused(_)));
    assert_eq!(posted(&host).len(), count, "said once");
    assert_eq!(host.changes(), changes, "nothing switched or rolled back");
}

/// A fault first seen while the clock was years ahead, then the clock set
/// right: timed from the correction, neither reported at once nor never.
#[test]
fn a_clock_moved_back_times_a_fault_from_the_correction() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    host.w().now = t0() + chrono::Duration::days(5 * 365);
    let mut agent = host.agent();
    transient(&mut agent);
    host.w().now = t0();
    transient(&mut agent);
    assert_eq!(
        host.state().fault.unwrap().since,
        t0(),
        "started again at the correction"
    );
    host.w().now = t0() + chrono::Duration::minutes(15);
    transient(&mut agent);
    assert_eq!(
        posted(&host).last().unwrap().1,
        StatusState::Error,
        "reported 15 minutes later"
    );
}

/// A release made long before this host first finds its closure missing
/// (the host was away, or its clock is years ahead): waited for an hour from
/// that first sighting, then refused — never refused before waiting at all.
#[test]
fn a_closure_found_missing_long_after_its_release_is_waited_for_an_hour() {
    let host = Host::new();
    let old = verified(
        R1,
        1,
        Some((system('b'), Action::Switch)),
        t0() - chrono::Duration::hours(2),
    );
    host.w().releases.insert(commit(R1), Verifies::As(old));
    host.w().cached = Cached::Missing;
    assert_eq!(
        run(&mut host.agent()),
        Pass::WaitingForClosure {
            serial: 1,
            until: t0() + chrono::Duration::hours(1)
        }
    );
    host.w().now += chrono::Duration::minutes(61);
    let r = run(&mut host.agent());
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("in none of the binary caches")),
        "{r:?}"
    );
}
