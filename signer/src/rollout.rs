//! Waves, decided: from the plan's waves, the entries being rolled out, the
//! release at the tip of the deploy branch and what each host reported on
//! it, [`next_step`] says what the rollout does next. Everything it needs is
//! in git and on the forge, so a rollout resumes from any point: a wave is
//! released when the tip already gives its hosts their new entries, so it is
//! never released twice, and a failed wave fails again on every re-run.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::fleet::{judge, Counts, HostOutcome, HostView, Progress};
use crate::forge::StatusState;
use crate::names::HostName;
use crate::plan::Wave;
use crate::release::{HostEntry, Release};

/// What a rollout does next. Waves are numbered from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Release this wave: give its hosts their new entries.
    Release { wave: usize },
    /// Released; the hosts of `wave` (the newest released wave, or an
    /// earlier one whose hosts report on the new release too) have not all
    /// finished. `newest` is the newest released wave and `newest_counts`
    /// its hosts' progress, which the summary shows.
    Wait {
        wave: usize,
        counts: Counts,
        deadline: DateTime<Utc>,
        newest: usize,
        newest_counts: Counts,
    },
    /// Healthy; the next wave is released once it has stayed so until then.
    Soak { wave: usize, until: DateTime<Utc> },
    /// Every wave is released and healthy.
    Done { counts: Counts },
    /// More hosts failed than the wave allows: the rollout stops here.
    Failed {
        wave: usize,
        counts: Counts,
        failed: Vec<HostName>,
    },
    /// The wave did not finish in its time.
    TimedOut {
        wave: usize,
        counts: Counts,
        waiting: Vec<HostName>,
    },
}

impl Step {
    /// Whether the rollout stopped for good (a failed or timed-out wave).
    pub fn is_stop(&self) -> bool {
        matches!(self, Self::Failed { .. } | Self::TimedOut { .. })
    }

    /// The state of the fleet's aggregated status (`ferry/fleet`) on the
    /// tip release this step was judged on: its released waves are healthy
    /// (the next wave may go, or all are done), still deploying or soaking,
    /// or stopped.
    pub fn fleet_state(&self) -> StatusState {
        match self {
            Self::Release { .. } | Self::Done { .. } => StatusState::Success,
            Self::Wait { .. } | Self::Soak { .. } => StatusState::Pending,
            Self::Failed { .. } | Self::TimedOut { .. } => StatusState::Failure,
        }
    }

    /// The state and description of the rollout's own commit status, e.g.
    /// "wave 2 of 3 (web): 8 of 10 hosts".
    pub fn summary(&self, waves: &[Wave]) -> (StatusState, String) {
        let n = waves.len();
        let label = |w: usize| format!("wave {} of {n} ({})", w + 1, waves[w].name);
        match self {
            Self::Release { wave } => (StatusState::Pending, format!("{}: releasing", label(*wave))),
            Self::Wait {
                newest,
                newest_counts,
                ..
            } => (
                StatusState::Pending,
                format!(
                    "{}: {} of {} hosts",
                    label(*newest),
                    newest_counts.success,
                    newest_counts.total()
                ),
            ),
            Self::Soak { wave, until } => (
                StatusState::Pending,
                format!(
                    "{}: healthy, soaking until {}",
                    label(*wave),
                    until.format("%H:%M:%S UTC")
                ),
            ),
            Self::Done { counts } => (
                StatusState::Success,
                format!("all {n} waves: {} of {} hosts", counts.success, counts.total()),
            ),
            Self::Failed { wave, counts, .. } => (
                StatusState::Failure,
                format!(
                    "{} failed: {} of {} hosts failed; later waves not released",
                    label(*wave),
                    counts.failure,
                    counts.total()
                ),
            ),
            Self::TimedOut { wave, counts, .. } => (
                StatusState::Failure,
                format!(
                    "{} timed out: {} of {} hosts not done; later waves not released",
                    label(*wave),
                    counts.pending + counts.not_reported,
                    counts.total()
                ),
            ),
        }
    }
}

/// Whether `tip` already gives every host of `wave` its entry in `target`.
pub fn is_released(wave: &Wave, target: &BTreeMap<HostName, HostEntry>, tip: Option<&Release>) -> bool {
    wave.hosts
        .iter()
        .all(|h| tip.and_then(|t| t.hosts.get(h)) == target.get(h))
}

/// The entries a wave's release sets.
pub fn wave_entries(wave: &Wave, target: &BTreeMap<HostName, HostEntry>) -> BTreeMap<HostName, HostEntry> {
    wave.hosts
        .iter()
        .filter_map(|h| target.get(h).map(|e| (h.clone(), e.clone())))
        .collect()
}

/// The next step. `outcomes` is what hosts reported on the tip commit
/// (missing: not reported). Released waves are judged in order on the tip
/// — each against its own failure budget, with its own timeout counted from
/// the tip's creation — and only the last released wave soaks.
pub fn next_step(
    waves: &[Wave],
    target: &BTreeMap<HostName, HostEntry>,
    tip: Option<&Release>,
    outcomes: &HashMap<HostName, HostOutcome>,
    now: DateTime<Utc>,
) -> Step {
    let Some(tip_release) = tip else {
        return Step::Release { wave: 0 };
    };
    let released = waves
        .iter()
        .position(|w| !is_released(w, target, tip))
        .unwrap_or(waves.len());
    let views_of = |wave: &Wave| -> Vec<HostView> {
        wave.hosts
            .iter()
            .map(|h| HostView {
                host: h.clone(),
                entry: target[h].clone(),
                outcome: outcomes.get(h).cloned().unwrap_or(HostOutcome::NotReported),
            })
            .collect()
    };
    let mut all = Vec::new();
    for (i, wave) in waves[..released].iter().enumerate() {
        let views = views_of(wave);
        match judge(&views, wave.max_failures) {
            Progress::TooManyFailures { counts, failed } => {
                return Step::Failed {
                    wave: i,
                    counts,
                    failed,
                }
            }
            Progress::Waiting(counts) => {
                let deadline = tip_release.created
                    + chrono::Duration::from_std(wave.timeout).unwrap_or(chrono::Duration::MAX);
                if now >= deadline {
                    let waiting = views
                        .iter()
                        .filter(|v| matches!(v.outcome, HostOutcome::Pending(_) | HostOutcome::NotReported))
                        .map(|v| v.host.clone())
                        .collect();
                    return Step::TimedOut {
                        wave: i,
                        counts,
                        waiting,
                    };
                }
                let newest = released - 1;
                let newest_counts = if newest == i {
                    counts
                } else {
                    Counts::of(&views_of(&waves[newest]))
                };
                return Step::Wait {
                    wave: i,
                    counts,
                    deadline,
                    newest,
                    newest_counts,
                };
            }
            Progress::Done(_) => {
                let last_released = i + 1 == released;
                if last_released && released < waves.len() && !wave.soak.is_zero() {
                    // Healthy since its last host reported success (never
                    // before the release itself): a re-run finds the same time.
                    let healthy_since = views
                        .iter()
                        .filter_map(|v| match &v.outcome {
                            HostOutcome::Success(s) => s.at,
                            _ => None,
                        })
                        .chain([tip_release.created])
                        .max()
                        .unwrap_or(tip_release.created);
                    let until = healthy_since
                        + chrono::Duration::from_std(wave.soak).unwrap_or(chrono::Duration::MAX);
                    if now < until {
                        return Step::Soak { wave: i, until };
                    }
                }
            }
        }
        all.extend(views);
    }
    if released < waves.len() {
        Step::Release { wave: released }
    } else {
        Step::Done {
            counts: Counts::of(&all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::ReportedStatus;
    use crate::release::Action;
    use std::time::Duration;

    fn entry(c: char, h: &str) -> HostEntry {
        HostEntry {
            toplevel: format!("/nix/store/{}-nixos-system-{h}", c.to_string().repeat(32))
                .parse()
                .unwrap(),
            action: Action::Switch,
        }
    }

    const HOSTS: [&str; 5] = ["canary", "web1", "web2", "db1", "db2"];

    fn fleet(c: char) -> BTreeMap<HostName, HostEntry> {
        HOSTS.iter().map(|h| (h.parse().unwrap(), entry(c, h))).collect()
    }

    fn waves(soak: u64) -> Vec<Wave> {
        let wave = |name: &str, hosts: &[&str], max_failures| Wave {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
            max_failures,
            timeout: Duration::from_secs(600),
            soak: Duration::from_secs(soak),
        };
        vec![
            wave("canary", &["canary"], 0),
            wave("web", &["web1", "web2"], 1),
            wave("db", &["db1", "db2"], 0),
        ]
    }

    fn tip(old: char, new_hosts: &[&str], created: DateTime<Utc>) -> Release {
        let mut hosts = fleet(old);
        for h in new_hosts {
            hosts.insert(h.parse().unwrap(), entry('n', h));
        }
        Release {
            serial: 7,
            created,
            expires: None,
            source: None,
            hosts,
        }
    }

    fn report(pairs: &[(&str, StatusState)], at: DateTime<Utc>) -> HashMap<HostName, HostOutcome> {
        pairs
            .iter()
            .map(|(h, state)| {
                let s = ReportedStatus {
                    id: 1,
                    context: format!("ferry/{h}"),
                    state: *state,
                    description: String::new(),
                    at: Some(at),
                };
                (h.parse().unwrap(), HostOutcome::from_status(Some(&s)))
            })
            .collect()
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    use StatusState::*;

    #[test]
    fn waves_go_out_in_order_each_once_healthy() {
        let w = waves(0);
        let target = fleet('n');
        // Nothing released yet: the canary goes first.
        let r0 = tip('c', &[], t(0));
        assert_eq!(
            next_step(&w, &target, Some(&r0), &HashMap::new(), t(1)),
            Step::Release { wave: 0 }
        );
        assert_eq!(
            next_step(&w, &target, None, &HashMap::new(), t(1)),
            Step::Release { wave: 0 }
        );
        // Canary released, not reported: wait, with the deadline from the release.
        let r1 = tip('c', &["canary"], t(10));
        match next_step(&w, &target, Some(&r1), &HashMap::new(), t(20)) {
            Step::Wait {
                wave: 0,
                counts,
                deadline,
                newest: 0,
                ..
            } => {
                assert_eq!(counts.not_reported, 1);
                assert_eq!(deadline, t(610));
            }
            other => panic!("{other:?}"),
        }
        // Canary healthy: release the next wave (never the canary again).
        let ok = report(&[("canary", Success)], t(30));
        assert_eq!(
            next_step(&w, &target, Some(&r1), &ok, t(31)),
            Step::Release { wave: 1 }
        );
        // Web released: the canary must report on the new release too.
        // The summary names the newest released wave, not the canary the
        // step waits on (what the `ferry/rollout` status says after
        // `rollout --once` released web).
        let r2 = tip('c', &["canary", "web1", "web2"], t(40));
        let nothing_yet = next_step(&w, &target, Some(&r2), &HashMap::new(), t(41));
        assert!(
            matches!(
                nothing_yet,
                Step::Wait {
                    wave: 0,
                    newest: 1,
                    ..
                }
            ),
            "{nothing_yet:?}"
        );
        assert_eq!(nothing_yet.summary(&w).1, "wave 2 of 3 (web): 0 of 2 hosts");
        let web = report(&[("web1", Success), ("web2", Success)], t(50));
        let step = next_step(&w, &target, Some(&r2), &web, t(51));
        assert!(
            matches!(
                step,
                Step::Wait {
                    wave: 0,
                    newest: 1,
                    ..
                }
            ),
            "{step:?}"
        );
        assert_eq!(step.summary(&w).1, "wave 2 of 3 (web): 2 of 2 hosts");
        let mut both = web.clone();
        both.extend(report(&[("canary", Success)], t(45)));
        assert_eq!(
            next_step(&w, &target, Some(&r2), &both, t(51)),
            Step::Release { wave: 2 }
        );
        // Everything released and healthy: done.
        let r3 = tip('c', &HOSTS, t(60));
        let all = report(&HOSTS.map(|h| (h, Success)), t(70));
        assert!(matches!(
            next_step(&w, &target, Some(&r3), &all, t(71)),
            Step::Done { counts } if counts.success == 5
        ));
    }

    #[test]
    fn a_failed_wave_stops_the_rollout_every_time() {
        let w = waves(0);
        let target = fleet('n');
        let r1 = tip('c', &["canary"], t(10));
        let failed = report(&[("canary", Failure)], t(20));
        for now in [t(21), t(10_000)] {
            match next_step(&w, &target, Some(&r1), &failed, now) {
                Step::Failed { wave: 0, failed, .. } => assert_eq!(failed[0].as_str(), "canary"),
                other => panic!("{other:?}"),
            }
        }
        // A wave's budget: one of two web hosts may fail, not two.
        let r2 = tip('c', &["canary", "web1", "web2"], t(40));
        let mut one = report(&[("canary", Success), ("web1", Error), ("web2", Success)], t(50));
        assert_eq!(
            next_step(&w, &target, Some(&r2), &one, t(51)),
            Step::Release { wave: 2 }
        );
        one.extend(report(&[("web2", Failure)], t(52)));
        assert!(matches!(
            next_step(&w, &target, Some(&r2), &one, t(53)),
            Step::Failed { wave: 1, .. }
        ));
    }

    #[test]
    fn a_slow_wave_times_out_at_its_deadline() {
        let w = waves(0);
        let target = fleet('n');
        let r1 = tip('c', &["canary"], t(10));
        let pending = report(&[("canary", Pending)], t(20));
        assert!(matches!(
            next_step(&w, &target, Some(&r1), &pending, t(609)),
            Step::Wait { .. }
        ));
        match next_step(&w, &target, Some(&r1), &pending, t(610)) {
            Step::TimedOut { wave: 0, waiting, .. } => assert_eq!(waiting.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn soak_counts_from_the_last_success_and_only_before_the_next_wave() {
        let w = waves(300);
        let target = fleet('n');
        let r1 = tip('c', &["canary"], t(10));
        let ok = report(&[("canary", Success)], t(100));
        assert_eq!(
            next_step(&w, &target, Some(&r1), &ok, t(200)),
            Step::Soak {
                wave: 0,
                until: t(400)
            }
        );
        assert_eq!(
            next_step(&w, &target, Some(&r1), &ok, t(400)),
            Step::Release { wave: 1 }
        );
        // Once the next wave is out, the canary does not soak again.
        let r2 = tip('c', &["canary", "web1", "web2"], t(500));
        let on_r2 = report(
            &[("canary", Success), ("web1", Success), ("web2", Success)],
            t(510),
        );
        assert_eq!(
            next_step(&w, &target, Some(&r2), &on_r2, t(520)),
            Step::Soak {
                wave: 1,
                until: t(810)
            }
        );
        // The last wave needs no soak.
        let r3 = tip('c', &HOSTS, t(900));
        let all = report(&HOSTS.map(|h| (h, Success)), t(910));
        assert!(matches!(
            next_step(&w, &target, Some(&r3), &all, t(911)),
            Step::Done { .. }
        ));
    }

    #[test]
    fn hosts_that_already_run_their_entry_need_no_release() {
        let w = waves(0);
        // Only the web hosts change in this rollout.
        let mut target = fleet('c');
        target.insert("web1".parse().unwrap(), entry('n', "web1"));
        target.insert("web2".parse().unwrap(), entry('n', "web2"));
        let r0 = tip('c', &[], t(0));
        let ok = report(&[("canary", Success)], t(5));
        assert_eq!(
            next_step(&w, &target, Some(&r0), &ok, t(6)),
            Step::Release { wave: 1 }
        );
        assert!(is_released(&w[0], &target, Some(&r0)));
        assert!(!is_released(&w[1], &target, Some(&r0)));
        assert_eq!(wave_entries(&w[1], &target).len(), 2);
    }

    #[test]
    fn summaries_read_like_a_progress_line() {
        let w = waves(0);
        let counts = Counts {
            success: 1,
            pending: 1,
            failure: 0,
            not_reported: 0,
            forged: 0,
        };
        let (state, text) = Step::Wait {
            wave: 1,
            counts,
            deadline: t(0),
            newest: 1,
            newest_counts: counts,
        }
        .summary(&w);
        assert_eq!(state, Pending);
        assert_eq!(text, "wave 2 of 3 (web): 1 of 2 hosts");
        let failed = Step::Failed {
            wave: 0,
            counts: Counts {
                failure: 1,
                ..Default::default()
            },
            failed: vec![],
        };
        assert!(failed.is_stop());
        assert_eq!(failed.summary(&w).0, Failure);
        assert!(failed.summary(&w).1.starts_with("wave 1 of 3 (canary) failed"));
    }
}
