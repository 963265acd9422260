//! Stops and faults of the host in the middle of a deploy: Nix or a health
//! check stopped by the agent's own stop, the store's file system full, the
//! binary cache failing mid-transfer. None is the release's fault: the phase
//! is kept, the reconcile fails as a transient fault, and the next one takes
//! the step again, so the release switches once and ends once.

use super::*;
use crate::io::systemd::health::CheckFailure;

/// The one deploy of release 1 ended once: deploying, then success, on the
/// release and its source, one switch and no rollback.
fn deployed_once(host: &Host) {
    let deploying = wording::deploying(&web1(), 1);
    let success = wording::runs_release(&web1(), 1);
    assert_eq!(
        posted(host),
        [
            (commit(R1), StatusState::Pending, deploying.clone()),
            (commit(SOURCE), StatusState::Pending, deploying),
            (commit(R1), StatusState::Success, success.clone()),
            (commit(SOURCE), StatusState::Success, success),
        ]
    );
    let starts: Vec<String> = host
        .effects()
        .into_iter()
        .filter(|e| e.starts_with("start"))
        .collect();
    assert_eq!(starts.len(), 1, "one switch, no rollback: {starts:?}");
    assert!(starts[0].starts_with("start switch 1 "), "{starts:?}");
    assert_eq!(host.w().running, Some(system('b')));
}

#[test]
fn nix_stopped_mid_realise_is_resumed_not_an_error() {
    let host = Host::new();
    host.w().realise_fails = vec![RealiseFails::Stopped];
    let mut agent = host.agent();
    let e = transient(&mut agent);
    assert!(
        e.contains("nix-store was interrupted (killed by signal SIGTERM)"),
        "{e}"
    );
    let state = host.state();
    assert_eq!(
        state.in_flight.map(|f| f.phase),
        Some(Phase::Realising),
        "the phase is kept"
    );
    assert_eq!(state.last_outcome, None, "not an ending");
    // The agent starts again: the realise is taken again, and the release
    // deploys once.
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(count(&host, &format!("realise {}", system('b').name())), 2);
    deployed_once(&host);
}

#[test]
fn a_health_check_stopped_runs_again_and_is_not_rolled_back() {
    let host = Host::new();
    host.w().health_interrupted = Some(Health {
        failed_units: vec![],
        failed_commands: vec![("curl -f localhost".into(), CheckFailure::Killed(15))],
    });
    let e = transient(&mut host.agent());
    assert_eq!(
        e,
        "the health check `curl -f localhost` was interrupted (killed by SIGTERM); it runs again at the next reconcile"
    );
    assert!(matches!(
        host.state().in_flight.map(|f| f.phase),
        Some(Phase::Checking { .. })
    ));
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(count(&host, "health"), 2);
    deployed_once(&host);
}

/// A check that crashed (not stopped) is the release's: rolled back.
#[test]
fn a_health_check_that_crashes_fails_the_release() {
    let host = Host::new();
    host.w().health = Health {
        failed_units: vec![],
        failed_commands: vec![("curl -f localhost".into(), CheckFailure::Killed(11))],
    };
    let r = run(&mut host.agent());
    let expected = format!(
        "check `curl -f localhost` was killed by SIGSEGV; rolled back to {}",
        system('a').name()
    );
    assert_eq!(r, Pass::Failed(expected));
    assert_eq!(host.w().running, Some(system('a')));
}

/// `/nix` full while realising: nothing switches, the release keeps its
/// phase, the status says so once the fault persists, and the first
/// reconcile after space is freed deploys.
#[test]
fn a_full_store_is_said_and_the_release_deploys_once_space_is_freed() {
    let host = Host::new();
    host.w().realise_fails = vec![RealiseFails::StoreFull, RealiseFails::StoreFull];
    let mut agent = host.agent();
    let e = transient(&mut agent);
    assert!(e.contains("No space left on device"), "{e}");
    let since = host.state().fault.expect("remembered").since;
    host.w().now = since + chrono::Duration::minutes(15);
    transient(&mut agent);
    let full = wording::fault_description(crate::io::cache::client::STORE_FULL, since);
    assert!(
        full.chars().count() <= crate::io::forge::MAX_DESCRIPTION_CHARS,
        "{full}"
    );
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(StatusState::Error, full)),
        "the status says the store is full"
    );
    assert!(!host.effects().iter().any(|e| e.starts_with("start")));
    assert!(!host.effects().iter().any(|e| e.starts_with("profile")));
    // Space freed: the next reconcile deploys.
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(host.w().running, Some(system('b')));
    assert_eq!(host.state().fault, None);
    // Once the store has room, "deploying" again, then the ending.
    let statuses: Vec<StatusState> = release_statuses(&host).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        statuses,
        [
            StatusState::Pending,
            StatusState::Error,
            StatusState::Pending,
            StatusState::Success
        ]
    );
}

/// A cache that fails mid-transfer (the relay says which and how) is a
/// cache fault like any other: retried, and deployed once it recovers.
#[test]
fn a_cache_failing_mid_realise_is_retried_and_named() {
    let host = Host::new();
    host.w().realise_fails = vec![RealiseFails::CacheStalled];
    let mut agent = host.agent();
    let e = transient(&mut agent);
    assert!(e.contains("http://cache.example.com stalled"), "{e}");
    assert_eq!(host.state().in_flight.map(|f| f.phase), Some(Phase::Realising));
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    deployed_once(&host);
}

/// What Nix refuses (a signature, a hash) still ends the deploy at once.
#[test]
fn a_refusal_by_nix_still_ends_the_deploy() {
    let host = Host::new();
    host.w().realise_fails = vec![RealiseFails::Refused];
    assert!(matches!(run(&mut host.agent()), Pass::Error(_)));
    assert_eq!(host.state().in_flight, None);
}

/// A closure that cannot be realised yet never holds back the release that
/// replaces it: once a newer release is on the branch, the deploy in
/// flight ends (`error`, saying why) and the newer one deploys.
#[test]
fn a_newer_release_replaces_one_that_cannot_be_realised_yet() {
    let host = Host::new();
    host.w().realise_fails = vec![RealiseFails::CacheStalled, RealiseFails::CacheStalled];
    let mut agent = host.agent();
    transient(&mut agent);
    {
        let mut w = host.w();
        w.tip = commit(R2);
        w.releases.insert(
            commit(R2),
            Verifies::As(verified(R2, 2, Some((system('c'), Action::Switch)), t0())),
        );
    }
    let r = run(&mut agent);
    let reason = "http://cache.example.com stalled (nix-store: path is not valid)";
    assert_eq!(
        r,
        Pass::Error(wording::cannot_realise_superseded(reason)),
        "{r:?}"
    );
    assert_eq!(host.state().in_flight, None);
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(host.w().running, Some(system('c')));
}

/// Not enough room in the store for the closure, found by the preflight:
/// retried (nothing is accepted), said once it persists, and deployed at
/// the first poll after space is freed (it used to be refused for good).
#[test]
fn a_store_too_full_for_the_closure_is_retried_until_space_is_freed() {
    let host = Host::new();
    host.w().cached = Cached::DiskFull;
    let mut agent = host.agent();
    transient(&mut agent);
    let since = host.state().fault.expect("remembered").since;
    host.w().now = since + chrono::Duration::minutes(15);
    transient(&mut agent);
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(
            StatusState::Error,
            wording::fault_description(crate::io::cache::client::STORE_FULL, since)
        ))
    );
    host.w().cached = Cached::Yes;
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
}
