//! Receipts on (`report.receipts`): every status of the release becomes a
//! receipt, and the forge gets what `report.statuses` lets through —
//! failures (the default), all, or none.

use super::*;

const RECEIPTS: &str = "[report]\nreceipts = \"s3://fleet/receipts?endpoint=http://127.0.0.1:9\"\n";

fn receipts(host: &Host) -> Vec<(StatusState, String)> {
    let w = host.world.borrow();
    for (release, source, _, _) in &w.receipts {
        assert_eq!((release, source.as_ref()), (&commit(R1), Some(&commit(SOURCE))));
    }
    w.receipts.iter().map(|(_, _, s, d)| (*s, d.clone())).collect()
}

#[test]
fn a_deploy_that_succeeds_says_so_in_receipts_alone() {
    let host = Host::new();
    let r = run(&mut host.agent_with(RECEIPTS));
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(
        receipts(&host),
        [
            (StatusState::Pending, wording::deploying(&web1(), 1)),
            (StatusState::Success, wording::runs_release(&web1(), 1)),
        ]
    );
    assert_eq!(host.statuses(), []);
    assert!(host.state().red_on_forge.is_empty());
}

#[test]
fn a_failure_reaches_the_forge_too() {
    let host = Host::new();
    host.w().health = Health {
        failed_units: vec!["nginx.service".into()],
        failed_commands: vec![],
    };
    let r = run(&mut host.agent_with(RECEIPTS));
    let Pass::Failed(expected) = r else {
        panic!("{r:?}")
    };
    // On the release and its source commit, as without receipts.
    assert_eq!(
        host.statuses(),
        [
            (StatusState::Failure, expected.clone()),
            (StatusState::Failure, expected.clone())
        ]
    );
    assert_eq!(
        receipts(&host),
        [
            (StatusState::Pending, wording::deploying(&web1(), 1)),
            (StatusState::Failure, expected),
        ]
    );
    // The release ended: nothing more is posted for it, nothing remembered.
    assert!(host.state().red_on_forge.is_empty());
}

#[test]
fn all_posts_what_hosts_without_receipts_post_and_none_nothing() {
    let host = Host::new();
    run(&mut host.agent_with(&format!("{RECEIPTS}statuses = \"all\"\n")));
    assert_eq!(host.statuses().len(), 4);
    assert_eq!(receipts(&host).len(), 2);

    let quiet = Host::new();
    quiet.w().health = Health {
        failed_units: vec!["nginx.service".into()],
        failed_commands: vec![],
    };
    run(&mut quiet.agent_with(&format!("{RECEIPTS}statuses = \"none\"\n")));
    assert_eq!(quiet.statuses(), []);
    assert_eq!(receipts(&quiet)[1].0, StatusState::Failure);
}

/// With `failures`, a persisting fault posts its error; once the host gets
/// through, what follows on the same commits is posted too (deploying,
/// then the success), so the forge does not show it red for ever.
#[test]
fn a_host_that_recovers_does_not_stay_red() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let mut agent = host.agent_with(RECEIPTS);
    transient(&mut agent);
    assert_eq!(posted(&host), [], "a pending status stays in the receipt");
    let since = host.state().fault.expect("remembered").since;
    host.w().now = since + chrono::Duration::minutes(15);
    transient(&mut agent);
    let error = wording::fault_description("error: binary cache unreachable: cache.example.com", since);
    assert_eq!(
        posted(&host),
        [
            (commit(R1), StatusState::Error, error.clone()),
            (commit(SOURCE), StatusState::Error, error.clone()),
        ]
    );
    assert_eq!(host.state().red_on_forge, [commit(R1), commit(SOURCE)]);
    host.w().cached = Cached::Yes;
    run(&mut host.agent_with(RECEIPTS));
    let deploying = wording::deploying(&web1(), 1);
    let success = wording::runs_release(&web1(), 1);
    assert_eq!(
        posted(&host)[2..],
        [
            (commit(R1), StatusState::Pending, deploying.clone()),
            (commit(SOURCE), StatusState::Pending, deploying.clone()),
            (commit(R1), StatusState::Success, success.clone()),
            (commit(SOURCE), StatusState::Success, success.clone()),
        ]
    );
    assert_eq!(
        receipts(&host),
        [
            (StatusState::Pending, deploying.clone()),
            (StatusState::Error, error),
            (StatusState::Pending, deploying),
            (StatusState::Success, success),
        ]
    );
    assert!(
        host.state().red_on_forge.is_empty(),
        "forgotten with the release's ending"
    );
}

/// A wave's release that does not name this host: refused as always, but
/// with receipts it writes no receipt and posts nothing (every host not in
/// the wave would post a failure); with `all`, the status as always.
#[test]
fn a_release_without_this_host_is_not_its_to_report() {
    let host = Host::with_release(None);
    let r = run(&mut host.agent_with(RECEIPTS));
    assert!(matches!(r, Pass::Refused(_)), "{r:?}");
    assert_eq!(host.statuses(), []);
    assert_eq!(host.w().receipts.len(), 0);
    assert_eq!(
        host.state().last_outcome.map(|o| o.result),
        Some(OutcomeKind::Refused)
    );

    let all = Host::with_release(None);
    run(&mut all.agent_with(&format!("{RECEIPTS}statuses = \"all\"\n")));
    assert_eq!(all.statuses().len(), 2, "on the release and its source");
    assert_eq!(all.w().receipts.len(), 0);
}
