//! Reboots in a maintenance window and deploy windows: the moment, the
//! window, running units, a newer release, what booted; a release held
//! outside the deploy window. Time moves by the fake clock.

use super::*;

const REBOOT_WINDOW: &str = "Sat 02:00-04:00";

fn wednesday() -> DateTime<Utc> {
    "2027-01-06T11:00:00Z".parse().unwrap()
}

/// A host whose release needs a reboot (a new kernel), with the reboot
/// policy `in-window`, on a Wednesday before the window.
fn kernel_host() -> Host {
    let host = Host::new();
    {
        let mut w = host.w();
        w.kernel_changed = true;
        w.now = wednesday();
    }
    *host.config.borrow_mut() = format!("[reboot]\npolicy = \"in-window\"\nwindow = [\"{REBOOT_WINDOW}\"]\n");
    host
}

/// When web1 reboots in the window, asked at `now`.
fn moment(now: DateTime<Utc>) -> DateTime<Utc> {
    let windows = window::Windows::parse(&[REBOOT_WINDOW]).unwrap();
    windows
        .reboot_moment(&"web1".parse().unwrap(), now, &HostZone::Fixed(ZONE))
        .unwrap()
}

#[test]
fn a_release_needing_a_reboot_reboots_in_the_window_and_confirms_what_booted() {
    let host = kernel_host();
    let at = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    let flight = host.state().in_flight.expect("still in flight");
    assert_eq!(flight.phase, Phase::AwaitingReboot { at });
    // Polls before the moment change nothing and say nothing new.
    host.w().now = at - chrono::Duration::seconds(1);
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    assert_eq!(count(&host, "reboot"), 0);
    // At the moment: announced, then requested, once.
    host.w().now = at;
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert_eq!(count(&host, "reboot"), 1);
    // The next boot confirms it.
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let when = window::wall_clock_text(at, &HostZone::Fixed(ZONE));
    assert_eq!(
        release_statuses(&host),
        [
            (StatusState::Pending, wording::deploying(&web1(), 1)),
            (
                StatusState::Pending,
                format!("release 1 installed; reboot at {when} (maintenance window)")
            ),
            (StatusState::Pending, wording::rebooting_into(1)),
            (StatusState::Success, wording::runs_release_rebooted(&web1(), 1)),
        ]
    );
    let state = host.state();
    assert_eq!(state.in_flight, None);
    assert_eq!(state.last_success.map(|o| o.result), Some(OutcomeKind::Success));
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
    assert_eq!(count(&host, "reboot"), 1);
}

#[test]
fn booting_another_generation_is_a_failure_naming_it() {
    let host = kernel_host();
    run(&mut host.agent());
    host.w().now = moment(wednesday());
    // The reboot is requested, but the boot loader falls back to the old system.
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    {
        let mut w = host.w();
        w.booted = Some(system('a'));
        w.running = Some(system('a'));
    }
    let r = run(&mut host.agent());
    let Pass::Failed(why) = r else { panic!("{r:?}") };
    assert!(
        why.ends_with(&format!(
            "release 1 did not boot (boot loader fallback, or another generation chosen): booted {}",
            system('a')
        )),
        "{why}"
    );
    let last = release_statuses(&host).pop().unwrap();
    assert_eq!(last.0, StatusState::Failure);
    assert!(last.1.contains("boot loader fallback"), "{}", last.1);
    let outcome = host.state().last_outcome.unwrap();
    assert_eq!(outcome.result, OutcomeKind::Failed);
    assert_eq!(outcome.description, why);
}

#[test]
fn the_default_policy_never_reboots() {
    let host = kernel_host();
    *host.config.borrow_mut() = String::new();
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: true
        }
    );
    host.w().now = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
    assert_eq!(count(&host, "reboot"), 0);
}

#[test]
fn a_boot_release_reboots_too() {
    let host = kernel_host();
    host.w().releases = BTreeMap::from([(
        commit(R1),
        Verifies::As(verified(R1, 1, Some((system('b'), Action::Boot)), t0())),
    )]);
    let at = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    host.w().now = at;
    run(&mut host.agent());
    run(&mut host.agent());
    assert_eq!(host.w().running, Some(system('b')));
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(StatusState::Success, wording::runs_release_rebooted(&web1(), 1)))
    );
}

#[test]
fn no_reboot_while_a_switch_unit_runs() {
    let host = kernel_host();
    run(&mut host.agent());
    let at = moment(wednesday());
    host.w().now = at;
    host.w().activations = vec!["ferry-switch-7.service".into()];
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    assert_eq!(count(&host, "reboot"), 0);
    host.w().activations.clear();
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert_eq!(count(&host, "reboot"), 1);
}

#[test]
fn a_moment_missed_outside_the_window_moves_to_the_next_window() {
    let host = kernel_host();
    run(&mut host.agent());
    // The host was off over the weekend: Monday, the window has closed.
    let monday: DateTime<Utc> = "2027-01-11T12:00:00Z".parse().unwrap();
    host.w().now = monday;
    let next = moment(monday);
    assert!(next > monday + chrono::Duration::days(3), "{next}");
    assert_eq!(
        run(&mut host.agent()),
        Pass::RebootScheduled { serial: 1, at: next }
    );
    assert_eq!(count(&host, "reboot"), 0);
    let when = window::wall_clock_text(next, &HostZone::Fixed(ZONE));
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(
            StatusState::Pending,
            format!("release 1 installed; reboot at {when} (maintenance window)")
        ))
    );
}

#[test]
fn a_newer_release_before_the_reboot_ends_the_wait_and_is_deployed() {
    let host = kernel_host();
    run(&mut host.agent());
    {
        let mut w = host.w();
        w.tip = commit(R2);
        w.releases.insert(
            commit(R2),
            Verifies::As(verified(R2, 2, Some((system('c'), Action::Switch)), t0())),
        );
    }
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: true
        }
    );
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(
            StatusState::Success,
            wording::runs_release_reboot_required(&web1(), 1)
        ))
    );
    // The next poll takes release 2, which waits for the window in its turn.
    let at = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 2, at });
    assert_eq!(count(&host, "reboot"), 0);
}

/// Whichever durable write the agent is killed right before, from the
/// release's arrival to the confirmation after the reboot: exactly one
/// reboot, and exactly one final status on each commit.
#[test]
fn a_kill_before_any_durable_write_around_the_reboot_reboots_once() {
    let drive = |host: &Host| -> usize {
        for _ in 0..12 {
            let r = run(&mut host.agent());
            match r {
                Pass::RebootScheduled { at, .. } => host.w().now = at,
                Pass::UpToDate => return count(host, "reboot"),
                _ => {}
            }
        }
        panic!("not done: {:?}", host.effects())
    };
    let host = kernel_host();
    durable::faults::kill_before_write(usize::MAX);
    assert_eq!(drive(&host), 1);
    let writes = durable::faults::writes();
    let expected = finals(&host);
    assert_eq!(expected.len(), 2, "{expected:?}");
    for n in 1..=writes {
        let what = format!("killed before durable write {n} of {writes}");
        let host = kernel_host();
        durable::faults::kill_before_write(n);
        let mut was_killed = false;
        for _ in 0..12 {
            if killed_before_write(&mut host.agent()) {
                was_killed = true;
                break;
            }
            if let Some(f) = host.state().in_flight {
                if let Phase::AwaitingReboot { at } = f.phase {
                    host.w().now = at;
                }
            }
        }
        assert!(was_killed, "{what}: not killed");
        durable::faults::kill_before_write(usize::MAX);
        assert_eq!(drive(&host), 1, "{what}: {:?}", host.effects());
        assert_eq!(finals(&host), expected, "{what}");
    }
}

/// Killed at the reboot request itself (before it took effect), and right
/// after it (the host went down before the agent returned): one reboot.
#[test]
fn a_kill_at_the_reboot_request_reboots_once() {
    let host = kernel_host();
    run(&mut host.agent());
    host.w().now = moment(wednesday());
    host.w().crash_at = Some("reboot");
    assert!(killed(&mut host.agent()));
    assert_eq!(count(&host, "reboot"), 0);
    assert_eq!(host.state().in_flight.map(|f| f.phase.name()), Some("rebooting"));
    // The next start, in the same boot, requests it; the one after confirms.
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert!(matches!(run(&mut host.agent()), Pass::Deployed { .. }));
    assert_eq!(count(&host, "reboot"), 1);
    let success = wording::runs_release_rebooted(&web1(), 1);
    assert_eq!(
        release_statuses(&host)
            .iter()
            .filter(|(s, _)| *s != StatusState::Pending)
            .collect::<Vec<_>>(),
        [&(StatusState::Success, success)]
    );
}

#[test]
fn outside_the_deploy_window_a_release_waits_with_one_pending_status() {
    let host = Host::new();
    // Only Wednesdays 09:00-10:00 (the host's time); it is Wednesday 12:00 UTC.
    *host.config.borrow_mut() = "[switch]\nwindow = [\"Wed 09:00-10:00\"]\n".into();
    let now: DateTime<Utc> = "2027-01-06T12:00:00Z".parse().unwrap();
    let windows = window::Windows::parse(&["Wed 09:00-10:00"]).unwrap();
    let now = if windows.contains(now, &HostZone::Fixed(ZONE)) {
        now + chrono::Duration::hours(4)
    } else {
        now
    };
    host.w().now = now;
    let until = windows
        .current_or_next(now, &HostZone::Fixed(ZONE))
        .unwrap()
        .start;
    for _ in 0..3 {
        assert_eq!(
            run(&mut host.agent()),
            Pass::WaitingForWindow { serial: 1, until }
        );
    }
    assert_eq!(host.changes(), Vec::<String>::new());
    let when = window::wall_clock_text(until, &HostZone::Fixed(ZONE));
    assert_eq!(
        release_statuses(&host),
        [(
            StatusState::Pending,
            format!("release 1 waits for the deploy window (opens {when})")
        )]
    );
    // The window opens: deployed.
    host.w().now = until;
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(StatusState::Success, wording::runs_release(&web1(), 1)))
    );
}

#[test]
fn boot_releases_and_refusals_are_not_held_back_by_the_deploy_window() {
    let closed = "[switch]\nwindow = [\"Wed 09:00-10:00\"]\n";
    let now: DateTime<Utc> = "2027-01-09T12:00:00Z".parse().unwrap();
    let host = Host::with_release(Some((system('b'), Action::Boot)));
    *host.config.borrow_mut() = closed.into();
    host.w().now = now;
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: true
        }
    );
    let host = Host::new();
    *host.config.borrow_mut() = closed.into();
    host.w().now = now;
    host.w().releases.insert(commit(R1), Verifies::Unsigned);
    assert!(matches!(run(&mut host.agent()), Pass::Refused(_)));
}

/// A tip that does not verify (anyone who can push to the branch can make
/// one) does not end the wait: the reboot happens, and the tip is refused
/// afterwards as any other.
#[test]
fn an_unsigned_tip_does_not_cancel_the_reboot() {
    let host = kernel_host();
    run(&mut host.agent());
    {
        let mut w = host.w();
        w.tip = commit(R2);
        w.releases.insert(commit(R2), Verifies::Unsigned);
        w.now = moment(wednesday());
    }
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert!(matches!(run(&mut host.agent()), Pass::Deployed { .. }));
    assert_eq!(count(&host, "reboot"), 1);
    assert!(matches!(run(&mut host.agent()), Pass::Refused(_)));
}
