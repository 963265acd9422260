//! A release across the fleet, as pure data: which hosts a command looks at
//! ([`Selection`]), what each reported on the release ([`HostOutcome`]), the
//! counts, and the decision a waiter makes ([`judge`]): done, keep waiting,
//! or too many failures; with receipts, a host's receipt over its status
//! ([`outcome`]) and the one aggregated status of many hosts
//! ([`aggregate`]). No I/O; the forge's answers and the receipts' verdicts
//! come in as maps.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::forge::{ReportedStatus, StatusState};
use crate::names::HostName;
use crate::pattern::glob_matches;
use crate::receipt::{Forgery, Verdict};
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
    /// A receipt under this host's name that does not verify (see
    /// [`crate::receipt::verify`]): counted as a failure, never a success.
    Forged(Forgery),
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
            Self::Forged(_) => "forged",
        }
    }

    /// What a receipt says, as an outcome: a genuine one as the status it
    /// carries (dated when the host wrote it), a forged one as forged.
    pub fn from_receipt(verdict: &Verdict) -> Self {
        match verdict {
            Verdict::Genuine(r) => Self::from_status(Some(&ReportedStatus {
                id: 0,
                context: RECEIPT_CONTEXT.into(),
                state: r.state,
                description: r.description.clone(),
                at: Some(r.time),
            })),
            Verdict::Forged(why) => Self::Forged(why.clone()),
        }
    }

    /// A failure, or a forged receipt.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failure(_) | Self::Forged(_))
    }

    /// The words to show: the status's description, or why it is forged.
    pub fn description(&self) -> Option<String> {
        match self {
            Self::NotReported => None,
            Self::Forged(why) => Some(why.to_string()),
            other => other.status().map(|s| s.description.clone()),
        }
    }

    /// The status behind the outcome.
    pub fn status(&self) -> Option<&ReportedStatus> {
        match self {
            Self::NotReported | Self::Forged(_) => None,
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
    /// Failures and forged receipts.
    pub failure: usize,
    pub not_reported: usize,
    /// Of `failure`, the hosts whose receipt is forged.
    pub forged: usize,
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
                HostOutcome::Forged(_) => {
                    c.failure += 1;
                    c.forged += 1;
                }
            }
        }
        c
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let forged = match self.forged {
            0 => String::new(),
            n => format!(" ({n} forged)"),
        };
        write!(
            f,
            "{} host{}: {} success, {} pending, {} failure{forged}, {} not reported",
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

/// The context a receipt's outcome is shown under.
pub const RECEIPT_CONTEXT: &str = "receipt";

/// The selected hosts of `release`, each with what it reported. `context_for`
/// gives each host's status context; `statuses` is the forge's newest status
/// per context on the release commit; `receipts` the verdict on each host's
/// receipt, and `on_receipts` whether a host reports by receipts (its key
/// is pinned): see [`outcome`].
pub fn view(
    release: &Release,
    selection: &Selection,
    context_for: impl Fn(&HostName) -> String,
    statuses: &HashMap<String, ReportedStatus>,
    receipts: &BTreeMap<HostName, Verdict>,
    on_receipts: &dyn Fn(&HostName) -> bool,
) -> Vec<HostView> {
    release
        .hosts
        .iter()
        .filter(|(host, _)| selection.selects(host))
        .map(|(host, entry)| HostView {
            host: host.clone(),
            entry: entry.clone(),
            outcome: outcome(
                statuses.get(&context_for(host)),
                receipts.get(host),
                on_receipts(host),
            ),
        })
        .collect()
}

/// A host's outcome from its status and its receipt: the receipt's when
/// there is one (genuine or forged). Without one, a host that reports by
/// receipts (`on_receipts`: its key is pinned) has not reported — its
/// commit statuses are never counted, so a leaked forge token cannot make
/// it look healthy — and any other host (a mixed fleet) is its status.
pub fn outcome(status: Option<&ReportedStatus>, receipt: Option<&Verdict>, on_receipts: bool) -> HostOutcome {
    match receipt {
        Some(verdict) => HostOutcome::from_receipt(verdict),
        None if on_receipts => HostOutcome::NotReported,
        None => HostOutcome::from_status(status),
    }
}

/// The one status `wait` and `rollout` post for a set of hosts (a wave, or
/// the selection) with receipts on, in place of one per host: pending while
/// any is, failure when more failed than `max_failures`, else success once
/// the rest succeeded (within the budget, the failed are named); the words say how many run
/// release `serial` and name the failed and forged hosts (cut to fit 140
/// characters), e.g. `9,998 of 10,000 hosts run release 42; failed: db3, web7`.
pub fn aggregate(hosts: &[HostView], serial: u64, max_failures: usize) -> (StatusState, String) {
    let counts = Counts::of(hosts);
    let state = match judge(hosts, max_failures) {
        Progress::TooManyFailures { .. } => StatusState::Failure,
        Progress::Waiting(_) => StatusState::Pending,
        Progress::Done(_) => StatusState::Success,
    };
    let mut text = format!(
        "{} of {} host{} run{} release {serial}",
        thousands(counts.success),
        thousands(counts.total()),
        if counts.total() == 1 { "" } else { "s" },
        if counts.total() == 1 { "s" } else { "" },
    );
    if counts.pending + counts.not_reported > 0 {
        text.push_str(&format!(
            "; {} waiting",
            thousands(counts.pending + counts.not_reported)
        ));
    }
    let named = |pick: fn(&HostOutcome) -> bool| -> Vec<&str> {
        hosts
            .iter()
            .filter(|h| pick(&h.outcome))
            .map(|h| h.host.as_str())
            .collect()
    };
    for (label, names) in [
        ("failed", named(|o| matches!(o, HostOutcome::Failure(_)))),
        ("forged", named(|o| matches!(o, HostOutcome::Forged(_)))),
    ] {
        if names.is_empty() {
            continue;
        }
        text.push_str(&format!("; {label}: "));
        let limit = crate::forge::MAX_DESCRIPTION_CHARS;
        for (i, name) in names.iter().enumerate() {
            let rest = names.len() - i;
            let more = format!("… and {rest} more");
            let sep = if i == 0 { "" } else { ", " };
            if text.chars().count() + sep.len() + name.len() + more.len() + 2 > limit && rest > 1 {
                text.push_str(sep);
                text.push_str(&more);
                break;
            }
            text.push_str(sep);
            text.push_str(name);
        }
    }
    (state, text)
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
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
            .filter(|h| h.outcome.is_failure())
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
        let v = view(&r, &Selection::all(), ctx, &statuses, &BTreeMap::new(), &|_| {
            false
        });
        let c = Counts::of(&v);
        assert_eq!(
            c,
            Counts {
                success: 1,
                pending: 1,
                failure: 2,
                not_reported: 1,
                forged: 0,
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
        let v = view(&r, &sel, ctx, &HashMap::new(), &BTreeMap::new(), &|_| false);
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
            view(&r, &Selection::all(), ctx, &statuses, &BTreeMap::new(), &|_| {
                false
            })
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

    #[test]
    fn a_receipt_wins_over_a_status_and_a_forged_one_is_a_failure() {
        use crate::receipt::{Forgery, Receipt, Verdict};
        let r = release(&["web1", "web2", "web3", "db1"]);
        let receipt = |host: &str, state| Receipt {
            release: "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            source: None,
            host: host.parse().unwrap(),
            state,
            time: "2026-12-06T10:00:00Z".parse().unwrap(),
            toplevel: None,
            boot: None,
            description: format!("{host} says {}", state.as_str()),
        };
        let statuses: HashMap<_, _> = [
            status("ferry/web1", StatusState::Error),
            status("ferry/web2", StatusState::Success),
            status("ferry/db1", StatusState::Success),
        ]
        .into_iter()
        .collect();
        let receipts: BTreeMap<HostName, Verdict> = [
            // A stale error on the forge; the receipt says it recovered.
            ("web1", Verdict::Genuine(receipt("web1", StatusState::Success))),
            // A success on the forge (a leaked token?); the receipt is forged.
            (
                "web2",
                Verdict::Forged(Forgery::NoKeyPinned {
                    host: "web2".parse().unwrap(),
                }),
            ),
            ("web3", Verdict::Genuine(receipt("web3", StatusState::Pending))),
        ]
        .into_iter()
        .map(|(h, v)| (h.parse().unwrap(), v))
        .collect();
        let v = view(&r, &Selection::all(), ctx, &statuses, &receipts, &|h| {
            h.as_str().starts_with("web")
        });
        let labels: Vec<(&str, &str)> = v.iter().map(|h| (h.host.as_str(), h.outcome.label())).collect();
        assert_eq!(
            labels,
            [
                ("db1", "success"),
                ("web1", "success"),
                ("web2", "forged"),
                ("web3", "pending")
            ]
        );
        let web1 = &v[1].outcome;
        assert_eq!(
            web1.status().unwrap().at,
            Some("2026-12-06T10:00:00Z".parse().unwrap())
        );
        assert!(v[2].outcome.description().unwrap().starts_with("forged: "));
        let c = Counts::of(&v);
        assert_eq!((c.success, c.failure, c.forged, c.pending), (2, 1, 1, 1));
        assert_eq!(
            c.to_string(),
            "4 hosts: 2 success, 1 pending, 1 failure (1 forged), 0 not reported"
        );
        match judge(&v, 0) {
            Progress::TooManyFailures { failed, .. } => {
                assert_eq!(failed, vec!["web2".parse::<HostName>().unwrap()])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_aggregated_status_says_how_many_run_the_release_and_names_the_failed() {
        let names: Vec<String> = (0..10_000).map(|i| format!("h{i:05}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = release(&refs);
        let all_success: HashMap<_, _> = names
            .iter()
            .map(|h| status(&format!("ferry/{h}"), StatusState::Success))
            .collect();
        let v = view(
            &r,
            &Selection::all(),
            ctx,
            &all_success,
            &BTreeMap::new(),
            &|_| false,
        );
        assert_eq!(
            aggregate(&v, 42, 0),
            (
                StatusState::Success,
                "10,000 of 10,000 hosts run release 42".to_owned()
            )
        );
        let mut some = all_success.clone();
        some.insert(
            "ferry/h00003".into(),
            status("ferry/h00003", StatusState::Failure).1,
        );
        some.insert(
            "ferry/h00007".into(),
            status("ferry/h00007", StatusState::Error).1,
        );
        let v = view(&r, &Selection::all(), ctx, &some, &BTreeMap::new(), &|_| false);
        assert_eq!(
            aggregate(&v, 42, 2),
            (
                StatusState::Success,
                "9,998 of 10,000 hosts run release 42; failed: h00003, h00007".to_owned()
            )
        );
        assert_eq!(aggregate(&v, 42, 1).0, StatusState::Failure);
        // Waiting hosts: pending, and counted.
        some.remove("ferry/h09999");
        let v = view(&r, &Selection::all(), ctx, &some, &BTreeMap::new(), &|_| false);
        let (state, text) = aggregate(&v, 42, 5);
        assert_eq!(state, StatusState::Pending);
        assert_eq!(
            text,
            "9,997 of 10,000 hosts run release 42; 1 waiting; failed: h00003, h00007"
        );
        // Many failures: cut to a status's 140 characters, the rest counted.
        let failing: HashMap<_, _> = names
            .iter()
            .map(|h| status(&format!("ferry/{h}"), StatusState::Failure))
            .collect();
        let v = view(&r, &Selection::all(), ctx, &failing, &BTreeMap::new(), &|_| false);
        let (state, text) = aggregate(&v, 42, 0);
        assert_eq!(state, StatusState::Failure);
        assert!(text.chars().count() <= 140, "{text}");
        assert!(
            text.starts_with("0 of 10,000 hosts run release 42; failed: h00000, h00001, "),
            "{text}"
        );
        assert!(text.ends_with(" more"), "{text}");
        let one = release(&["web1"]);
        let v = view(
            &one,
            &Selection::all(),
            ctx,
            &HashMap::new(),
            &BTreeMap::new(),
            &|_| false,
        );
        assert_eq!(aggregate(&v, 1, 0).1, "0 of 1 host runs release 1; 1 waiting");
    }
}
