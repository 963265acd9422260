//! Crashes: an agent killed at every effect and before every durable write
//! resumes where it was, starts no second unit, and loses or doubles no
//! final status; a full disk loses nothing; the deploy counters count each
//! ending once.

use super::*;

#[test]
fn resume_never_starts_a_second_unit_for_the_same_release() {
    // The unit as a restarted agent finds it, and whether it is started.
    let cases = [
        (Some(Unit::Running(SwitchResult::Ok)), Some(system('a')), 0),
        (Some(Unit::Finished(SwitchResult::Ok)), Some(system('b')), 0),
        // Gone without a trace, but its system runs: it finished.
        (None, Some(system('b')), 0),
        // Never started: started now, once.
        (None, Some(system('a')), 1),
    ];
    for (unit, running, starts) in cases {
        let host = Host::new();
        let mut state = State {
            anchor: Some(Anchor {
                commit: commit(R1),
                serial: 1,
            }),
            in_flight: Some(InFlight {
                tip: commit(R1),
                target: Target {
                    commit: commit(R1),
                    serial: 1,
                    toplevel: system('b'),
                },
                source: None,
                action: Action::Switch,
                phase: Phase::Switching,
                previous: Some(system('a')),
                failed_before: vec![],
                started: t0(),
            }),
            ..State::default()
        };
        StateDir::open(&host.dir.path().join("state"))
            .unwrap()
            .save(&state)
            .unwrap();
        {
            let mut w = host.w();
            w.running = running;
            if let Some(unit) = unit {
                w.units.insert((1, false), unit);
            }
        }
        let r = run(&mut host.agent());
        assert_eq!(
            r,
            Pass::Deployed {
                reboot_required: false
            },
            "{unit:?}"
        );
        let started = host
            .effects()
            .iter()
            .filter(|e| e.starts_with("start switch"))
            .count();
        assert_eq!(started, starts, "{unit:?}: {:?}", host.effects());
        assert!(
            !host
                .effects()
                .iter()
                .any(|e| e.starts_with("realise") || e.starts_with("fetch")),
            "resumed where it was: {:?}",
            host.effects()
        );
        state = host.state();
        assert_eq!(state.in_flight, None);
        assert_eq!(state.last_seen_tip, Some(commit(R1)));
    }
}

/// Kills the agent at `crash_at`, starts a new one, and returns how the
/// deploy ended and the effects of both.
fn killed_then_resumed(host: &Host, crash_at: &'static str) -> (Pass, Vec<String>) {
    host.w().crash_at = Some(crash_at);
    assert!(killed(&mut host.agent()), "killed at {crash_at}");
    assert!(
        host.effects().contains(&format!("killed at {crash_at}")),
        "{crash_at}: {:?}",
        host.effects()
    );
    let r = run(&mut host.agent());
    (r, host.effects())
}

#[test]
fn a_crash_at_each_phase_boundary_resumes_correctly() {
    for crash_at in [
        "failed-units",
        "realise",
        "profile",
        "start switch",
        "observe switch",
        "wait switch",
        "health",
    ] {
        let host = Host::new();
        let (r, effects) = killed_then_resumed(&host, crash_at);
        assert_eq!(
            r,
            Pass::Deployed {
                reboot_required: false
            },
            "{crash_at}: {effects:?}"
        );
        let starts = effects.iter().filter(|e| e.starts_with("start switch")).count();
        assert_eq!(starts, 1, "{crash_at}: one switch unit: {effects:?}");
        let state = host.state();
        assert_eq!(state.in_flight, None, "{crash_at}");
        assert_eq!(
            state.last_success.map(|o| o.toplevel),
            Some(Some(system('b'))),
            "{crash_at}"
        );
        let successes = host
            .statuses()
            .iter()
            .filter(|(s, _)| *s == StatusState::Success)
            .count();
        assert_eq!(successes, 2, "{crash_at}: reported once (two commits)");
    }
}

#[test]
fn a_crash_during_a_rollback_resumes_the_rollback() {
    // The deploy sets the profile once; the rollback sets it back second.
    for (crash_at, skip) in [
        ("profile", 1),
        ("start rollback", 0),
        ("observe rollback", 0),
        ("wait rollback", 0),
    ] {
        let host = Host::new();
        host.w().ends.insert((1, false), SwitchResult::Failed { code: 4 });
        host.w().crash_skip = skip;
        let (r, effects) = killed_then_resumed(&host, crash_at);
        let a = system('a');
        assert_eq!(
            r,
            Pass::Failed(format!(
                "switch-to-configuration failed (exit 4); rolled back to {}",
                a.name()
            )),
            "{crash_at}: {effects:?}"
        );
        let rollbacks = effects.iter().filter(|e| e.starts_with("start rollback")).count();
        assert_eq!(rollbacks, 1, "{crash_at}: {effects:?}");
        let switches = effects.iter().filter(|e| e.starts_with("start switch")).count();
        assert_eq!(switches, 1, "{crash_at}: {effects:?}");
        assert_eq!(host.w().profile, Some(a.clone()), "{crash_at}: profile back");
        assert_eq!(host.w().running, Some(a), "{crash_at}");
        assert_eq!(host.state().in_flight, None);
        assert_eq!(
            host.state().last_outcome.map(|o| o.result),
            Some(OutcomeKind::Failed)
        );
    }
}

/// How a test sets up the world for one ending.
type SetUp = fn(&mut World);

/// The endings a release can come to, each set up on a fresh host.
fn endings() -> [(&'static str, SetUp); 4] {
    [
        ("deployed", |_| {}),
        ("already running", |w| w.running = Some(system('b'))),
        ("refused", |w| {
            w.releases.insert(commit(R1), Verifies::Unsigned);
        }),
        ("rolled back", |w| {
            w.ends.insert((1, false), SwitchResult::Failed { code: 4 });
        }),
    ]
}

/// The statuses of an ending reached undisturbed, and how many durable
/// writes it took.
fn undisturbed(set: SetUp) -> (Vec<(CommitId, StatusState, String)>, usize) {
    let host = Host::new();
    set(&mut host.w());
    durable::faults::kill_before_write(usize::MAX);
    run(&mut host.agent());
    let writes = durable::faults::writes();
    (finals(&host), writes)
}

/// New agents on the host until one finds nothing to do.
fn until_up_to_date(host: &Host, what: &str) {
    for _ in 0..5 {
        if run(&mut host.agent()) == Pass::UpToDate {
            let state = host.state();
            assert_eq!(state.unsent, [], "{what}: everything queued");
            let outbox = Outbox::open(&host.dir.path().join("state")).unwrap();
            assert_eq!(outbox.len().unwrap(), 0, "{what}: everything delivered");
            return;
        }
    }
    panic!("{what}: still busy after five restarts: {:?}", host.effects());
}

/// Exactly one final status per commit reaches the forge, whichever durable
/// write the agent is killed right before: the ending and its statuses are
/// one write, and moving them to the outbox is idempotent.
#[test]
fn a_kill_before_any_durable_write_loses_no_final_status_and_doubles_none() {
    for (name, set) in endings() {
        let (expected, writes) = undisturbed(set);
        assert!(!expected.is_empty(), "{name}: reported");
        assert!(writes >= 2, "{name}: {writes} durable writes");
        for n in 1..=writes {
            let what = format!("{name}, killed before durable write {n} of {writes}");
            let host = Host::new();
            set(&mut host.w());
            durable::faults::kill_before_write(n);
            assert!(killed_before_write(&mut host.agent()), "{what}: not killed");
            durable::faults::kill_before_write(usize::MAX);
            until_up_to_date(&host, &what);
            assert_eq!(finals(&host), expected, "{what}");
        }
    }
}

/// A kill at a forge call: before the forge answered, the status is sent
/// again; after it answered but before the outbox entry was removed, it is
/// sent again too — the one place delivery is at least once. The repeat is
/// the same status (state, description, context) right after itself, so the
/// forge's verdict on the commit does not change.
#[test]
fn a_kill_at_any_forge_call_repeats_at_most_the_same_status() {
    for (name, set) in endings() {
        let (expected, _) = undisturbed(set);
        let posts = {
            let host = Host::new();
            set(&mut host.w());
            run(&mut host.agent());
            host.statuses().len()
        };
        for (crash_at, skip) in (0..posts).flat_map(|n| [("post", n), ("delivered", n)]) {
            let what = format!("{name}, killed at forge call {crash_at} {skip}");
            let host = Host::new();
            set(&mut host.w());
            host.w().crash_skip = skip;
            host.w().crash_at = Some(crash_at);
            assert!(killed(&mut host.agent()), "{what}: not killed");
            until_up_to_date(&host, &what);
            let mut got = finals(&host);
            if crash_at == "post" {
                assert_eq!(got, expected, "{what}");
            } else {
                got.dedup();
                assert_eq!(got, expected, "{what}: only an immediate repeat");
            }
        }
    }
}

/// With the outbox's filesystem full when an ending is recorded, its
/// statuses stay in state.json and reach the forge once there is room.
#[test]
fn a_status_that_cannot_be_queued_waits_in_the_state_until_there_is_room() {
    struct Room;
    impl Drop for Room {
        fn drop(&mut self) {
            durable::faults::disk_full(None);
        }
    }
    for (name, set) in endings() {
        let (expected, _) = undisturbed(set);
        let host = Host::new();
        set(&mut host.w());
        let room = Room;
        durable::faults::disk_full(Some("outbox"));
        let r = run(&mut host.agent());
        assert_ne!(r, Pass::UpToDate, "{name}");
        assert_eq!(finals(&host), [], "{name}: nothing could be queued");
        let unsent: Vec<_> = host
            .state()
            .unsent
            .into_iter()
            .filter(|u| u.status.state != StatusState::Pending)
            .map(|u| (u.status.commit, u.status.state, u.status.description))
            .collect();
        assert_eq!(unsent, expected, "{name}: kept in state.json");
        assert_eq!(run(&mut host.agent()), Pass::UpToDate, "{name}: recorded once");
        assert_eq!(finals(&host), [], "{name}: the disk is still full");
        drop(room);
        until_up_to_date(&host, name);
        assert_eq!(finals(&host), expected, "{name}");
    }
}

/// With state.json's filesystem full, an ending cannot be recorded: the
/// reconcile fails (retried by the daemon), and once there is room the same
/// ending is reached and reported once.
#[test]
fn an_ending_that_cannot_be_saved_is_reached_again() {
    let refused = endings()[2].1;
    let (expected, _) = undisturbed(refused);
    let host = Host::new();
    refused(&mut host.w());
    durable::faults::disk_full(Some("state.json"));
    let err = host
        .agent()
        .reconcile()
        .now_or_never()
        .expect("fakes answer at once");
    durable::faults::disk_full(None);
    let err = err.expect_err("nothing recorded").to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(host.state(), State::default());
    assert_eq!(finals(&host), []);
    until_up_to_date(&host, "refused after the disk had room again");
    assert_eq!(finals(&host), expected);
}

/// An agent with metrics written to `<dir>/textfile`.
fn metered(host: &Host) -> Agent {
    let textfile = host.dir.path().join("textfile");
    std::fs::create_dir_all(&textfile).unwrap();
    let mut agent = host.agent();
    agent.metrics = crate::metrics::Metrics::new(crate::metrics::MetricsConfig {
        textfile_dir: Some(textfile),
        listen: None,
    })
    .with_booted_system(&host.dir.path().join("booted-system"));
    agent
}

/// The `ferry_deploys_total` samples of the textfile with a count.
fn deploys_counted(host: &Host) -> Vec<String> {
    let text = std::fs::read_to_string(host.dir.path().join("textfile/ferry_agent.prom")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("ferry_deploys_total{") && !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

/// Each ending is counted exactly once in `ferry_deploys_total`, whichever
/// durable write the agent is killed right before (state, outbox, the
/// counters, the textfile): the counters remember the ending they last
/// counted, and the next agent counts one it missed.
#[test]
fn a_kill_before_any_durable_write_counts_each_ending_once() {
    let outcomes = ["success", "success", "refused", "failed"];
    for ((name, set), outcome) in endings().into_iter().zip(outcomes) {
        let expected = vec![format!("ferry_deploys_total{{outcome=\"{outcome}\"}} 1")];
        let host = Host::new();
        set(&mut host.w());
        durable::faults::kill_before_write(usize::MAX);
        run(&mut metered(&host));
        let writes = durable::faults::writes();
        assert_eq!(deploys_counted(&host), expected, "{name}, undisturbed");
        for n in 1..=writes {
            let what = format!("{name}, killed before durable write {n} of {writes}");
            let host = Host::new();
            set(&mut host.w());
            durable::faults::kill_before_write(n);
            assert!(killed_before_write(&mut metered(&host)), "{what}: not killed");
            durable::faults::kill_before_write(usize::MAX);
            let mut rounds = 0;
            while run(&mut metered(&host)) != Pass::UpToDate {
                rounds += 1;
                assert!(rounds < 5, "{what}: still busy after five restarts");
            }
            // And once more at a start, as the daemon does.
            metered(&host).update_metrics(false);
            assert_eq!(deploys_counted(&host), expected, "{what}");
        }
    }
}

/// With receipts on, the final receipt is queued whichever durable write
/// the agent is killed right before: it is recorded with the ending, and
/// queueing it again replaces it with itself.
#[test]
fn a_kill_before_any_durable_write_loses_no_receipt() {
    let receipts = "[report]\nreceipts = \"s3://fleet/r?endpoint=http://127.0.0.1:9\"\n";
    let cases: [(&str, SetUp, StatusState); 2] = [
        ("deployed", |_| {}, StatusState::Success),
        (
            "rolled back",
            |w| {
                w.ends.insert((1, false), SwitchResult::Failed { code: 4 });
            },
            StatusState::Failure,
        ),
    ];
    let queued = |host: &Host| {
        crate::state::receipts::ReceiptQueue::open(&host.dir.path().join("state"))
            .unwrap()
            .waiting()
            .unwrap()
    };
    for (name, set, last) in cases {
        let host = Host::new();
        *host.config.borrow_mut() = receipts.into();
        set(&mut host.w());
        durable::faults::kill_before_write(usize::MAX);
        run(&mut host.agent());
        let writes = durable::faults::writes();
        assert_eq!(queued(&host).len(), 1, "{name}");
        for n in 1..=writes {
            let what = format!("{name}, killed before durable write {n} of {writes}");
            let host = Host::new();
            *host.config.borrow_mut() = receipts.into();
            set(&mut host.w());
            durable::faults::kill_before_write(n);
            assert!(killed_before_write(&mut host.agent()), "{what}: not killed");
            durable::faults::kill_before_write(usize::MAX);
            until_up_to_date(&host, &what);
            let waiting = queued(&host);
            assert_eq!(waiting.len(), 1, "{what}: one receipt for the release");
            assert_eq!(waiting[0].receipt.state, last, "{what}");
            assert_eq!(waiting[0].receipt.release, commit(R1), "{what}");
        }
    }
}
