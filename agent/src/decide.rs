//! The agent's decisions, as pure functions over plain data: whether a
//! verified release may be deployed here (anti-rollback, host entry), how
//! serious a refusal is, what a finished switch and health check mean (roll
//! back? reboot required? which outcome, in which words), how each outcome
//! shows on the forge, which statuses are worth posting (a repeat is
//! not), when a fault that keeps a release from progressing has
//! persisted long enough to be reported, and what a reboot into a release
//! means. No I/O, so every rule is tested exhaustively without a
//! network, a store or systemd.

use ferry_signer::git::GitError;
use ferry_signer::{Action, CommitId, HostEntry, HostName, StorePath, VerifiedRelease, VerifyError};

use crate::cache::CacheError;
use crate::health::Health;
use crate::report::{CommitStatus, StatusState};
use crate::state::{Anchor, OutcomeKind};

/// What to do with a verified release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deploy this host's entry.
    Deploy(HostEntry),
    /// This host already runs its entry: record and report success.
    AlreadyRunning(HostEntry),
    /// Refuse: nothing is changed.
    Refuse(Refusal),
}

/// Why a verified release is refused by this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("release {tip} does not descend from the last accepted release {anchor}: the branch was rewound or force-pushed")]
    Rewound { tip: CommitId, anchor: CommitId },
    #[error("release {tip} has serial {serial}, not greater than the last accepted serial {anchor_serial}")]
    SerialNotIncreasing {
        tip: CommitId,
        serial: u64,
        anchor_serial: u64,
    },
    #[error("release {tip} (serial {serial}) has no entry for host {host}")]
    NoEntry {
        tip: CommitId,
        serial: u64,
        host: HostName,
    },
}

impl Refusal {
    /// Plain words for a commit status (≤ 140 characters).
    pub fn summary(&self) -> String {
        match self {
            Refusal::Rewound { .. } => {
                "refused: branch was rewound (not a descendant of the last release)".into()
            }
            Refusal::SerialNotIncreasing {
                serial,
                anchor_serial,
                ..
            } => {
                format!("refused: serial {serial} is not greater than {anchor_serial}")
            }
            Refusal::NoEntry { host, .. } => format!("refused: release has no entry for {host}"),
        }
    }
}

/// Judges a verified release against the anchor and the running system.
/// `descends_from_anchor` is whether the release commit descends from (or is)
/// the anchor commit; it is ignored when there is no anchor.
pub fn judge(
    release: &VerifiedRelease,
    host: &HostName,
    anchor: Option<&Anchor>,
    descends_from_anchor: bool,
    running: Option<&StorePath>,
) -> Verdict {
    let tip = release.commit.clone();
    let serial = release.release.serial;
    if let Some(anchor) = anchor {
        if anchor.commit != tip {
            if !descends_from_anchor {
                return Verdict::Refuse(Refusal::Rewound {
                    tip,
                    anchor: anchor.commit.clone(),
                });
            }
            if serial <= anchor.serial {
                return Verdict::Refuse(Refusal::SerialNotIncreasing {
                    tip,
                    serial,
                    anchor_serial: anchor.serial,
                });
            }
        }
    }
    let Some(entry) = release.release.hosts.get(host) else {
        return Verdict::Refuse(Refusal::NoEntry {
            tip,
            serial,
            host: host.clone(),
        });
    };
    // `boot` only changes the next boot: it is done when the profile points at
    // the toplevel, which the caller reflects in `running` for that action.
    if running == Some(&entry.toplevel) {
        Verdict::AlreadyRunning(entry.clone())
    } else {
        Verdict::Deploy(entry.clone())
    }
}

/// What the switch unit reported, reduced to what matters for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchResult {
    /// Exit 0.
    Ok,
    /// Exit 100: activated, but the new kernel/initrd needs a reboot.
    RebootRequired,
    /// Any other exit status (4: some units failed to start).
    Failed { code: i32 },
    /// Killed by a signal or stopped for running too long.
    Aborted { timed_out: bool },
}

impl SwitchResult {
    /// Plain words for logs and statuses.
    pub fn describe(self) -> String {
        match self {
            SwitchResult::Ok => "switch succeeded".into(),
            SwitchResult::RebootRequired => "switch succeeded; reboot required".into(),
            SwitchResult::Failed { code } => format!("switch-to-configuration failed (exit {code})"),
            SwitchResult::Aborted { timed_out: true } => {
                "switch-to-configuration timed out and was stopped".into()
            }
            SwitchResult::Aborted { timed_out: false } => "switch-to-configuration was killed".into(),
        }
    }

    /// A compact form for the state file.
    pub fn encode(self) -> String {
        match self {
            SwitchResult::Ok => "ok".into(),
            SwitchResult::RebootRequired => "reboot-required".into(),
            SwitchResult::Failed { code } => format!("failed:{code}"),
            SwitchResult::Aborted { timed_out } => format!("aborted:{timed_out}"),
        }
    }

    /// Inverse of [`SwitchResult::encode`].
    pub fn decode(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "ok" => Some(SwitchResult::Ok),
            None if s == "reboot-required" => Some(SwitchResult::RebootRequired),
            Some(("failed", code)) => code.parse().ok().map(|code| SwitchResult::Failed { code }),
            Some(("aborted", t)) => t
                .parse()
                .ok()
                .map(|timed_out| SwitchResult::Aborted { timed_out }),
            _ => None,
        }
    }
}

/// How long after a release's `created` time a closure path missing from the
/// cache is taken for CI still uploading (the release may be pushed before the
/// upload finishes): until then the agent retries instead of refusing.
pub const CACHE_UPLOAD_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Whether a closure missing from the binary cache may still be on its way:
/// the release was created, and this host first saw it missing, less than
/// [`CACHE_UPLOAD_GRACE`] before `now`. The host's own first sighting bounds
/// the wait when `created` is in the future (a signer's clock ahead, or this
/// host's behind), so a missing closure is never waited for indefinitely.
pub fn may_still_be_uploading(
    created: chrono::DateTime<chrono::Utc>,
    first_seen_missing: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    now < upload_deadline(created, first_seen_missing)
}

/// When waiting for a missing closure ends (see [`may_still_be_uploading`]).
pub fn upload_deadline(
    created: chrono::DateTime<chrono::Utc>,
    first_seen_missing: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    created.min(first_seen_missing) + CACHE_UPLOAD_GRACE
}

/// Whether to roll back after a switch and a health check.
pub fn needs_rollback(action: Action, switch: SwitchResult, healthy: bool, rollback_enabled: bool) -> bool {
    if !rollback_enabled {
        return false;
    }
    // A `boot` deploy changes nothing running, so health is not its business.
    let unhealthy = !healthy && action != Action::Boot;
    !switch.activated() || unhealthy
}

impl SwitchResult {
    /// Whether the new system was activated (possibly wanting a reboot).
    pub fn activated(self) -> bool {
        matches!(self, SwitchResult::Ok | SwitchResult::RebootRequired)
    }
}

/// Whether health is checked after this switch: only a system that was
/// activated, and not for `boot` (nothing running changed).
pub fn checks_health(action: Action, switch: SwitchResult) -> bool {
    switch.activated() && action != Action::Boot
}

/// How serious a refusal is for the forge: the release's own fault fails the
/// commit; a fault outside the release (reading the repository, the cache,
/// the disk) is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The release cannot be deployed as it is (`failure`).
    Failure,
    /// Something outside the release went wrong (`error`).
    Error,
}

impl Severity {
    /// The commit status a refusal of this severity is reported with.
    pub fn status(self) -> StatusState {
        match self {
            Severity::Failure => StatusState::Failure,
            Severity::Error => StatusState::Error,
        }
    }
}

/// The severity of a release that failed verification.
pub fn verify_severity(e: &VerifyError) -> Severity {
    match e {
        VerifyError::Git(GitError::Release { .. } | GitError::NoReleaseFile { .. }) => Severity::Failure,
        VerifyError::Git(_) => Severity::Error,
        _ => Severity::Failure,
    }
}

/// The severity of a closure the preflight refused.
pub fn cache_severity(e: &CacheError) -> Severity {
    match e {
        CacheError::Unreachable { .. }
        | CacheError::Disk { .. }
        | CacheError::Denied { .. }
        | CacheError::Credentials(_) => Severity::Error,
        _ => Severity::Failure,
    }
}

/// Whether retrying a fault may help: a transient one (the cache or the
/// repository unreachable, credentials the host must fix) is retried with
/// backoff and reported only once it persists ([`fault_persists`]); a
/// permanent one ends the release at once, with its severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Transient,
    Permanent(Severity),
}

/// How a closure the preflight could not check is handled.
pub fn cache_fault(e: &CacheError) -> Fault {
    match e {
        // Fixed on the host or the cache, never by a new release: retried.
        CacheError::Unreachable { .. } | CacheError::Denied { .. } | CacheError::Credentials(_) => {
            Fault::Transient
        }
        _ => Fault::Permanent(cache_severity(e)),
    }
}

/// The default of `report.error_after`: how long a transient fault may keep
/// a release from progressing before the release shows an `error` status.
/// Long enough that a cache or forge restarting, a deploy of the cache
/// itself or a short network partition (the backoff retries at 5 s, 10 s, …
/// up to the poll interval) passes unreported; short enough that whoever
/// watches a rollout learns within a quarter of an hour that it is stuck,
/// and why, rather than watching `pending` for ever.
pub const DEFAULT_ERROR_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Whether a transient fault first met at `since` has persisted long enough
/// (`error_after`) at `now` to be reported as an `error` status. Until then
/// the release keeps the status it had; after, the one `error` status
/// ([`fault_description`]) stays until the fault clears.
pub fn fault_persists(
    since: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    error_after: std::time::Duration,
) -> bool {
    let after = chrono::Duration::from_std(error_after).unwrap_or(chrono::Duration::MAX);
    since.checked_add_signed(after).is_some_and(|at| now >= at)
}

/// The description of a persisting fault: what is wrong (the summary, which
/// starts with `error:`), then since when. Stable across polls, so it is
/// posted once (`is_news`).
pub fn fault_description(summary: &str, since: chrono::DateTime<chrono::Utc>) -> String {
    format!("{summary}; retrying since {}", since.format("%Y-%m-%d %H:%M UTC"))
}

/// The commit status an ended deploy is reported with.
pub fn outcome_status(kind: OutcomeKind) -> StatusState {
    match kind {
        OutcomeKind::Success | OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed => {
            StatusState::Success
        }
        OutcomeKind::Refused | OutcomeKind::Failed => StatusState::Failure,
        OutcomeKind::Error => StatusState::Error,
    }
}

/// How a deploy ends: the outcome and its plain words (for the state file,
/// the journal and the commit status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    pub kind: OutcomeKind,
    pub description: String,
}

impl Conclusion {
    fn new(kind: OutcomeKind, description: String) -> Self {
        Self { kind, description }
    }
}

/// The description of a host running a release (deployed or already there).
pub fn runs_release(host: &HostName, serial: u64) -> String {
    format!("{host} runs release {serial}")
}

/// How many (commit, context) pairs [`remember_status`] keeps: a release
/// reports on two commits (itself and its source), so this covers the
/// release being worked on and the one before, whatever the order.
pub const RECENT_STATUSES: usize = 4;

/// Whether `status` is worth posting: it is not, when the last status
/// recorded for its commit and context (in `recent`) is identical (same
/// state and description). A retried release (a cache answering 503 for a
/// day) then says `pending` once, not once per poll — the forge keeps only
/// so many statuses per commit and context — while anything new about it
/// (another description, the final state) is posted.
pub fn is_news(recent: &[CommitStatus], status: &CommitStatus) -> bool {
    recent
        .iter()
        .rev()
        .find(|r| r.commit == status.commit && r.context == status.context)
        != Some(status)
}

/// `recent` after `status` was recorded: it replaces the last status of its
/// commit and context, and only the newest [`RECENT_STATUSES`] pairs are
/// kept, oldest first.
pub fn remember_status(recent: &mut Vec<CommitStatus>, status: CommitStatus) {
    recent.retain(|r| !(r.commit == status.commit && r.context == status.context));
    recent.push(status);
    let excess = recent.len().saturating_sub(RECENT_STATUSES);
    recent.drain(..excess);
}

/// Everything known once the switch ended and health was checked.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    pub host: &'a HostName,
    pub serial: u64,
    pub action: Action,
    pub switch: SwitchResult,
    /// What the health check found (empty when it did not run, see
    /// [`checks_health`]).
    pub health: &'a Health,
    /// Whether the new system's kernel, initrd or modules differ from the
    /// booted system's (only asked for `switch`).
    pub kernel_changed: bool,
    pub rollback_enabled: bool,
    /// The system running before the deploy.
    pub previous: Option<&'a StorePath>,
}

/// What to do once the switch ended and health was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCheck {
    /// Roll back to `to` because of `problem`.
    RollBack { to: StorePath, problem: String },
    /// The deploy ends here.
    Conclude(Conclusion),
}

/// Decides what a finished switch and its health check mean.
pub fn after_check(c: &Checked<'_>) -> AfterCheck {
    let problem = if c.switch.activated() {
        c.health.summary()
    } else {
        c.switch.describe()
    };
    if needs_rollback(c.action, c.switch, c.health.is_healthy(), c.rollback_enabled) {
        return match c.previous {
            Some(previous) => AfterCheck::RollBack {
                to: previous.clone(),
                problem,
            },
            None => AfterCheck::Conclude(Conclusion::new(
                OutcomeKind::Failed,
                format!("{problem}; no previous system to roll back to"),
            )),
        };
    }
    if !c.switch.activated() || !c.health.is_healthy() {
        return AfterCheck::Conclude(Conclusion::new(
            OutcomeKind::Failed,
            format!("{problem}; rollback disabled"),
        ));
    }
    let reboot = c.switch == SwitchResult::RebootRequired || (c.action == Action::Switch && c.kernel_changed);
    AfterCheck::Conclude(match (c.action, reboot) {
        (Action::Boot, _) | (_, true) => reboot_required(c.host, c.serial, c.action),
        (_, false) => Conclusion::new(OutcomeKind::Success, runs_release(c.host, c.serial)),
    })
}

/// How a deploy that needs a reboot ends without one: `boot` installed
/// (active after a reboot), else running and needing a reboot.
pub fn reboot_required(host: &HostName, serial: u64, action: Action) -> Conclusion {
    match action {
        Action::Boot => Conclusion::new(
            OutcomeKind::Installed,
            format!("release {serial} installed; active after reboot"),
        ),
        _ => Conclusion::new(
            OutcomeKind::SuccessRebootRequired,
            format!("{}; reboot required", runs_release(host, serial)),
        ),
    }
}

/// Whether an ending is one a reboot policy reboots for.
pub fn needs_reboot(kind: OutcomeKind) -> bool {
    matches!(kind, OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed)
}

/// The pending status of a release waiting for its reboot at `at` (the
/// host's wall clock).
pub fn reboot_scheduled(serial: u64, at: &str) -> String {
    format!("release {serial} installed; reboot at {at} (maintenance window)")
}

/// The pending status right before the reboot is requested.
pub fn rebooting_into(serial: u64) -> String {
    format!("rebooting into release {serial}")
}

/// The pending status of a release held back until the deploy window
/// opens at `until` (the host's wall clock).
pub fn waits_for_window(serial: u64, until: &str) -> String {
    format!("release {serial} waits for the deploy window (opens {until})")
}

/// How a deploy ends once the host rebooted into release `serial`, whose
/// system is `toplevel`, and `booted` is what booted: its system is a
/// success; anything else (the boot loader fell back, someone picked
/// another generation) a failure naming it.
pub fn after_reboot(
    host: &HostName,
    serial: u64,
    toplevel: &StorePath,
    booted: Option<&StorePath>,
) -> Conclusion {
    match booted {
        Some(b) if b == toplevel => Conclusion::new(
            OutcomeKind::Success,
            format!("{} (rebooted)", runs_release(host, serial)),
        ),
        Some(b) => Conclusion::new(
            OutcomeKind::Failed,
            format!("release {serial} did not boot (boot loader fallback, or another generation chosen): booted {b}"),
        ),
        None => Conclusion::new(
            OutcomeKind::Failed,
            format!("rebooted, but /run/booted-system names no system; release {serial} is not confirmed"),
        ),
    }
}

/// How a deploy ends once the rollback to `to` (because of `problem`) ended
/// with `result`: failed either way, in words that say whether the previous
/// system is back.
pub fn after_rollback(problem: &str, to: &StorePath, result: SwitchResult) -> Conclusion {
    let description = if result.activated() {
        format!("{problem}; rolled back to {}", to.name())
    } else {
        format!("{problem}; rollback failed too: {}", result.describe())
    };
    Conclusion::new(OutcomeKind::Failed, description)
}

/// The action that puts the previous system back.
pub fn rollback_action(action: Action) -> Action {
    match action {
        Action::Test => Action::Test,
        _ => Action::Switch,
    }
}

#[cfg(test)]
mod tests {

    fn status(commit: char, state: StatusState, context: &str, description: &str) -> CommitStatus {
        let commit: CommitId = commit.to_string().repeat(40).parse().unwrap();
        CommitStatus::new(commit, state, context, description)
    }

    #[test]
    fn only_a_status_unlike_the_last_of_its_commit_and_context_is_news() {
        let deploying = status(
            '1',
            StatusState::Pending,
            "ferry/web1",
            "deploying release 1 to web1",
        );
        let mut recent = Vec::new();
        assert!(is_news(&recent, &deploying), "nothing said yet");
        remember_status(&mut recent, deploying.clone());
        assert!(!is_news(&recent, &deploying), "the same again");
        // Any difference is news: description, state, commit or context.
        let differs = [
            status(
                '1',
                StatusState::Pending,
                "ferry/web1",
                "release 1: waiting for the closure",
            ),
            status(
                '1',
                StatusState::Success,
                "ferry/web1",
                "deploying release 1 to web1",
            ),
            status(
                '2',
                StatusState::Pending,
                "ferry/web1",
                "deploying release 1 to web1",
            ),
            status(
                '1',
                StatusState::Pending,
                "ferry/web2",
                "deploying release 1 to web1",
            ),
        ];
        for other in &differs {
            assert!(is_news(&recent, other), "{other:?}");
        }
        // Only the last status of a commit and context counts: saying the
        // first thing again after another is news.
        remember_status(&mut recent, differs[0].clone());
        assert!(is_news(&recent, &deploying));
        assert!(!is_news(&recent, &differs[0]));
        assert_eq!(recent, [differs[0].clone()], "one per commit and context");
    }

    #[test]
    fn the_memory_of_statuses_is_bounded_and_keeps_the_newest() {
        let mut recent = Vec::new();
        let all: Vec<_> = ['1', '2', '3', '4', '5', '6']
            .into_iter()
            .map(|c| status(c, StatusState::Pending, "ferry/web1", "deploying"))
            .collect();
        for s in &all {
            remember_status(&mut recent, s.clone());
        }
        assert_eq!(recent, all[all.len() - RECENT_STATUSES..]);
        assert!(is_news(&recent, &all[0]), "forgotten");
        assert!(!is_news(&recent, &all[5]));
        // Recording an old pair again moves it to the newest end.
        remember_status(&mut recent, all[2].clone());
        assert_eq!(recent.last(), Some(&all[2]));
        assert_eq!(recent.len(), RECENT_STATUSES);
    }

    #[test]
    fn a_transient_fault_is_reported_once_it_persists_past_the_threshold() {
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let since = at("2026-11-22T10:00:00Z");
        let after = std::time::Duration::from_secs(15 * 60);
        assert!(!fault_persists(since, since, after));
        assert!(!fault_persists(since, at("2026-11-22T10:14:59Z"), after));
        assert!(fault_persists(since, at("2026-11-22T10:15:00Z"), after));
        assert!(fault_persists(since, at("2026-11-23T10:00:00Z"), after));
        // A clock set back never reports early; an absurd threshold never.
        assert!(!fault_persists(since, at("2026-11-22T09:00:00Z"), after));
        assert!(!fault_persists(
            since,
            at("2030-01-01T00:00:00Z"),
            std::time::Duration::MAX
        ));
        assert!(fault_persists(since, since, std::time::Duration::ZERO));
        let d = fault_description("error: binary cache unreachable", since);
        assert_eq!(
            d,
            "error: binary cache unreachable; retrying since 2026-11-22 10:00 UTC"
        );
        assert!(d.chars().count() <= crate::report::MAX_DESCRIPTION_CHARS);
    }

    #[test]
    fn cache_faults_are_transient_only_when_a_retry_may_help() {
        let unreachable = CacheError::Unreachable {
            url: "u".into(),
            detail: "HTTP 503".into(),
        };
        let denied = CacheError::Denied {
            url: "u".into(),
            status: 403,
            advice: "a".into(),
        };
        assert_eq!(cache_fault(&unreachable), Fault::Transient);
        assert_eq!(cache_fault(&denied), Fault::Transient);
        let oversized = CacheError::Narinfo {
            url: "u".into(),
            source: crate::narinfo::NarInfoError::TooLarge,
        };
        assert_eq!(cache_fault(&oversized), Fault::Permanent(Severity::Failure));
        assert_eq!(
            cache_fault(&CacheError::TooLarge),
            Fault::Permanent(Severity::Failure)
        );
        let disk = CacheError::Disk {
            store: "/nix/store".into(),
            detail: "d".into(),
        };
        assert_eq!(cache_fault(&disk), Fault::Permanent(Severity::Error));
    }

    #[test]
    fn a_missing_closure_is_waited_for_only_shortly_after_the_release() {
        let created: chrono::DateTime<chrono::Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let seen = at("2026-11-22T10:00:10Z");
        assert!(may_still_be_uploading(created, seen, at("2026-11-22T10:00:30Z")));
        assert!(may_still_be_uploading(created, seen, at("2026-11-22T10:59:59Z")));
        assert!(!may_still_be_uploading(created, seen, at("2026-11-22T11:00:00Z")));
        // A release dated in the future (clock skew) is waited for an hour
        // from when this host first saw its closure missing, no longer.
        let future: chrono::DateTime<chrono::Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(may_still_be_uploading(future, seen, at("2026-11-22T10:30:00Z")));
        assert!(!may_still_be_uploading(future, seen, at("2026-11-22T11:00:10Z")));
    }

    use super::*;
    use chrono::Utc;
    use ferry_signer::{Release, Signer};
    use std::collections::BTreeMap;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn path(c: char) -> StorePath {
        format!("/nix/store/{}-nixos-system-web1", c.to_string().repeat(32))
            .parse()
            .unwrap()
    }

    fn release(commit: &str, serial: u64, hosts: &[(&str, StorePath)]) -> VerifiedRelease {
        VerifiedRelease {
            commit: commit.parse().unwrap(),
            signer: Signer {
                principal: "ci".into(),
                fingerprint: "SHA256:x".into(),
                key_type: "ssh-ed25519".into(),
            },
            committed_at: Utc::now(),
            release: Release {
                serial,
                created: Utc::now(),
                expires: None,
                source: None,
                hosts: hosts
                    .iter()
                    .map(|(h, p)| {
                        (
                            h.parse().unwrap(),
                            HostEntry {
                                toplevel: p.clone(),
                                action: Action::Switch,
                            },
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            },
        }
    }

    fn host() -> HostName {
        "web1".parse().unwrap()
    }

    fn anchor(commit: &str, serial: u64) -> Anchor {
        Anchor {
            commit: commit.parse().unwrap(),
            serial,
        }
    }

    #[test]
    fn first_release_deploys() {
        let r = release(B, 1, &[("web1", path('b'))]);
        assert!(
            matches!(judge(&r, &host(), None, false, Some(&path('a'))), Verdict::Deploy(e) if e.toplevel == path('b'))
        );
    }

    #[test]
    fn running_system_means_nothing_to_do() {
        let r = release(B, 2, &[("web1", path('b'))]);
        let v = judge(&r, &host(), Some(&anchor(A, 1)), true, Some(&path('b')));
        assert!(matches!(v, Verdict::AlreadyRunning(_)));
    }

    #[test]
    fn rewind_is_refused_even_with_a_higher_serial() {
        let r = release(B, 9, &[("web1", path('b'))]);
        let v = judge(&r, &host(), Some(&anchor(A, 1)), false, None);
        assert!(matches!(v, Verdict::Refuse(Refusal::Rewound { .. })), "{v:?}");
    }

    #[test]
    fn serial_must_increase() {
        let r = release(B, 3, &[("web1", path('b'))]);
        for anchor_serial in [3, 4] {
            let v = judge(&r, &host(), Some(&anchor(A, anchor_serial)), true, None);
            assert!(
                matches!(v, Verdict::Refuse(Refusal::SerialNotIncreasing { .. })),
                "{v:?}"
            );
        }
    }

    #[test]
    fn the_anchor_itself_is_not_a_rollback() {
        // After a restart mid-deploy the anchor is the tip: resume, don't refuse.
        let r = release(A, 5, &[("web1", path('b'))]);
        assert!(matches!(
            judge(&r, &host(), Some(&anchor(A, 5)), true, None),
            Verdict::Deploy(_)
        ));
    }

    #[test]
    fn another_hosts_entry_is_never_used() {
        let r = release(B, 2, &[("db1", path('b'))]);
        let v = judge(&r, &host(), None, false, None);
        assert!(matches!(v, Verdict::Refuse(Refusal::NoEntry { .. })));
        if let Verdict::Refuse(refusal) = v {
            assert_eq!(refusal.summary(), "refused: release has no entry for web1");
        }
    }

    #[test]
    fn switch_results_encode_round_trip() {
        use SwitchResult::*;
        for r in [
            Ok,
            RebootRequired,
            Failed { code: 4 },
            Aborted { timed_out: true },
            Aborted { timed_out: false },
        ] {
            assert_eq!(SwitchResult::decode(&r.encode()), Some(r));
        }
        assert_eq!(SwitchResult::decode("nonsense"), None);
    }

    #[test]
    fn rollback_rules() {
        use SwitchResult::*;
        assert!(!needs_rollback(Action::Switch, Ok, true, true));
        assert!(!needs_rollback(Action::Switch, RebootRequired, true, true));
        assert!(needs_rollback(Action::Switch, Failed { code: 4 }, true, true));
        assert!(needs_rollback(
            Action::Switch,
            Aborted { timed_out: true },
            true,
            true
        ));
        assert!(needs_rollback(Action::Switch, Ok, false, true));
        assert!(needs_rollback(Action::Test, Ok, false, true));
        assert!(!needs_rollback(Action::Boot, Ok, false, true));
        assert!(!needs_rollback(Action::Switch, Failed { code: 1 }, false, false));
    }

    fn checked<'a>(
        host: &'a HostName,
        switch: SwitchResult,
        health: &'a Health,
        previous: Option<&'a StorePath>,
    ) -> Checked<'a> {
        Checked {
            host,
            serial: 4,
            action: Action::Switch,
            switch,
            health,
            kernel_changed: false,
            rollback_enabled: true,
            previous,
        }
    }

    fn concluded(a: AfterCheck) -> (OutcomeKind, String) {
        match a {
            AfterCheck::Conclude(c) => (c.kind, c.description),
            other => panic!("expected an ending, got {other:?}"),
        }
    }

    #[test]
    fn what_a_finished_switch_means() {
        let web1 = host();
        let checked = |switch, health, previous| checked(&web1, switch, health, previous);
        let healthy = Health::default();
        let sick = Health {
            failed_units: vec!["nginx.service".into()],
            failed_commands: vec![],
        };
        let prev = path('a');
        let ok = checked(SwitchResult::Ok, &healthy, Some(&prev));
        assert_eq!(
            concluded(after_check(&ok)),
            (OutcomeKind::Success, "web1 runs release 4".into())
        );
        let exit100 = checked(SwitchResult::RebootRequired, &healthy, Some(&prev));
        assert_eq!(
            concluded(after_check(&exit100)),
            (
                OutcomeKind::SuccessRebootRequired,
                "web1 runs release 4; reboot required".into()
            )
        );
        let new_kernel = Checked {
            kernel_changed: true,
            ..ok
        };
        assert_eq!(
            concluded(after_check(&new_kernel)).0,
            OutcomeKind::SuccessRebootRequired
        );
        // `test` never needs a reboot for a kernel: nothing is installed.
        let test = Checked {
            action: Action::Test,
            ..new_kernel
        };
        assert_eq!(concluded(after_check(&test)).0, OutcomeKind::Success);
        let boot = Checked {
            action: Action::Boot,
            ..ok
        };
        assert_eq!(
            concluded(after_check(&boot)),
            (
                OutcomeKind::Installed,
                "release 4 installed; active after reboot".into()
            )
        );
        assert_eq!(
            after_check(&checked(SwitchResult::Ok, &sick, Some(&prev))),
            AfterCheck::RollBack {
                to: prev.clone(),
                problem: "failed units: nginx.service".into()
            }
        );
        assert_eq!(
            after_check(&checked(SwitchResult::Failed { code: 4 }, &healthy, Some(&prev))),
            AfterCheck::RollBack {
                to: prev.clone(),
                problem: "switch-to-configuration failed (exit 4)".into()
            }
        );
        assert_eq!(
            concluded(after_check(&checked(SwitchResult::Ok, &sick, None))),
            (
                OutcomeKind::Failed,
                "failed units: nginx.service; no previous system to roll back to".into()
            )
        );
        let no_rollback = Checked {
            rollback_enabled: false,
            ..checked(SwitchResult::Aborted { timed_out: true }, &healthy, Some(&prev))
        };
        assert_eq!(
            concluded(after_check(&no_rollback)),
            (
                OutcomeKind::Failed,
                "switch-to-configuration timed out and was stopped; rollback disabled".into()
            )
        );
    }

    #[test]
    fn what_a_rollback_means() {
        let to = path('a');
        let back = after_rollback("failed units: x.service", &to, SwitchResult::Ok);
        assert_eq!(back.kind, OutcomeKind::Failed);
        assert_eq!(
            back.description,
            format!("failed units: x.service; rolled back to {}", to.name())
        );
        let stuck = after_rollback("p", &to, SwitchResult::Failed { code: 1 });
        assert_eq!(
            stuck.description,
            "p; rollback failed too: switch-to-configuration failed (exit 1)"
        );
        assert_eq!(rollback_action(Action::Test), Action::Test);
        assert_eq!(rollback_action(Action::Boot), Action::Switch);
    }

    /// The severity agrees with the words the forge shows: `error: …` is an
    /// error, `refused: …` and `stale: …` a failure.
    #[test]
    fn severity_matches_the_status_words() {
        let word = |s: Severity| match s {
            Severity::Error => "error:",
            Severity::Failure => "",
        };
        let verify_errors = [
            VerifyError::Unsigned {
                commit: git2::Oid::ZERO_SHA1,
            },
            VerifyError::Expired {
                commit: git2::Oid::ZERO_SHA1,
                serial: 3,
                expires: Utc::now(),
            },
            VerifyError::Git(GitError::NoReleaseFile {
                commit: git2::Oid::ZERO_SHA1,
            }),
            VerifyError::Git(GitError::Git(git2::Error::from_str("broken"))),
        ];
        for e in &verify_errors {
            let severity = verify_severity(e);
            assert_eq!(
                e.summary().starts_with("error:"),
                severity == Severity::Error,
                "{e}"
            );
            assert!(e.summary().starts_with(word(severity)), "{e}");
        }
        let cache_errors = [
            CacheError::NotFound {
                path: "/nix/store/x".into(),
                caches: "c".into(),
            },
            CacheError::TooLarge,
            CacheError::Unreachable {
                url: "u".into(),
                detail: "d".into(),
            },
            CacheError::Disk {
                store: "/nix/store".into(),
                detail: "d".into(),
            },
            CacheError::DiskFull {
                store: "/nix/store".into(),
                need: 1,
                available: 0,
            },
        ];
        for e in &cache_errors {
            let severity = cache_severity(e);
            assert_eq!(
                e.summary().starts_with("error:"),
                severity == Severity::Error,
                "{e}"
            );
        }
        assert_eq!(Severity::Error.status(), StatusState::Error);
        assert_eq!(Severity::Failure.status(), StatusState::Failure);
        assert_eq!(outcome_status(OutcomeKind::Installed), StatusState::Success);
        assert_eq!(outcome_status(OutcomeKind::Failed), StatusState::Failure);
        assert_eq!(outcome_status(OutcomeKind::Error), StatusState::Error);
    }
}
