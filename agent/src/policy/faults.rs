//! What a fault means: how serious a refusal is for the forge ([`Severity`]),
//! whether retrying may help ([`Fault`]), when a transient fault has lasted
//! long enough to be reported, and how long a closure missing from the cache
//! is taken for CI still uploading it. Pure: no I/O.

use chrono::{DateTime, Utc};
use ferry_signer::git::GitError;
use ferry_signer::VerifyError;

use crate::io::cache::client::{CacheError, STORE_FULL};
use crate::io::forge::StatusState;
use crate::io::git::source::SourceError;
use crate::io::nix::StoreError;
use crate::io::systemd::bus::SystemdError;
use crate::policy::window::Windows;
use crate::state::StateError;

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
        | CacheError::Stalled { .. }
        | CacheError::Disk { .. }
        | CacheError::DiskFull { .. }
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
        // Not enough disk for the closure too: freeing space (a garbage
        // collection) cures it, and a newer release is still taken, since
        // nothing was accepted yet.
        CacheError::Unreachable { .. }
        | CacheError::Stalled { .. }
        | CacheError::Denied { .. }
        | CacheError::Credentials(_)
        | CacheError::DiskFull { .. } => Fault::Transient,
        _ => Fault::Permanent(cache_severity(e)),
    }
}

/// How a Nix command of a deploy in flight that failed is handled (the
/// realise, setting the profile). Transient, the phase kept and the step
/// taken again at the next reconcile: Nix stopped by a signal (a stop or
/// restart of the agent signals its whole cgroup: not the release's
/// fault), the store's file system full (freeing space cures it, a new
/// release does not), the binary cache failing or stalling mid-transfer
/// (the relay names it; the cache recovering cures it). Anything else Nix
/// refuses (a signature, a hash) ends the deploy in `error`.
pub fn store_fault(e: &StoreError) -> Fault {
    match e {
        StoreError::Interrupted { .. } | StoreError::NoSpace { .. } | StoreError::Cache { .. } => {
            Fault::Transient
        }
        // Walking the closure again before realising: as in the preflight.
        StoreError::Closure(e) => cache_fault(e),
        StoreError::GcRoots { .. }
        | StoreError::Spawn { .. }
        | StoreError::Failed { .. }
        | StoreError::Relay(_)
        | StoreError::Derivation(_)
        | StoreError::Timeout { .. } => Fault::Permanent(Severity::Error),
    }
}

/// Whether a health command ended by `signal` was stopped (the signals
/// `systemctl stop`, a terminal or the kernel's OOM killer send to end a
/// process: SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGTERM) rather than crashed
/// (SIGSEGV, SIGABRT, …). A stopped check is run again at the next
/// reconcile; a crashed one failed, and the release is rolled back.
pub fn stop_signal(signal: i32) -> bool {
    matches!(signal, 1 | 2 | 3 | 9 | 15)
}

/// Whether a transient fault first met at `since` has persisted long enough
/// (`error_after`) at `now` to be reported as an `error` status. Until then
/// the release keeps the status it had; after, the one `error` status
/// ([`crate::policy::wording::fault_description`]) stays until the fault clears.
pub fn fault_persists(since: DateTime<Utc>, now: DateTime<Utc>, error_after: std::time::Duration) -> bool {
    let after = chrono::Duration::from_std(error_after).unwrap_or(chrono::Duration::MAX);
    since.checked_add_signed(after).is_some_and(|at| now >= at)
}

/// Whether a transient fault is reported at once rather than after
/// `report.error_after`: credentials a cache refuses, or that cannot be
/// used, are fixed only by a person (retries go on, and pick up a fixed
/// credential file), so waiting a quarter of an hour to say so helps no one.
pub fn reported_at_once(e: &ReconcileError) -> bool {
    matches!(
        e,
        ReconcileError::Cache(CacheError::Denied { .. } | CacheError::Credentials(_))
    )
}

/// How long after a release's `created` time a closure path missing from the
/// cache is taken for CI still uploading (the release may be pushed before the
/// upload finishes): until then the agent retries instead of refusing.
pub const CACHE_UPLOAD_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Whether a closure missing from the binary cache may still be on its way
/// at `now`: until [`upload_deadline`].
pub fn may_still_be_uploading(
    created: DateTime<Utc>,
    first_seen_missing: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    now < upload_deadline(created, first_seen_missing)
}

/// When waiting for a missing closure ends: [`CACHE_UPLOAD_GRACE`] after
/// the release was created, when this host first saw the closure missing
/// within that time; else the grace after that first sighting — a `created`
/// in this host's future (a clock behind, or CI's ahead) cannot stretch the
/// wait, and one long past (a host away for a while, or its clock ahead by
/// years) cannot refuse the closure before the host has waited at all.
pub fn upload_deadline(created: DateTime<Utc>, first_seen_missing: DateTime<Utc>) -> DateTime<Utc> {
    let elapsed = first_seen_missing - created;
    if elapsed >= chrono::Duration::zero() && elapsed <= CACHE_UPLOAD_GRACE {
        created + CACHE_UPLOAD_GRACE
    } else {
        first_seen_missing + CACHE_UPLOAD_GRACE
    }
}

/// A fault that stops a reconcile before it records anything: the
/// reconcile is retried with backoff, and the fault is reported once it
/// persists ([`fault_persists`]). Matched exhaustively ([`ReconcileError::summary`]),
/// so a new kind of fault cannot go unworded.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    /// systemd could not be reached at all before a deploy was accepted.
    #[error("cannot reach systemd")]
    SystemdUnreachable(#[source] SystemdError),
    #[error("the maintenance window ({0}) does not open within a week")]
    NoWindowOpening(Windows),
    /// A step of the deploy in flight was stopped from outside (a stop or
    /// restart of the agent): its phase is kept, and it is taken again.
    #[error("{what} was interrupted ({how}); it runs again at the next reconcile")]
    Interrupted { what: String, how: String },
}

impl ReconcileError {
    /// What the fault is, in the words of a status description (which never
    /// change while the fault lasts).
    pub fn summary(&self) -> String {
        match self {
            ReconcileError::Cache(e) => e.summary(),
            ReconcileError::Source(_) => "error: the deploy repository is unreachable".into(),
            ReconcileError::Systemd(_) | ReconcileError::SystemdUnreachable(_) => {
                "error: systemd cannot be reached".into()
            }
            ReconcileError::Store(StoreError::Interrupted { .. }) | ReconcileError::Interrupted { .. } => {
                "error: the deploy was interrupted and is resumed".into()
            }
            ReconcileError::Store(StoreError::NoSpace { .. }) => STORE_FULL.into(),
            ReconcileError::Store(StoreError::Closure(e)) => e.summary(),
            ReconcileError::Store(StoreError::Cache { summary, .. }) => summary.clone(),
            ReconcileError::State(_) | ReconcileError::Store(_) | ReconcileError::NoWindowOpening(_) => {
                "error: the deploy cannot go on (see the journal)".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::forge::StatusState;
    use crate::policy::ending::outcome_status;
    use crate::policy::wording::fault_description;
    use crate::state::OutcomeKind;

    use chrono::Utc;

    #[test]
    fn a_transient_fault_is_reported_once_it_persists_past_the_threshold() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
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
        assert!(d.chars().count() <= crate::io::forge::MAX_DESCRIPTION_CHARS);
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
            source: crate::io::cache::narinfo::NarInfoError::TooLarge,
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
        let full = CacheError::DiskFull {
            store: "/nix/store".into(),
            need: 3 << 30,
            available: 1 << 30,
        };
        assert_eq!(cache_fault(&full), Fault::Transient);
        assert_eq!(
            full.summary(),
            STORE_FULL,
            "the same words while free space changes"
        );
        assert_eq!(
            ReconcileError::Store(StoreError::NoSpace {
                program: "nix-store",
                line: "No space left on device".into()
            })
            .summary(),
            STORE_FULL,
            "the same words whoever finds the store full"
        );
        // The closure walked again before realising: as in the preflight.
        assert_eq!(store_fault(&StoreError::Closure(full)), Fault::Transient);
        assert_eq!(
            store_fault(&StoreError::Closure(CacheError::TooLarge)),
            Fault::Permanent(Severity::Failure)
        );
    }

    /// Nix stopped, a full store and a cache failing mid-transfer are
    /// retried; what Nix refuses ends the deploy.
    #[test]
    fn store_faults_are_transient_only_when_a_retry_may_help() {
        let failed = || StoreError::Failed {
            program: "nix-store",
            status: "exit status: 1".into(),
            stderr: "error: hash mismatch".into(),
        };
        let stopped = StoreError::Interrupted {
            program: "nix-store",
            how: "killed by signal SIGTERM".into(),
        };
        let full = StoreError::NoSpace {
            program: "nix-store",
            line: "No space left on device".into(),
        };
        let cache = StoreError::Cache {
            nix: Box::new(failed()),
            cache: "binary cache http://c stalled sending nar/x.nar: less than 65536 bytes in 30s; cut off"
                .into(),
            summary: "error: binary cache http://c stalled mid-download".into(),
        };
        for e in [&stopped, &full, &cache] {
            assert_eq!(store_fault(e), Fault::Transient, "{e}");
        }
        assert_eq!(store_fault(&failed()), Fault::Permanent(Severity::Error));
        let timeout = StoreError::Timeout {
            program: "nix-store",
            timeout: std::time::Duration::from_secs(3600),
        };
        assert_eq!(store_fault(&timeout), Fault::Permanent(Severity::Error));
        // Each says what it is, within a status description.
        for e in [stopped, full, cache] {
            let summary = ReconcileError::Store(e).summary();
            assert!(summary.starts_with("error: "), "{summary}");
            let d = fault_description(&summary, Utc::now());
            assert!(
                d.chars().count() <= crate::io::forge::MAX_DESCRIPTION_CHARS,
                "{d}"
            );
        }
    }

    /// The signals that stop a process on request; a crash is not one.
    #[test]
    fn only_stop_signals_interrupt_a_health_check() {
        for signal in [1, 2, 3, 9, 15] {
            assert!(stop_signal(signal), "{signal}");
        }
        // SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGPIPE: the command crashed.
        for signal in [6, 7, 8, 11, 13] {
            assert!(!stop_signal(signal), "{signal}");
        }
    }

    #[test]
    fn a_missing_closure_is_waited_for_only_shortly_after_the_release() {
        let created: DateTime<Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let seen = at("2026-11-22T10:00:10Z");
        assert!(may_still_be_uploading(created, seen, at("2026-11-22T10:00:30Z")));
        assert!(may_still_be_uploading(created, seen, at("2026-11-22T10:59:59Z")));
        assert!(!may_still_be_uploading(created, seen, at("2026-11-22T11:00:00Z")));
        // A release dated in the future (clock skew) is waited for an hour
        // from when this host first saw its closure missing, no longer.
        let future: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        assert!(may_still_be_uploading(future, seen, at("2026-11-22T10:30:00Z")));
        assert!(!may_still_be_uploading(future, seen, at("2026-11-22T11:00:10Z")));
        // A release made long before this host first saw it (the host was
        // away, or its clock is years ahead): an hour from that sighting,
        // not a refusal at once.
        let ahead = at("2031-11-22T10:00:10Z");
        assert!(may_still_be_uploading(created, ahead, ahead));
        assert!(may_still_be_uploading(created, ahead, at("2031-11-22T10:59:00Z")));
        assert!(!may_still_be_uploading(
            created,
            ahead,
            at("2031-11-22T11:00:10Z")
        ));
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
