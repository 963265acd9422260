//! A release across the fleet, as pure data: which hosts a command looks at
//! ([`Selection`]), what each reported on the release ([`HostOutcome`]), the
//! counts, and the decision a waiter makes ([`judge`]): done, keep waiting,
//! or too many failures. No I/O; the forge's answers come in as a map.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::forge::{ReportedStatus, StatusState};
use crate::names::HostName;
use crate::pattern::glob_matches;
use crate::release::{HostEntry, Release};

/// What one host reported on a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOutcome {
    /// No status from this host on this commit (yet).
    NotReported,
    Pending(ReportedStatus),
    Success(ReportedStatus),
    /// A failure or an error.
    Failure(ReportedStatus),
}

impl HostOutcome {
    /// Classifies the newest status of a host's context, if any.
    pub fn from_status(status: Option<&ReportedStatus>) -> Self {
        match status {
            None => Self::NotReported,
            Some(s) => match s.state {
                StatusState::Pending => Self::Pending(s.clone()),
                StatusState::Success => Self::Success(s.clone()),
                StatusState::Failure | StatusState::Error => Self::Failure(s.clone()),
            },
        }
    }

    /// `success`, `pending`, `failure` or `not reported`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotReported => "not reported",
            Self::Pending(_) => "pending",
            Self::Success(_) => "success",
            Self::Failure(_) => "failure",
        }
    }

    /// The status behind the outcome.
    pub fn status(&self) -> Option<&ReportedStatus> {
        match self {
            Self::NotReported => None,
            Self::Pending(s) | Self::Success(s) | Self::Failure(s) => Some(s),
        }
    }
}

/// One host of a release and what it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub host: HostName,
    pub entry: HostEntry,
    pub outcome: HostOutcome,
}

/// How many hosts are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub success: usize,
    pub pending: usize,
    pub failure: usize,
    pub not_reported: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.success + self.pending + self.failure + self.not_reported
    }

    /// Counts of `hosts`.
    pub fn of<'a>(hosts: impl IntoIterator<Item = &'a HostView>) -> Self {
        let mut c = Self::default();
        for h in hosts {
            match h.outcome {
                HostOutcome::NotReported => c.not_reported += 1,
                HostOutcome::Pending(_) => c.pending += 1,
                HostOutcome::Success(_) => c.success += 1,
                HostOutcome::Failure(_) => c.failure += 1,
            }
        }
        c
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} host{}: {} success, {} pending, {} failure, {} not reported",
            self.total(),
            if self.total() == 1 { "" } else { "s" },
            self.success,
            self.pending,
            self.failure,
            self.not_reported
        )
    }
}

/// Which hosts of a release a command looks at: glob patterns (`*`, `?`),
/// or every host when there are none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    patterns: Vec<String>,
}

/// A selection that does not fit the release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error(
        "host pattern `{0}` matches no host of the release: check the name (`ferry-signer show` lists them)"
    )]
    NoMatch(String),
    #[error("host pattern `{0}` is empty")]
    Empty(String),
}

impl Selection {
    pub fn new(patterns: Vec<String>) -> Result<Self, SelectionError> {
        if let Some(p) = patterns.iter().find(|p| p.trim().is_empty()) {
            return Err(SelectionError::Empty(p.clone()));
        }
        Ok(Self { patterns })
    }

    pub fn all() -> Self {
        Self::default()
    }

    pub fn selects(&self, host: &HostName) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| glob_matches(host.as_str(), p))
    }

    /// Checks that every pattern names at least one host of `release`.
    pub fn check(&self, hosts: &BTreeMap<HostName, HostEntry>) -> Result<(), SelectionError> {
        for p in &self.patterns {
            if !hosts.keys().any(|h| glob_matches(h.as_str(), p)) {
                return Err(SelectionError::NoMatch(p.clone()));
            }
        }
        Ok(())
    }
}

/// The selected hosts of `release`, each with what it reported. `context_for`
/// gives each host's status context; `statuses` is the forge's newest status
/// per context on the release commit.
pub fn view(
    release: &Release,
    selection: &Selection,
    context_for: impl Fn(&HostName) -> String,
    statuses: &HashMap<String, ReportedStatus>,
) -> Vec<HostView> {
    release
        .hosts
        .iter()
        .filter(|(host, _)| selection.selects(host))
        .map(|(host, entry)| HostView {
            host: host.clone(),
            entry: entry.clone(),
            outcome: HostOutcome::from_status(statuses.get(&context_for(host))),
        })
        .collect()
}

/// Where a wait stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every host succeeded but at most the allowed number of failures.
    Done(Counts),
    /// Some hosts have not finished; the failures so far are within budget.
    Waiting(Counts),
    /// More hosts failed than allowed: these.
    TooManyFailures { counts: Counts, failed: Vec<HostName> },
}

/// Judges `hosts` against a failure budget: more than `max_failures`
/// failures fail at once; otherwise done when nothing is left pending.
pub fn judge(hosts: &[HostView], max_failures: usize) -> Progress {
    let counts = Counts::of(hosts);
    if counts.failure > max_failures {
        let failed = hosts
            .iter()
            .filter(|h| matches!(h.outcome, HostOutcome::Failure(_)))
            .map(|h| h.host.clone())
            .collect();
        return Progress::TooManyFailures { counts, failed };
    }
    if counts.pending + counts.not_reported == 0 {
        Progress::Done(counts)
    } else {
        Progress::Waiting(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Action;
    use chrono::Utc;

    pub(crate) fn release(hosts: &[&str]) -> Release {
        Release {
            serial: 1,
            created: Utc::now(),
            expires: None,
            source: None,
            hosts: hosts
                .iter()
                .map(|h| {
                    (
                        h.parse().unwrap(),
                        HostEntry {
                            toplevel: format!("/nix/store/{}-nixos-system-{h}", "a".repeat(32))
                                .parse()
                                .unwrap(),
                            action: Action::Switch,
                        },
                    )
                })
                .collect(),
        }
    }

    fn status(context: &str, state: StatusState) -> (String, ReportedStatus) {
        (
            context.to_owned(),
            ReportedStatus {
                id: 1,
                context: context.to_owned(),
                state,
                description: format!("{context} is {}", state.as_str()),
                at: None,
            },
        )
    }

    fn ctx(h: &HostName) -> String {
        format!("ferry/{h}")
    }

    #[test]
    fn every_host_is_counted_once() {
        let r = release(&["web1", "web2", "web3", "db1", "db2"]);
        let statuses: HashMap<_, _> = [
            status("ferry/web1", StatusState::Success),
            status("ferry/web2", StatusState::Pending),
            status("ferry/web3", StatusState::Error),
            status("ferry/db1", StatusState::Failure),
            // Another context is not a host's.
            status("ci/build", StatusState::Success),
        ]
        .into_iter()
        .collect();
        let v = view(&r, &Selection::all(), ctx, &statuses);
        let c = Counts::of(&v);
        assert_eq!(
            c,
            Counts {
                success: 1,
                pending: 1,
                failure: 2,
                not_reported: 1
            }
        );
        assert_eq!(
            c.to_string(),
            "5 hosts: 1 success, 1 pending, 2 failure, 1 not reported"
        );
        let db2 = v.iter().find(|h| h.host.as_str() == "db2").unwrap();
        assert_eq!(db2.outcome, HostOutcome::NotReported);
    }

    #[test]
    fn selection_by_pattern() {
        let r = release(&["web1", "web2", "db1"]);
        let sel = Selection::new(vec!["web*".into()]).unwrap();
        sel.check(&r.hosts).unwrap();
        let v = view(&r, &sel, ctx, &HashMap::new());
        let names: Vec<&str> = v.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["web1", "web2"]);
        let typo = Selection::new(vec!["wbe*".into()]).unwrap();
        assert_eq!(typo.check(&r.hosts), Err(SelectionError::NoMatch("wbe*".into())));
        assert!(Selection::new(vec![" ".into()]).is_err());
    }

    #[test]
    fn judging_a_wait() {
        let r = release(&["a", "b", "c"]);
        let with = |states: &[StatusState]| {
            let statuses: HashMap<_, _> = ["a", "b", "c"]
                .iter()
                .zip(states)
                .map(|(h, s)| status(&format!("ferry/{h}"), *s))
                .collect();
            view(&r, &Selection::all(), ctx, &statuses)
        };
        use StatusState::*;
        assert!(matches!(
            judge(&with(&[Success, Success, Success]), 0),
            Progress::Done(_)
        ));
        assert!(matches!(
            judge(&with(&[Success, Pending, Success]), 0),
            Progress::Waiting(_)
        ));
        assert!(matches!(judge(&with(&[Success, Success]), 0), Progress::Waiting(c) if c.not_reported == 1));
        match judge(&with(&[Success, Failure, Pending]), 0) {
            Progress::TooManyFailures { failed, counts } => {
                assert_eq!(failed, vec!["b".parse::<HostName>().unwrap()]);
                assert_eq!(counts.pending, 1);
            }
            other => panic!("{other:?}"),
        }
        // Within the budget, a failure does not stop the wait, and the wait
        // ends when the rest succeeded.
        assert!(matches!(
            judge(&with(&[Success, Failure, Pending]), 1),
            Progress::Waiting(_)
        ));
        assert!(matches!(judge(&with(&[Success, Error, Success]), 1), Progress::Done(c) if c.failure == 1));
        assert!(matches!(
            judge(&with(&[Error, Error, Success]), 1),
            Progress::TooManyFailures { .. }
        ));
        // No host at all is trivially done.
        assert!(matches!(judge(&[], 0), Progress::Done(c) if c.total() == 0));
    }
}
