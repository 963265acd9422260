//! The one gate every effectful step asks first. Before it takes up a new
//! release, starts an activation, rolls back or reboots, the reconcile
//! gathers the facts and asks [`ask`], which answers go, wait until a time,
//! or wait for a reason. Each hold is one row of [`ROWS`]: the steps it
//! applies to and the rule, so a new hold, or an old one applied to one more
//! step, is a change to this file and its tests. Pure: the time, the zone and
//! what runs are facts brought by the caller.

use chrono::{DateTime, TimeZone, Utc};
use ferry_signer::approvals::Tally;
use ferry_signer::{Action, HostName};

use crate::policy::window::{deploy_waits_until, RebootPolicy, Windows};

/// An effectful step, as the gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Taking up a verified release this host would deploy with `action`
    /// (before the preflight; nothing is recorded while it waits).
    Release { action: Action },
    /// Starting the release's switch unit with `action`.
    Activate { action: Action },
    /// Starting the unit that puts the previous system back.
    RollBack,
    /// Requesting the reboot into the release.
    Reboot,
}

/// Why a step waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The release has fewer approvals than the two-person rule requires.
    Approvals(Tally),
    /// Outside the deploy window (`switch.window`).
    DeployWindow,
    /// The reboot's moment, chosen in the maintenance window, has not come.
    RebootMoment,
    /// The reboot's moment passed while the maintenance window was closed
    /// (the host was down): a new moment is chosen in its next opening
    /// (`until`), or none within a week (a plain wait).
    RebootWindowClosed,
    /// These switch or rollback units run: a reboot would cut them short.
    UnitsRunning(Vec<String>),
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Approvals(t) => write!(f, "{} of {} approvals", t.counted.len(), t.required),
            Hold::DeployWindow => f.write_str("outside the deploy window"),
            Hold::RebootMoment => f.write_str("the reboot's moment has not come"),
            Hold::RebootWindowClosed => f.write_str("the maintenance window is closed"),
            Hold::UnitsRunning(units) => write!(f, "{} running", units.join(", ")),
        }
    }
}

/// What the gate answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Go,
    /// Wait until `until`, then ask again.
    WaitUntil {
        until: DateTime<Utc>,
        hold: Hold,
    },
    /// Wait until the reason goes away (asked again at the next poll).
    WaitFor(Hold),
}

impl Answer {
    /// The hold and, for a timed one, until when; `None` for go.
    pub fn held(self) -> Option<(Hold, Option<DateTime<Utc>>)> {
        match self {
            Answer::Go => None,
            Answer::WaitUntil { until, hold } => Some((hold, Some(until))),
            Answer::WaitFor(hold) => Some((hold, None)),
        }
    }
}

/// The holds this host keeps, from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Holds<'a> {
    pub host: &'a HostName,
    /// `switch.window`.
    pub deploy_window: Option<&'a Windows>,
    /// `[reboot]`.
    pub reboot: &'a RebootPolicy,
}

/// Everything the gate looks at for one step.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a, Tz: TimeZone> {
    pub step: Step,
    pub now: DateTime<Utc>,
    /// The host's time zone, which windows are written in.
    pub zone: &'a Tz,
    /// For a release: how its approvals count.
    pub approvals: Option<&'a Tally>,
    /// For a reboot: the moment recorded for it.
    pub reboot_at: Option<DateTime<Utc>>,
    /// For a reboot: the switch and rollback units running, once asked
    /// (`None`: not asked yet; the row waits for the answer).
    pub running_units: Option<&'a [String]>,
}

/// One hold: the steps it applies to and its rule.
#[derive(Debug)]
pub struct Row {
    pub name: &'static str,
    pub applies: fn(Step) -> bool,
    pub rule: fn(&FactsInZone<'_>) -> Answer,
}

/// [`Facts`] with the zone resolved, so rows need not be generic.
#[derive(Debug, Clone, Copy)]
pub struct FactsInZone<'a> {
    pub now: DateTime<Utc>,
    pub approvals: Option<&'a Tally>,
    pub reboot_at: Option<DateTime<Utc>>,
    pub running_units: Option<&'a [String]>,
    /// When the deploy window next opens, if it is closed now.
    pub deploy_window_opens: Option<DateTime<Utc>>,
    /// Whether the maintenance window is open now (`None`: no such policy).
    pub maintenance_open: Option<bool>,
    /// This host's next reboot moment in the maintenance window, when it is
    /// closed now (`None`: open, no such policy, or no opening within a week).
    pub next_reboot_moment: Option<DateTime<Utc>>,
}

/// The holds, asked in this order; the first that does not answer go wins.
pub const ROWS: &[Row] = &[
    Row {
        name: "approvals",
        applies: |s| matches!(s, Step::Release { .. }),
        rule: |f| match f.approvals {
            Some(tally) if !tally.is_met() => Answer::WaitFor(Hold::Approvals(tally.clone())),
            _ => Answer::Go,
        },
    },
    Row {
        name: "deploy window",
        applies: |s| matches!(s, Step::Release { .. }),
        rule: |f| match f.deploy_window_opens {
            Some(until) => Answer::WaitUntil {
                until,
                hold: Hold::DeployWindow,
            },
            None => Answer::Go,
        },
    },
    Row {
        name: "reboot moment",
        applies: |s| s == Step::Reboot,
        rule: |f| match f.reboot_at {
            Some(at) if f.now < at => Answer::WaitUntil {
                until: at,
                hold: Hold::RebootMoment,
            },
            _ => Answer::Go,
        },
    },
    Row {
        name: "reboot window",
        applies: |s| s == Step::Reboot,
        rule: |f| match (f.maintenance_open, f.next_reboot_moment) {
            (Some(false), Some(until)) => Answer::WaitUntil {
                until,
                hold: Hold::RebootWindowClosed,
            },
            (Some(false), None) => Answer::WaitFor(Hold::RebootWindowClosed),
            _ => Answer::Go,
        },
    },
    Row {
        name: "running units",
        applies: |s| s == Step::Reboot,
        rule: |f| match f.running_units {
            Some(units) if !units.is_empty() => Answer::WaitFor(Hold::UnitsRunning(units.to_vec())),
            _ => Answer::Go,
        },
    },
];

/// Asks every row that applies to `facts.step`, in order.
pub fn ask<Tz: TimeZone>(holds: &Holds<'_>, facts: &Facts<'_, Tz>) -> Answer {
    let action = match facts.step {
        Step::Release { action } | Step::Activate { action } => Some(action),
        Step::RollBack | Step::Reboot => None,
    };
    let resolved = FactsInZone {
        now: facts.now,
        approvals: facts.approvals,
        reboot_at: facts.reboot_at,
        running_units: facts.running_units,
        deploy_window_opens: action
            .and_then(|a| deploy_waits_until(holds.deploy_window, a, facts.now, facts.zone)),
        maintenance_open: match holds.reboot {
            RebootPolicy::InWindow(w) => Some(w.contains(facts.now, facts.zone)),
            RebootPolicy::Never => None,
        },
        next_reboot_moment: match holds.reboot {
            RebootPolicy::InWindow(w) if !w.contains(facts.now, facts.zone) => {
                w.reboot_moment(holds.host, facts.now, facts.zone)
            }
            _ => None,
        },
    };
    ROWS.iter()
        .filter(|row| (row.applies)(facts.step))
        .map(|row| (row.rule)(&resolved))
        .find(|answer| *answer != Answer::Go)
        .unwrap_or(Answer::Go)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use ferry_signer::approvals::tally;
    use ferry_signer::{ApprovalPolicy, Principal};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn zone() -> FixedOffset {
        FixedOffset::east_opt(3600).unwrap()
    }

    fn host() -> HostName {
        "web1".parse().unwrap()
    }

    fn windows(spec: &str) -> Windows {
        Windows::parse(&[spec]).unwrap()
    }

    fn facts(step: Step, now: &str) -> Facts<'static, FixedOffset> {
        static ZONE: std::sync::OnceLock<FixedOffset> = std::sync::OnceLock::new();
        Facts {
            step,
            now: utc(now),
            zone: ZONE.get_or_init(zone),
            approvals: None,
            reboot_at: None,
            running_units: None,
        }
    }

    const SWITCH: Step = Step::Release {
        action: Action::Switch,
    };

    #[test]
    fn with_no_holds_configured_every_step_goes() {
        let host = host();
        let holds = Holds {
            host: &host,
            deploy_window: None,
            reboot: &RebootPolicy::Never,
        };
        for step in [
            SWITCH,
            Step::Activate { action: Action::Test },
            Step::RollBack,
            Step::Reboot,
        ] {
            assert_eq!(
                ask(&holds, &facts(step, "2027-01-06T12:00:00Z")),
                Answer::Go,
                "{step:?}"
            );
        }
    }

    #[test]
    fn a_release_short_of_approvals_waits_for_them() {
        let host = host();
        let holds = Holds {
            host: &host,
            deploy_window: None,
            reboot: &RebootPolicy::Never,
        };
        let p = |s: &str| s.parse::<Principal>().unwrap();
        let policy = ApprovalPolicy::new(1, vec![p("alice"), p("bob")], vec![]).unwrap();
        let releaser = ferry_signer::Signer {
            principal: "carol".into(),
            fingerprint: String::new(),
            key_type: "ssh-ed25519".into(),
        };
        let short = tally(&policy, &releaser, &[]);
        let mut f = facts(SWITCH, "2027-01-06T12:00:00Z");
        f.approvals = Some(&short);
        assert_eq!(ask(&holds, &f), Answer::WaitFor(Hold::Approvals(short.clone())));
        // Approvals hold only a new release, never a step already under way.
        f.step = Step::Reboot;
        assert_eq!(ask(&holds, &f), Answer::Go);
    }

    #[test]
    fn the_deploy_window_holds_a_new_release_until_it_opens_but_not_boot() {
        let host = host();
        let w = windows("Sat 02:00-04:00");
        let holds = Holds {
            host: &host,
            deploy_window: Some(&w),
            reboot: &RebootPolicy::Never,
        };
        // Wednesday noon (+01:00): the window opens Saturday 02:00 +01:00.
        let f = facts(SWITCH, "2027-01-06T12:00:00Z");
        assert_eq!(
            ask(&holds, &f),
            Answer::WaitUntil {
                until: utc("2027-01-09T01:00:00Z"),
                hold: Hold::DeployWindow
            }
        );
        let boot = facts(Step::Release { action: Action::Boot }, "2027-01-06T12:00:00Z");
        assert_eq!(ask(&holds, &boot), Answer::Go, "boot changes nothing running");
        let inside = facts(SWITCH, "2027-01-09T01:30:00Z");
        assert_eq!(ask(&holds, &inside), Answer::Go);
        // A rollback is never held: the host is left broken otherwise.
        assert_eq!(
            ask(&holds, &facts(Step::RollBack, "2027-01-06T12:00:00Z")),
            Answer::Go
        );
    }

    #[test]
    fn a_reboot_waits_for_its_moment_then_the_window_then_running_units() {
        let host = host();
        let policy = RebootPolicy::InWindow(windows("Sat 02:00-04:00"));
        let holds = Holds {
            host: &host,
            deploy_window: None,
            reboot: &policy,
        };
        let at = utc("2027-01-09T01:20:00Z");
        let mut f = facts(Step::Reboot, "2027-01-09T01:10:00Z");
        f.reboot_at = Some(at);
        assert_eq!(
            ask(&holds, &f),
            Answer::WaitUntil {
                until: at,
                hold: Hold::RebootMoment
            }
        );
        // The moment passed while the host was down and the window closed.
        let mut late = facts(Step::Reboot, "2027-01-09T05:00:00Z");
        late.reboot_at = Some(at);
        let moved = ask(&holds, &late);
        let Answer::WaitUntil {
            until,
            hold: Hold::RebootWindowClosed,
        } = moved
        else {
            panic!("{moved:?}")
        };
        assert!(
            until >= utc("2027-01-16T01:00:00Z") && until < utc("2027-01-16T03:00:00Z"),
            "the next Saturday's window: {until}"
        );
        // In the window, past the moment: only running units hold it.
        let mut now = facts(Step::Reboot, "2027-01-09T01:30:00Z");
        now.reboot_at = Some(at);
        assert_eq!(ask(&holds, &now), Answer::Go, "units not asked yet");
        let units = ["ferry-switch-7.service".to_owned()];
        now.running_units = Some(&units);
        assert_eq!(
            ask(&holds, &now),
            Answer::WaitFor(Hold::UnitsRunning(units.to_vec()))
        );
        now.running_units = Some(&[]);
        assert_eq!(ask(&holds, &now), Answer::Go);
    }

    /// The reconcile handles exactly these two holds of a new release (and
    /// no other, see `reconcile::intake`): a row added for releases must be
    /// handled there too.
    #[test]
    fn a_release_is_held_only_by_approvals_and_the_deploy_window() {
        for action in [Action::Switch, Action::Boot, Action::Test] {
            let names: Vec<&str> = ROWS
                .iter()
                .filter(|r| (r.applies)(Step::Release { action }))
                .map(|r| r.name)
                .collect();
            assert_eq!(names, ["approvals", "deploy window"]);
        }
    }

    #[test]
    fn every_row_names_itself_and_applies_to_some_step() {
        let steps = [
            SWITCH,
            Step::Activate {
                action: Action::Switch,
            },
            Step::RollBack,
            Step::Reboot,
        ];
        for row in ROWS {
            assert!(!row.name.is_empty());
            assert!(
                steps.iter().any(|s| (row.applies)(*s)),
                "{} applies to nothing",
                row.name
            );
        }
    }
}
