//! One reconcile: the pipeline of docs/architecture.md as a typed state
//! machine, and the only place the order of a deploy's effects is decided.
//!
//! A new branch tip goes fetch → verify → judge → the gate → preflight
//! (`intake`); once accepted it becomes a deploy in flight whose [`Phase`]
//! (realising → switching → checking → rolling back, or awaiting the reboot
//! → rebooting) is recorded durably before its step is taken (`flight`), so
//! an agent killed at any instant resumes where it was and never starts a
//! second switch for the same release. Each phase has one handler, which
//! takes that phase's step and names the next phase (checked against
//! `state::TRANSITIONS`), a wait, or the end; what an ending means is decided
//! in `policy::ending`, and `record` is the one place an ending is logged,
//! saved and reported. Before each effectful step the gate
//! (`policy::gate`) is asked: approvals, the deploy window, the reboot's
//! moment and window, running units. A transient fault
//! ([`ReconcileError`]) fails the reconcile (the caller retries with
//! backoff); its start is remembered per release, and once it has lasted
//! `report.error_after` the release shows one `error` status until a
//! reconcile gets through. The world is reached only through [`ports`], and
//! every "now" and the host's time zone come from its clock.

mod flight;
mod intake;
pub mod ports;
mod record;

use chrono::{DateTime, Utc};
use ferry_signer::approvals::{self, Tally};
use ferry_signer::{Action, AllowedSigners, CommitId, HostEntry, StorePath, VerifiedRelease, VerifiedTip};
use tracing::{error, info, warn, Instrument, Span};

use crate::config::Config;
use crate::io::cache::client::CacheError;
use crate::io::forge::{CommitStatus, StatusState};
use crate::io::nix::StoreError;
use crate::io::systemd::bus::SystemdError;
use crate::io::systemd::health::Health;
use crate::io::systemd::switch::{Observed, SwitchResult};
use crate::metrics::{Metrics, Systems};
use crate::policy::ending::{self, AfterCheck, Checked, Ending};
use crate::policy::faults::{self, Fault, ReconcileError, Severity};
use crate::policy::gate::{self, Answer, Facts, Hold, Holds, Step};
use crate::policy::judge::{self, Verdict};
use crate::policy::window::{self, RebootPolicy};
use crate::policy::{clock, dedup, reporting, wording};
use crate::reconcile::ports::{Activation, Ports, PreflightError};
use crate::state::{
    self, Anchor, BootId, InFlight, Outcome, OutcomeKind, Phase, ReceiptNote, State, StateDir, Target, Unsent,
};

/// A reconcile's result: `Err` is a transient fault, retried.
type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// The tip has not moved since the last reconcile: nothing fetched or verified.
    UpToDate,
    /// The host already runs its entry of the newest release.
    AlreadyRunning,
    /// Deployed (`reboot_required` when the kernel or initrd changed).
    Deployed { reboot_required: bool },
    /// The closure of release `serial` is not in the binary cache yet (CI may
    /// still be uploading it): nothing was recorded, the next poll tries
    /// again until `until`.
    WaitingForClosure { serial: u64, until: DateTime<Utc> },
    /// Release `serial` is held back outside the deploy window, until it
    /// opens at `until`: nothing was recorded but its pending status.
    WaitingForWindow { serial: u64, until: DateTime<Utc> },
    /// Release `serial` is installed and reboots `at` (maintenance window).
    RebootScheduled { serial: u64, at: DateTime<Utc> },
    /// A reboot into release `serial` was requested.
    Rebooting { serial: u64 },
    /// Release `serial` needs more approvals before this host deploys it
    /// (the two-person rule): nothing on the host changed; `approved` are
    /// the principals that count so far, out of `required`.
    AwaitingApproval {
        serial: u64,
        approved: Vec<String>,
        required: usize,
    },
    /// A step of release `serial` in flight is held back by the gate for
    /// `hold`: it is taken at a later reconcile.
    Held { serial: u64, hold: Hold },
    /// Refused before anything changed; the reason.
    Refused(String),
    /// The switch or health failed; the reason (rolled back if enabled).
    Failed(String),
    /// A fault outside the release (store, systemd); the reason.
    Error(String),
}

impl Pass {
    /// Whether the release waits for something (an upload, a window, a
    /// reboot, approvals, a hold): `status` shows what.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            Pass::WaitingForClosure { .. }
                | Pass::WaitingForWindow { .. }
                | Pass::RebootScheduled { .. }
                | Pass::Rebooting { .. }
                | Pass::AwaitingApproval { .. }
                | Pass::Held { .. }
        )
    }

    /// Whether `ferry-agent once` should exit 0.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Pass::UpToDate
                | Pass::AlreadyRunning
                | Pass::Deployed { .. }
                | Pass::WaitingForWindow { .. }
                | Pass::RebootScheduled { .. }
                | Pass::Rebooting { .. }
                | Pass::AwaitingApproval { .. }
                | Pass::Held { .. }
        )
    }
}

impl std::fmt::Display for Pass {
    /// What `ferry-agent once` prints, and `status` shows of a pass that waits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: String = match self {
            Pass::UpToDate => "up to date".into(),
            Pass::AlreadyRunning => "already running the release".into(),
            Pass::Deployed {
                reboot_required: false,
            } => "deployed".into(),
            Pass::Deployed {
                reboot_required: true,
            } => "deployed; reboot required".into(),
            Pass::WaitingForClosure { serial, until } => {
                format!("waiting: release {serial}: the closure is not in the binary cache yet; retrying until {until}")
            }
            Pass::WaitingForWindow { serial, until } => {
                format!("waiting: release {serial} waits for the deploy window, which opens at {until}")
            }
            Pass::RebootScheduled { serial, at } => {
                format!("release {serial} installed; rebooting into it at {at} (maintenance window)")
            }
            Pass::Rebooting { serial } => format!("rebooting into release {serial}"),
            Pass::AwaitingApproval {
                serial,
                approved,
                required,
            } => {
                let mut s = format!(
                    "awaiting approval: release {serial}: {} of {required}",
                    approved.len()
                );
                if !approved.is_empty() {
                    s.push_str(&format!(" ({})", approved.join(", ")));
                }
                s
            }
            Pass::Held { serial, hold } => format!("waiting: release {serial} is held back: {hold}"),
            Pass::Refused(why) => format!("refused: {why}"),
            Pass::Failed(why) => format!("failed: {why}"),
            Pass::Error(why) => format!("error: {why}"),
        };
        f.write_str(&text)
    }
}

/// Everything one reconcile needs: the configuration, the durable state and
/// the ports to the outside.
pub struct Agent {
    pub config: Config,
    pub state: StateDir,
    pub ports: Ports,
    signers: AllowedSigners,
    /// Prometheus metrics, updated after every reconcile.
    pub metrics: Metrics,
    /// The source commit of the release being worked on, once verified:
    /// where a persisting fault is reported too.
    release_source: Option<CommitId>,
    /// The approvers' keys, when `approvals.allowed_signers` names a file of
    /// their own (else `signers`).
    approver_signers: Option<AllowedSigners>,
    /// The last tip verified and when its release expires: an unchanged tip
    /// is judged again once that time has passed (a frozen branch or mirror
    /// withholding newer releases).
    tip_expiry: Option<(CommitId, Option<DateTime<Utc>>)>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host", &self.config.host)
            .finish_non_exhaustive()
    }
}

/// What a phase leads to.
#[derive(Debug)]
enum Next {
    /// Record this phase, take its first step, and go on.
    Phase(Phase),
    /// The deploy ends.
    End(Ending),
    /// The deploy stays in flight at its phase, which the next reconcile
    /// resumes; this one ends with the given result.
    Wait(Pass),
}

/// A refusal to record: where it happened, of what, and why.
#[derive(Debug)]
struct Refused {
    phase: &'static str,
    /// The branch tip, remembered as seen.
    seen: CommitId,
    /// The commit refused (the release below approvals; the tip itself when
    /// it did not verify), reported on.
    release: CommitId,
    serial: Option<u64>,
    /// Where else to report (the release's source commit), when trustworthy.
    source: Option<CommitId>,
    severity: Severity,
    /// Plain words for the commit status.
    summary: String,
    /// The full reason, for the journal and `once`.
    detail: String,
    /// Judged again at the next poll: the tip is not remembered as seen
    /// (a release expired by a clock that may be wrong).
    again: bool,
    /// The release does not name this host: with receipts, not this host's
    /// to report (`reporting::not_named`).
    not_named: bool,
}

/// How a reconcile ends, as [`Agent::record`] records, saves and reports it.
#[derive(Debug)]
struct Record {
    /// The branch tip, remembered as seen (the release, or an approval of
    /// it); `None` when it is to be judged again at the next poll.
    seen: Option<CommitId>,
    outcome: Outcome,
    /// Where else to report (the release's source commit).
    source: Option<CommitId>,
    status: StatusState,
    /// The anchor moves to the outcome's release (already running).
    anchor: bool,
    /// The release does not name this host (see [`Refused::not_named`]).
    not_named: bool,
    /// `FERRY_PHASE` and `FERRY_OUTCOME` of the journal line, and its text.
    phase: &'static str,
    label: &'static str,
    message: String,
    result: Pass,
}

/// How a switch or rollback unit was seen through.
#[derive(Debug)]
enum Seen {
    /// It ended so.
    Ended(SwitchResult),
    /// The gate held its start back: the reconcile ends with this wait.
    Held(Pass),
}

/// What a reconcile that the gate holds back at an in-flight step returns.
fn held_pass(serial: u64, hold: Hold, until: Option<DateTime<Utc>>) -> Pass {
    match (hold, until) {
        (Hold::DeployWindow, Some(until)) => Pass::WaitingForWindow { serial, until },
        (hold, _) => Pass::Held { serial, hold },
    }
}

/// The span every event of one deploy is logged in: it carries the
/// `FERRY_COMMIT`, `FERRY_SERIAL` and `FERRY_TOPLEVEL` journal fields (the
/// latter two once known).
fn deploy_span(commit: &CommitId) -> Span {
    tracing::info_span!(
        "deploy",
        ferry_commit = %commit,
        ferry_serial = tracing::field::Empty,
        ferry_toplevel = tracing::field::Empty,
    )
}

fn target_span(target: &Target) -> Span {
    let span = deploy_span(&target.commit);
    span.record("ferry_serial", target.serial);
    span.record("ferry_toplevel", tracing::field::display(&target.toplevel));
    span
}

impl Agent {
    /// An agent reaching the outside through `ports` (fakes, in tests).
    pub fn with_ports(config: Config, signers: AllowedSigners, ports: Ports) -> Result<Self> {
        Ok(Self {
            state: StateDir::open(&config.state_dir)?,
            metrics: Metrics::new(config.metrics.clone()).with_receipts(config.report.receipts.is_some()),
            config,
            ports,
            signers,
            release_source: None,
            tip_expiry: None,
            approver_signers: None,
        })
    }

    /// Sets the approvers' allowed signers, when `approvals.allowed_signers`
    /// names a file of their own.
    pub fn with_approver_signers(mut self, signers: Option<AllowedSigners>) -> Self {
        self.approver_signers = signers;
        self
    }

    /// Replaces the allowed signers (after the file changed).
    pub fn set_signers(&mut self, signers: AllowedSigners) {
        self.signers = signers;
    }

    /// Asks the gate whether `step` may be taken now (see [`gate`]), with
    /// this host's holds, the clock's time and zone, and the facts given.
    fn gate(
        &self,
        step: Step,
        approvals: Option<&Tally>,
        reboot_at: Option<DateTime<Utc>>,
        running_units: Option<&[String]>,
    ) -> Answer {
        let holds = Holds {
            host: &self.config.host,
            deploy_window: self.config.deploy_window.as_ref(),
            reboot: &self.config.reboot,
        };
        let zone = self.ports.clock.zone();
        let facts = Facts {
            step,
            now: self.ports.clock.now(),
            zone: &zone,
            approvals,
            reboot_at,
            running_units,
        };
        gate::ask(&holds, &facts)
    }

    /// Replaces the approvers' allowed signers (after `approvals.allowed_signers` changed).
    pub fn set_approver_signers(&mut self, signers: AllowedSigners) {
        self.approver_signers = Some(signers);
    }

    /// Runs one reconcile. `Err` means a transient problem (network, bus, a
    /// full disk): nothing was recorded and the caller retries later.
    /// Waiting statuses are queued and delivered before and after, whatever
    /// happened.
    pub async fn reconcile(&mut self) -> Result<Pass> {
        self.deliver().await;
        let result = self.reconcile_inner().await;
        self.deliver().await;
        self.update_metrics(result.is_ok());
        result
    }

    /// Brings the metrics (when configured) up to date with the state;
    /// `polled`: a poll just completed without a transient failure.
    pub fn update_metrics(&mut self, polled: bool) {
        let systems = Systems {
            running: self.ports.store.running_system(),
            profile: self.ports.store.profile_system(),
        };
        self.metrics
            .update(&self.state, systems, polled, self.ports.clock.now());
    }

    /// Whether `tip`, unchanged since it was accepted, has expired since:
    /// a branch or mirror frozen at it withholds newer releases, so it is
    /// judged again (and said to be stale) rather than taken as up to date.
    /// Its expiry is learnt by verifying it once per start.
    async fn unchanged_tip_expired(&mut self, tip: &CommitId) -> bool {
        let now = self.ports.clock.now();
        let expires = match &self.tip_expiry {
            Some((known, expires)) if known == tip => *expires,
            _ => {
                let approver_signers = self.approver_signers.as_ref().unwrap_or(&self.signers);
                let verified = self
                    .ports
                    .source
                    .verify(tip, &self.signers, approver_signers, now)
                    .await;
                let expires = match verified {
                    Ok(v) => v.release.release.expires,
                    Err(e) if matches!(*e, ferry_signer::VerifyError::Expired { .. }) => return true,
                    // Anything else is the full judgement's to say, at the
                    // next new tip: this only watches the clock.
                    Err(_) => None,
                };
                self.tip_expiry = Some((tip.clone(), expires));
                expires
            }
        };
        expires.is_some_and(|e| now >= e)
    }

    async fn reconcile_inner(&mut self) -> Result<Pass> {
        let mut state = self.state.load()?;
        let (release, span, result) = if let Some(flight) = state.in_flight.clone() {
            let span = target_span(&flight.target);
            self.release_source = flight.source.clone();
            let release = flight.target.commit.clone();
            let result = async {
                if !matches!(flight.phase, Phase::AwaitingReboot { .. }) {
                    info!(
                        ferry_phase = flight.phase.name(),
                        "resuming a deploy interrupted by a restart"
                    );
                }
                self.advance(&mut state, flight, false).await
            }
            .instrument(span.clone())
            .await;
            (release, span, result)
        } else {
            // An unreachable repository names no release to report on: the
            // journal says it, and the poll is retried.
            let tip = self.ports.source.remote_tip().await?;
            if state.last_seen_tip.as_ref() == Some(&tip) && !self.unchanged_tip_expired(&tip).await {
                return Ok(Pass::UpToDate);
            }
            let span = deploy_span(&tip);
            self.release_source = None;
            let result = self
                .new_tip(&mut state, tip.clone())
                .instrument(span.clone())
                .await;
            (tip, span, result)
        };
        match result {
            Ok(reconciled) => {
                self.fault_cleared();
                Ok(reconciled)
            }
            Err(e) => Err(span.in_scope(|| self.fault_persists(&release, e))),
        }
    }
}

#[cfg(test)]
mod tests;
