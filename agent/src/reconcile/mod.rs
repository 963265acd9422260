//! One reconcile: the pipeline of docs/architecture.md as a typed state
//! machine. A new release goes poll → fetch → verify → judge → preflight;
//! once accepted it becomes a deploy in flight whose [`Phase`] (realising →
//! switching → checking → rolling back) is recorded durably before the step
//! it names, so an agent killed at any instant resumes where it was and never
//! starts a second switch for the same release. Each phase is one method
//! returning the next phase or the end; what an ending means is decided in
//! `decide.rs`, and [`Agent::record`] is the one place an ending is recorded,
//! saved and reported. A transient fault fails the reconcile (the caller
//! retries with backoff); its start is remembered per release, and once it
//! has lasted `report.error_after` the release shows one `error` status
//! until a reconcile gets through. A release that needs a reboot, under a
//! reboot policy, stays in flight through two more phases (awaiting the
//! reboot, rebooting) until the next boot confirms what booted; a deploy
//! window holds a new release back before anything is recorded. The
//! outside world is reached only through the traits of `ports.rs`.

pub mod ports;

use anyhow::Result;
use chrono::{DateTime, Utc};
use ferry_signer::approvals::{self, Tally};
use ferry_signer::{Action, AllowedSigners, CommitId, HostEntry, StorePath, VerifiedRelease, VerifiedTip};
use tracing::{error, info, warn, Instrument, Span};

use crate::config::Config;
use crate::io::cache::client::CacheError;
use crate::io::forge::{CommitStatus, StatusState};
use crate::io::systemd::bus::SystemdError;
use crate::io::systemd::health::Health;
use crate::io::systemd::switch::{Observed, SwitchResult};
use crate::metrics::Metrics;
use crate::policy::ending::{self, AfterCheck, Checked, Conclusion};
use crate::policy::faults::{self, Severity};
use crate::policy::judge::{self, Verdict};
use crate::policy::window::{self, RebootPolicy};
use crate::policy::{dedup, wording};
use crate::reconcile::ports::{Activation, Ports, PreflightError};
use crate::state::{
    self, Anchor, BootId, InFlight, Outcome, OutcomeKind, Phase, State, StateDir, Target, Unsent,
};

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
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
    /// Refused before anything changed; the reason.
    Refused(String),
    /// The switch or health failed; the reason (rolled back if enabled).
    Failed(String),
    /// A fault outside the release (store, systemd); the reason.
    Error(String),
}

impl Reconciled {
    /// Whether `ferry-agent once` should exit 0.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Reconciled::UpToDate
                | Reconciled::AlreadyRunning
                | Reconciled::Deployed { .. }
                | Reconciled::WaitingForWindow { .. }
                | Reconciled::RebootScheduled { .. }
                | Reconciled::Rebooting { .. }
                | Reconciled::AwaitingApproval { .. }
        )
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
    End(Conclusion),
    /// The deploy stays in flight at its phase, which the next reconcile
    /// resumes; this one ends with the given result.
    Wait(Reconciled),
}

/// A refusal to record: where it happened, of what, and why.
#[derive(Debug)]
struct Refused {
    phase: &'static str,
    /// The branch tip, remembered as seen.
    seen: CommitId,
    /// The commit refused (the release below approvals), reported on.
    tip: CommitId,
    serial: Option<u64>,
    /// Where else to report (the release's source commit), when trustworthy.
    source: Option<CommitId>,
    severity: Severity,
    /// Plain words for the commit status.
    summary: String,
    /// The full reason, for the journal and `once`.
    detail: String,
}

/// How a reconcile ends, as [`Agent::record`] records, saves and reports it.
#[derive(Debug)]
struct Ending {
    /// The branch tip, remembered as seen (the release, or an approval of it).
    seen: CommitId,
    outcome: Outcome,
    /// Where else to report (the release's source commit).
    source: Option<CommitId>,
    status: StatusState,
    /// The anchor moves to the outcome's release (already running).
    anchor: bool,
    /// `FERRY_PHASE` and `FERRY_OUTCOME` of the journal line, and its text.
    phase: &'static str,
    label: &'static str,
    message: String,
    result: Reconciled,
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
            metrics: Metrics::new(config.metrics.clone()),
            config,
            ports,
            signers,
            release_source: None,
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

    /// Replaces the approvers' allowed signers (after `approvals.allowed_signers` changed).
    pub fn set_approver_signers(&mut self, signers: AllowedSigners) {
        self.approver_signers = Some(signers);
    }

    /// Records a status on the release commit and, if given, its source
    /// commit in `state` (not yet saved): the caller saves it with whatever
    /// it reports, then [`Agent::flush`] moves it to the outbox. A status
    /// identical to the last one recorded for its commit and context is not
    /// recorded again (`dedup::is_news`). Returns whether anything was.
    fn report(
        &mut self,
        state: &mut State,
        release: &CommitId,
        source: Option<&CommitId>,
        status: StatusState,
        description: &str,
    ) -> bool {
        use rand_core::RngCore;
        let context = self.config.report.context_for(&self.config.host);
        let mut recorded = false;
        for commit in std::iter::once(release).chain(source) {
            let status = CommitStatus::new(commit.clone(), status, &context, description);
            if !dedup::is_news(&state.recent_statuses, &status) {
                continue;
            }
            dedup::remember_status(&mut state.recent_statuses, status.clone());
            state.unsent.push(Unsent {
                id: rand_core::OsRng.next_u64(),
                status,
            });
            recorded = true;
        }
        recorded
    }

    /// Moves the statuses recorded in `state` (already saved) to the outbox,
    /// oldest first, then saves the state without them. One that cannot be
    /// queued (a full disk) stays recorded and is queued at the next
    /// reconcile: never dropped. Returns whether the outbox may be delivered
    /// now: not when the state still lists statuses the outbox already holds
    /// (the state could not be saved), since a delivered entry would then
    /// be queued a second time.
    fn flush(&mut self, state: &mut State) -> bool {
        let mut queued = 0;
        for unsent in &state.unsent {
            if let Err(e) = self.ports.statuses.queue(unsent.id, &unsent.status) {
                error!(
                    "cannot queue the commit status for {}: {e}; it stays in state.json and is queued at the next poll",
                    unsent.status.commit
                );
                break;
            }
            queued += 1;
        }
        if queued == 0 {
            return true;
        }
        let mut rest = state.clone();
        rest.unsent.drain(..queued);
        match self.state.save(&rest) {
            Ok(()) => {
                *state = rest;
                true
            }
            Err(e) => {
                error!("commit statuses queued, but {e}; they are delivered once state.json can be written");
                false
            }
        }
    }

    /// Moves recorded statuses to the outbox and delivers what waits.
    async fn deliver(&mut self) {
        let deliverable = match self.state.load() {
            Ok(mut state) => self.flush(&mut state),
            // Reported by the reconcile; the outbox holds nothing unrecorded.
            Err(_) => true,
        };
        if deliverable {
            self.ports.statuses.deliver().await;
        }
    }

    /// Runs one reconcile. `Err` means a transient problem (network, bus, a
    /// full disk): nothing was recorded and the caller retries later.
    /// Waiting statuses are queued and delivered before and after, whatever
    /// happened.
    pub async fn reconcile(&mut self) -> Result<Reconciled> {
        self.deliver().await;
        let result = self.reconcile_inner().await;
        self.deliver().await;
        self.update_metrics(result.is_ok());
        result
    }

    /// Brings the metrics (when configured) up to date with the state;
    /// `polled`: a poll just completed without a transient failure.
    pub fn update_metrics(&mut self, polled: bool) {
        self.metrics
            .update(&self.state, self.ports.store.as_ref(), polled);
    }

    async fn reconcile_inner(&mut self) -> Result<Reconciled> {
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
                self.advance(&mut state, flight).await
            }
            .instrument(span.clone())
            .await;
            (release, span, result)
        } else {
            // An unreachable repository names no release to report on: the
            // journal says it, and the poll is retried.
            let tip = self.ports.source.remote_tip().await?;
            if state.last_seen_tip.as_ref() == Some(&tip) {
                return Ok(Reconciled::UpToDate);
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

    /// A reconcile of `release` failed with a transient fault `e` (it is
    /// retried): remembers when this first happened to the release and,
    /// once that is `report.error_after` ago, reports it as one `error`
    /// status (its words and start never change, so `is_news` posts it
    /// once). Returns `e`.
    fn fault_persists(&mut self, release: &CommitId, e: anyhow::Error) -> anyhow::Error {
        let Ok(mut state) = self.state.load() else {
            return e;
        };
        let now = Utc::now();
        let mut changed = false;
        let since = match state::Sighting::since_for(state.fault.as_ref(), release) {
            Some(since) => since,
            None => {
                state.fault = Some(state::Sighting {
                    commit: release.clone(),
                    since: now,
                });
                changed = true;
                now
            }
        };
        if faults::fault_persists(since, now, self.config.report.error_after) {
            let description = wording::fault_description(&fault_summary(&e), since);
            let source = self.release_source.clone();
            if self.report(
                &mut state,
                release,
                source.as_ref(),
                StatusState::Error,
                &description,
            ) {
                warn!("{description}: reported as an error status");
                changed = true;
            }
        }
        // The usual retry has nothing new to remember: no write.
        if !changed {
            return e;
        }
        if let Err(save) = self.state.save(&state) {
            warn!("cannot remember when the fault began: {save}");
            return e;
        }
        self.flush(&mut state);
        e
    }

    /// A reconcile got through: a fault remembered is over.
    fn fault_cleared(&mut self) {
        let Ok(mut state) = self.state.load() else {
            return;
        };
        if state.fault.take().is_some() {
            if let Err(e) = self.state.save(&state) {
                warn!("cannot forget a fault that cleared: {e}");
            }
        }
    }

    /// fetch → verify → judge: refuse, record that the host already runs the
    /// release, or go on to deploy it.
    async fn new_tip(&mut self, state: &mut State, tip: CommitId) -> Result<Reconciled> {
        self.ports.source.fetch(&tip).await?;
        info!(ferry_phase = "fetch", "new tip on the deploy branch");
        let approver_signers = self.approver_signers.as_ref().unwrap_or(&self.signers);
        let verified_tip = match self
            .ports
            .source
            .verify(&tip, &self.signers, approver_signers, Utc::now())
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let refused = Refused {
                    phase: "verify",
                    seen: tip.clone(),
                    tip,
                    serial: None,
                    source: None,
                    severity: faults::verify_severity(&e),
                    summary: e.summary(),
                    detail: e.to_string(),
                };
                return self.refuse(state, refused);
            }
        };
        let VerifiedTip {
            release: verified,
            approvals,
            ..
        } = verified_tip;
        if let Err(e) = self.config.approvals.policy.may_release(&verified.signer) {
            let refused = Refused {
                phase: "verify",
                seen: tip,
                tip: verified.commit.clone(),
                serial: Some(verified.release.serial),
                source: None,
                severity: Severity::Failure,
                summary: format!("refused: release signed by {}, who may not release", e.principal),
                detail: e.to_string(),
            };
            return self.refuse(state, refused);
        }
        let serial = verified.release.serial;
        Span::current().record("ferry_serial", serial);
        self.metrics.saw_release(serial, verified.release.expires);
        self.release_source = verified.release.source.clone();
        let descends = match &state.anchor {
            Some(anchor) => {
                self.ports
                    .source
                    .descends_from(&verified.commit, &anchor.commit)
                    .await?
            }
            None => false,
        };
        let entry_action = verified.release.hosts.get(&self.config.host).map(|e| e.action);
        let running = match entry_action {
            Some(Action::Boot) => self.ports.store.profile_system(),
            _ => self.ports.store.running_system(),
        };
        match judge::judge(
            &verified,
            &self.config.host,
            state.anchor.as_ref(),
            descends,
            running.as_ref(),
        ) {
            Verdict::Refuse(r) => {
                // Only a release that descends from the anchor may name where
                // to report: a rewound branch could point anywhere.
                let source = match r {
                    judge::Refusal::NoEntry { .. } => verified.release.source.clone(),
                    _ => None,
                };
                let refused = Refused {
                    phase: "select",
                    seen: tip,
                    tip: verified.commit.clone(),
                    serial: Some(serial),
                    source,
                    severity: Severity::Failure,
                    summary: r.summary(),
                    detail: r.to_string(),
                };
                self.refuse(state, refused)
            }
            Verdict::AlreadyRunning(entry) => self.already_running(state, tip, &verified, entry),
            Verdict::Deploy(entry) => {
                Span::current().record("ferry_toplevel", tracing::field::display(&entry.toplevel));
                let tally = approvals::tally(&self.config.approvals.policy, &verified.signer, &approvals);
                if !tally.is_met() {
                    return self.await_approval(state, tip, &verified, &tally);
                }
                let now = self.ports.clock.now();
                let window = self.config.switch.window.as_ref();
                if let Some(until) = window::deploy_waits_until(window, entry.action, now, &chrono::Local) {
                    return self.wait_for_window(state, &verified, until);
                }
                self.preflight(state, tip, &verified, entry, running).await
            }
        }
    }

    /// Records that this host already runs its entry of the release: a
    /// success, and the anchor moves to it.
    fn already_running(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        entry: HostEntry,
    ) -> Result<Reconciled> {
        Span::current().record("ferry_toplevel", tracing::field::display(&entry.toplevel));
        let serial = verified.release.serial;
        let description = wording::runs_release(&self.config.host, serial);
        let ending = Ending {
            seen,
            outcome: Outcome {
                commit: verified.commit.clone(),
                serial,
                toplevel: Some(entry.toplevel),
                result: OutcomeKind::Success,
                description: description.clone(),
                at: Utc::now(),
            },
            source: verified.release.source.clone(),
            status: StatusState::Success,
            anchor: true,
            phase: "select",
            label: "already-running",
            message: description,
            result: Reconciled::AlreadyRunning,
        };
        self.record(state, ending)
    }

    /// Records a refusal: the tip is remembered (so it is not verified again)
    /// but the anchor does not move and nothing is deployed.
    fn refuse(&mut self, state: &mut State, r: Refused) -> Result<Reconciled> {
        if r.serial.is_none() {
            // Not verified, so no serial is known: the journal has said 0.
            Span::current().record("ferry_serial", 0);
        }
        self.record(
            state,
            Ending {
                seen: r.seen,
                outcome: Outcome {
                    commit: r.tip,
                    serial: r.serial.unwrap_or(0),
                    toplevel: None,
                    result: OutcomeKind::Refused,
                    description: r.summary,
                    at: Utc::now(),
                },
                source: r.source,
                status: r.severity.status(),
                anchor: false,
                phase: r.phase,
                label: "refused",
                message: format!("release refused: {}", r.detail),
                result: Reconciled::Refused(r.detail),
            },
        )
    }

    /// A release this host would deploy, still short of approvals (the
    /// two-person rule): nothing on the host changes. The tip is remembered
    /// with one `pending` status on the release, saved in one write (a
    /// status already posted is not posted again); the next approval moves
    /// the tip, and the release is judged again.
    fn await_approval(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        tally: &Tally,
    ) -> Result<Reconciled> {
        let serial = verified.release.serial;
        let description = tally.awaiting(serial);
        info!(ferry_phase = "approval", "{description}");
        self.report(
            state,
            &verified.commit,
            verified.release.source.as_ref(),
            StatusState::Pending,
            &description,
        );
        state.last_seen_tip = Some(seen);
        self.state.save(state)?;
        self.flush(state);
        Ok(Reconciled::AwaitingApproval {
            serial,
            approved: tally.counted.clone(),
            required: tally.required,
        })
    }

    /// The closure preflight: the release is refused, waited for, or accepted.
    async fn preflight(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        entry: HostEntry,
        running: Option<StorePath>,
    ) -> Result<Reconciled> {
        let tip = verified.commit.clone();
        let serial = verified.release.serial;
        let source = verified.release.source.clone();
        info!(
            ferry_phase = "preflight", signer = %verified.signer.principal,
            "deploying release {serial} ({})", entry.action
        );
        let now = Utc::now();
        let first_seen_missing = state::Sighting::since_for(state.closure_missing.as_ref(), &tip);
        // While a persisting fault is reported, the release keeps its
        // `error` status until the fault clears (then "deploying" again).
        let fault_reported = state::Sighting::since_for(state.fault.as_ref(), &tip)
            .is_some_and(|since| faults::fault_persists(since, now, self.config.report.error_after));
        let deploying = format!("deploying release {serial} to {}", self.config.host);
        if first_seen_missing.is_none() && !fault_reported {
            self.announce(state, &tip, source.as_ref(), &deploying).await?;
        }
        let checked = crate::reconcile::ports::checked_preflight(
            &mut *self.ports.caches,
            &mut *self.ports.store,
            &entry.toplevel,
        )
        .await;
        let preflight = match checked {
            Ok(p) => Ok(p),
            // Nix could not be asked: retried, like any fault outside the release.
            Err(PreflightError::Store(e)) => return Err(e.into()),
            Err(PreflightError::Cache(e)) => Err(e),
        };
        let preflight = match preflight {
            Ok(p) => p,
            Err(e) if faults::cache_fault(&e) == faults::Fault::Transient => return Err(e.into()),
            Err(e @ CacheError::NotFound { .. })
                if faults::may_still_be_uploading(
                    verified.release.created,
                    first_seen_missing.unwrap_or(now),
                    now,
                ) =>
            {
                return self.wait_for_upload(state, verified, &e, first_seen_missing, now);
            }
            Err(e) => {
                let refused = Refused {
                    phase: "preflight",
                    seen,
                    tip,
                    serial: Some(serial),
                    source,
                    severity: faults::cache_severity(&e),
                    summary: e.summary(),
                    detail: e.to_string(),
                };
                return self.refuse(state, refused);
            }
        };
        if fault_reported {
            self.announce(state, &tip, source.as_ref(), &deploying).await?;
        }
        state.closure_missing = None;
        info!(
            ferry_phase = "preflight",
            paths = preflight.paths,
            missing = preflight.missing,
            download_bytes = preflight.download_bytes,
            unpacked_bytes = preflight.unpacked_bytes,
            "closure preflight passed"
        );
        self.accept(state, seen, verified, entry, running).await
    }

    /// Posts the pending status `description` on the release and its source,
    /// unless it is the last thing said there.
    async fn announce(
        &mut self,
        state: &mut State,
        tip: &CommitId,
        source: Option<&CommitId>,
        description: &str,
    ) -> Result<()> {
        if self.report(state, tip, source, StatusState::Pending, description) {
            self.state.save(state)?;
            if self.flush(state) {
                self.ports.statuses.deliver().await;
            }
        }
        Ok(())
    }

    /// A closure missing from the cache shortly after its release was made:
    /// CI may still be uploading it. Nothing is refused or remembered (the
    /// next poll tries again, until the grace period ends), and the release
    /// says so on the forge once.
    fn wait_for_upload(
        &mut self,
        state: &mut State,
        verified: &VerifiedRelease,
        missing: &CacheError,
        first_seen_missing: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Reconciled> {
        let serial = verified.release.serial;
        let until = faults::upload_deadline(verified.release.created, first_seen_missing.unwrap_or(now));
        warn!(
            ferry_phase = "preflight",
            "{missing}; waiting for CI to finish uploading (until {until})"
        );
        if first_seen_missing.is_none() {
            // Saved with the status, so a restart neither says it again nor
            // restarts the wait.
            state.closure_missing = Some(state::Sighting {
                commit: verified.commit.clone(),
                since: now,
            });
            let description = format!("release {serial}: waiting for the closure in the binary cache");
            let source = verified.release.source.as_ref();
            self.report(
                state,
                &verified.commit,
                source,
                StatusState::Pending,
                &description,
            );
            self.state.save(state)?;
            self.flush(state);
        }
        Ok(Reconciled::WaitingForClosure { serial, until })
    }

    /// A release outside the deploy window: nothing is recorded (the next
    /// poll looks again), and the release says until when it waits, once.
    fn wait_for_window(
        &mut self,
        state: &mut State,
        verified: &VerifiedRelease,
        until: DateTime<Utc>,
    ) -> Result<Reconciled> {
        let serial = verified.release.serial;
        let description = wording::waits_for_window(serial, &window::wall_clock_text(until, &chrono::Local));
        let source = verified.release.source.as_ref();
        if self.report(
            state,
            &verified.commit,
            source,
            StatusState::Pending,
            &description,
        ) {
            info!(ferry_phase = "window", "{description}");
            self.state.save(state)?;
            self.flush(state);
        }
        Ok(Reconciled::WaitingForWindow { serial, until })
    }

    /// Accepts the release: the anchor moves and the deploy is recorded as
    /// realising, with what was running and which units had already failed,
    /// before anything on the host changes.
    async fn accept(
        &mut self,
        state: &mut State,
        seen: CommitId,
        verified: &VerifiedRelease,
        entry: HostEntry,
        running: Option<StorePath>,
    ) -> Result<Reconciled> {
        let failed_before = match self.ports.units.failed_units().await {
            Ok(units) => units,
            Err(e @ SystemdError::Connect(_)) => {
                return Err(anyhow::Error::new(e).context("cannot reach systemd"))
            }
            Err(_) => Vec::new(),
        };
        let tip = verified.commit.clone();
        let serial = verified.release.serial;
        let flight = InFlight {
            tip: seen,
            target: Target {
                commit: tip.clone(),
                serial,
                toplevel: entry.toplevel,
            },
            source: verified.release.source.clone(),
            action: entry.action,
            phase: Phase::Realising,
            previous: running,
            failed_before,
            started: Utc::now(),
        };
        // From here the release is accepted: the anchor moves even if the
        // deploy fails, so an older release can never be served again.
        state.anchor = Some(Anchor { commit: tip, serial });
        state.in_flight = Some(flight.clone());
        self.state.save(state)?;
        self.advance(state, flight).await
    }

    /// Drives a deploy in flight from its recorded phase to its end: each
    /// phase is recorded before its first step is taken.
    async fn advance(&mut self, state: &mut State, mut flight: InFlight) -> Result<Reconciled> {
        loop {
            let next = match flight.phase.clone() {
                Phase::Realising => self.realising(&flight).await?,
                Phase::Switching => self.switching(&flight).await?,
                Phase::Checking { switch } => self.checking(&flight, switch).await?,
                Phase::RollingBack { to, problem } => self.rolling_back(&flight, &to, &problem).await?,
                Phase::AwaitingReboot { at } => self.awaiting_reboot(&flight, at).await?,
                Phase::Rebooting { boot } => self.rebooting(&flight, &boot).await?,
            };
            match next {
                Next::Phase(phase) => {
                    flight.phase = phase;
                    state.in_flight = Some(flight.clone());
                    let announced = self.announce_phase(state, &flight);
                    self.state.save(state)?;
                    // Delivered before the step: "rebooting" reaches the
                    // forge before the host goes down, if it can.
                    if announced && self.flush(state) {
                        self.ports.statuses.deliver().await;
                    }
                    if flight.activation().is_some() {
                        self.activate(&flight).await?;
                    }
                }
                Next::End(conclusion) => return self.finish(state, &flight, conclusion),
                Next::Wait(result) => return Ok(result),
            }
        }
    }

    /// Realises the closure and sets the profile; then the switch.
    async fn realising(&mut self, flight: &InFlight) -> Result<Next> {
        let toplevel = &flight.target.toplevel;
        info!(
            ferry_phase = flight.phase.name(),
            "realising the closure from the binary cache"
        );
        // The status says why first (cut to 140 characters); the journal
        // gets the whole error.
        if let Err(e) = self.ports.store.realise(toplevel).await {
            error!(
                ferry_phase = flight.phase.name(),
                "cannot realise the closure: {e}"
            );
            return Ok(Next::End(Conclusion {
                kind: OutcomeKind::Error,
                description: format!("error: cannot realise the closure: {}", e.reason()),
            }));
        }
        if flight.action.sets_profile() {
            if let Err(e) = self.ports.store.set_profile(toplevel).await {
                error!(
                    ferry_phase = flight.phase.name(),
                    "cannot set the system profile: {e}"
                );
                return Ok(Next::End(Conclusion {
                    kind: OutcomeKind::Error,
                    description: format!("error: cannot set the system profile: {}", e.reason()),
                }));
            }
        }
        Ok(Next::Phase(Phase::Switching))
    }

    /// Sees the switch unit to its end; then the check.
    async fn switching(&mut self, flight: &InFlight) -> Result<Next> {
        let switch = self.see_through(flight).await?;
        info!(
            ferry_phase = flight.phase.name(), ferry_switch_result = %switch.encode(),
            "{}", switch.describe()
        );
        Ok(Next::Phase(Phase::Checking { switch }))
    }

    /// Checks health (when the switch activated a running system) and asks
    /// `decide.rs` what it all means: the end, or a rollback.
    async fn checking(&mut self, flight: &InFlight, switch: SwitchResult) -> Result<Next> {
        let health = if ending::checks_health(flight.action, switch) {
            info!(ferry_phase = flight.phase.name(), "checking health");
            let health = &self.config.health;
            self.ports
                .units
                .check_health(health.settle, &health.commands)
                .await?
                .new_since(&self.config.switch.unit, &flight.failed_before)
        } else {
            Health::default()
        };
        let kernel_changed =
            flight.action == Action::Switch && self.ports.store.kernel_changed(&flight.target.toplevel);
        let checked = Checked {
            host: &self.config.host,
            serial: flight.target.serial,
            action: flight.action,
            switch,
            health: &health,
            kernel_changed,
            rollback_enabled: self.config.switch.rollback,
            previous: flight.previous.as_ref(),
        };
        Ok(match ending::after_check(&checked) {
            AfterCheck::RollBack { to, problem } => Next::Phase(Phase::RollingBack { to, problem }),
            AfterCheck::Conclude(conclusion) => match &self.config.reboot {
                RebootPolicy::InWindow(windows) if ending::needs_reboot(conclusion.kind) => {
                    let now = self.ports.clock.now();
                    Next::Phase(Phase::AwaitingReboot {
                        at: reboot_moment(windows, &self.config.host, now)?,
                    })
                }
                _ => Next::End(conclusion),
            },
        })
    }

    /// Waits for the reboot's moment, then records the boot it is requested
    /// in. Never while a switch or rollback unit runs, and only while the
    /// window is open (a moment missed, the host being down, moves to the
    /// next window). The deploy ends as needing a reboot, without one, when
    /// a newer verified release arrives first (it is deployed next, and
    /// reboots in its turn) or the policy became `never`.
    async fn awaiting_reboot(&mut self, flight: &InFlight, at: DateTime<Utc>) -> Result<Next> {
        let serial = flight.target.serial;
        let (host, action) = (self.config.host.clone(), flight.action);
        let pending = move || ending::reboot_required(&host, serial, action);
        let RebootPolicy::InWindow(windows) = self.config.reboot.clone() else {
            info!(
                ferry_phase = flight.phase.name(),
                "reboot policy is `never`: not rebooting"
            );
            return Ok(Next::End(pending()));
        };
        // A tip that cannot be read now changes nothing: the reboot is not
        // held hostage by the deploy repository.
        if let Ok(tip) = self.ports.source.remote_tip().await {
            if tip != flight.tip && self.supersedes(&tip, flight).await {
                info!(
                    ferry_phase = flight.phase.name(),
                    "a newer tip ({tip}) arrived before the reboot into release {serial}: it is deployed next"
                );
                return Ok(Next::End(pending()));
            }
        }
        let now = self.ports.clock.now();
        if now < at {
            return Ok(Next::Wait(Reconciled::RebootScheduled { serial, at }));
        }
        if !windows.contains(now, &chrono::Local) {
            let at = reboot_moment(&windows, &self.config.host, now)?;
            warn!(
                ferry_phase = flight.phase.name(),
                "the reboot's moment passed outside the maintenance window ({windows}); rescheduled"
            );
            return Ok(Next::Phase(Phase::AwaitingReboot { at }));
        }
        let running = self.ports.units.activations_running().await?;
        if !running.is_empty() {
            info!(
                ferry_phase = flight.phase.name(),
                "not rebooting while {} runs; trying again at the next poll",
                running.join(", ")
            );
            return Ok(Next::Wait(Reconciled::RebootScheduled { serial, at }));
        }
        let boot = self.ports.reboot.this_boot().await?;
        Ok(Next::Phase(Phase::Rebooting { boot }))
    }

    /// Whether `tip` is a release that would be deployed after `flight`'s:
    /// it verifies, descends from it and has a greater serial. Anything else
    /// (an unsigned or rewound tip — anyone who can push to the branch can
    /// make one — or a fault reading it) leaves the reboot as planned; it is
    /// judged as usual once the deploy has ended.
    async fn supersedes(&mut self, tip: &CommitId, flight: &InFlight) -> bool {
        if self.ports.source.fetch(tip).await.is_err() {
            return false;
        }
        let now = self.ports.clock.now();
        let approver_signers = self.approver_signers.as_ref().unwrap_or(&self.signers);
        let verify = self
            .ports
            .source
            .verify(tip, &self.signers, approver_signers, now);
        let Ok(verified) = verify.await else {
            return false;
        };
        let release = verified.release;
        release.release.serial > flight.target.serial
            && matches!(
                self.ports
                    .source
                    .descends_from(&release.commit, &flight.target.commit)
                    .await,
                Ok(true)
            )
    }

    /// In the boot the reboot was recorded in, requests it (again, after a
    /// restart: a request joins one under way, so the host reboots once).
    /// In any other boot, the reboot happened: what booted decides the end.
    async fn rebooting(&mut self, flight: &InFlight, boot: &BootId) -> Result<Next> {
        let serial = flight.target.serial;
        if self.ports.reboot.this_boot().await? == *boot {
            info!(
                ferry_phase = flight.phase.name(),
                "rebooting into release {serial} ({})",
                flight.target.toplevel.name()
            );
            self.ports.reboot.request().await?;
            return Ok(Next::Wait(Reconciled::Rebooting { serial }));
        }
        let booted = self.ports.store.booted_system();
        Ok(Next::End(ending::after_reboot(
            &self.config.host,
            serial,
            &flight.target.toplevel,
            booted.as_ref(),
        )))
    }

    /// Records the status a phase is announced with, in `state` (saved by
    /// the caller with the phase). Returns whether one was recorded.
    fn announce_phase(&mut self, state: &mut State, flight: &InFlight) -> bool {
        let serial = flight.target.serial;
        let description = match &flight.phase {
            Phase::AwaitingReboot { at } => {
                wording::reboot_scheduled(serial, &window::wall_clock_text(*at, &chrono::Local))
            }
            Phase::Rebooting { .. } => wording::rebooting_into(serial),
            _ => return false,
        };
        info!(ferry_phase = flight.phase.name(), "{description}");
        let commit = flight.target.commit.clone();
        self.report(
            state,
            &commit,
            flight.source.as_ref(),
            StatusState::Pending,
            &description,
        )
    }

    /// Sees the rollback unit to its end; the deploy failed either way.
    async fn rolling_back(&mut self, flight: &InFlight, to: &StorePath, problem: &str) -> Result<Next> {
        let result = self.see_through(flight).await?;
        Ok(Next::End(ending::after_rollback(problem, to, result)))
    }

    /// Starts the activation the flight's phase names (setting the profile
    /// back first for a rollback).
    async fn activate(&mut self, flight: &InFlight) -> Result<()> {
        let Some((activation, system, action)) = flight.activation() else {
            return Ok(());
        };
        let phase = flight.phase.name();
        match &flight.phase {
            Phase::RollingBack { problem, .. } => {
                warn!(
                    ferry_phase = phase,
                    "{problem}: rolling back to {}",
                    system.name()
                );
                if flight.action.sets_profile() {
                    self.ports.store.set_profile(system).await?;
                }
            }
            _ => info!(ferry_phase = phase, "starting switch-to-configuration {action}"),
        }
        let serial = flight.target.serial;
        self.ports.units.start(serial, activation, system, action).await?;
        Ok(())
    }

    /// The one way a switch or rollback unit is followed, fresh or after a
    /// restart: a running unit is waited for, a finished one read; a unit
    /// never seen is taken as done when its system runs, and started
    /// otherwise (killed between recording the phase and starting the unit,
    /// or lost with a power cut: activating the same system again is safe).
    async fn see_through(&mut self, flight: &InFlight) -> Result<SwitchResult> {
        let (activation, system, _) = flight
            .activation()
            .expect("only switching and rolling back have a unit");
        let serial = flight.target.serial;
        let units = &mut self.ports.units;
        Ok(match units.observe(serial, activation).await? {
            Observed::Running => units.wait(serial, activation).await?,
            Observed::Finished(result) => result,
            Observed::Unknown if self.ports.store.running_system().as_ref() == Some(system) => {
                SwitchResult::Ok
            }
            Observed::Unknown => {
                self.activate(flight).await?;
                self.ports.units.wait(serial, activation).await?
            }
        })
    }

    /// Ends a deploy in flight with `conclusion`.
    fn finish(&mut self, state: &mut State, flight: &InFlight, conclusion: Conclusion) -> Result<Reconciled> {
        let Conclusion { kind, description } = conclusion;
        let result = match kind {
            OutcomeKind::Success => Reconciled::Deployed {
                reboot_required: false,
            },
            OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed => Reconciled::Deployed {
                reboot_required: true,
            },
            OutcomeKind::Failed => Reconciled::Failed(description.clone()),
            OutcomeKind::Refused => Reconciled::Refused(description.clone()),
            OutcomeKind::Error => Reconciled::Error(description.clone()),
        };
        self.record(
            state,
            Ending {
                seen: flight.tip.clone(),
                outcome: Outcome {
                    commit: flight.target.commit.clone(),
                    serial: flight.target.serial,
                    toplevel: Some(flight.target.toplevel.clone()),
                    result: kind,
                    description: description.clone(),
                    at: Utc::now(),
                },
                source: flight.source.clone(),
                status: ending::outcome_status(kind),
                anchor: false,
                phase: "done",
                label: kind.as_str(),
                message: description,
                result,
            },
        )
    }

    /// The one place a reconcile's ending is recorded: logged, then written
    /// to the state (no deploy in flight any more, the tip remembered, the
    /// outcome kept) together with its commit statuses, in one durable
    /// write, then the statuses moved to the outbox (the release's recent
    /// statuses forgotten in the same write). A crash can never leave
    /// the ending recorded without its statuses; a write that fails (a full
    /// disk) records nothing, and the next reconcile comes to the ending
    /// again.
    fn record(&mut self, state: &mut State, ending: Ending) -> Result<Reconciled> {
        let Ending {
            seen,
            outcome,
            source,
            status,
            anchor,
            phase,
            label,
            message,
            result,
        } = ending;
        if outcome.result.is_success() {
            info!(ferry_phase = phase, ferry_outcome = label, "{message}");
        } else {
            error!(ferry_phase = phase, ferry_outcome = label, "{message}");
        }
        state.in_flight = None;
        state.last_seen_tip = Some(seen);
        if anchor {
            state.anchor = Some(Anchor {
                commit: outcome.commit.clone(),
                serial: outcome.serial,
            });
        }
        if outcome.result.is_success() {
            state.last_success = Some(outcome.clone());
        }
        state.last_outcome = Some(outcome.clone());
        self.report(
            state,
            &outcome.commit,
            source.as_ref(),
            status,
            &outcome.description,
        );
        // Nothing more is posted for this release: its statuses and first
        // sightings are forgotten.
        state.recent_statuses.clear();
        state.closure_missing = None;
        state.fault = None;
        self.state.save(state)?;
        self.flush(state);
        Ok(result)
    }
}

/// What a transient fault is, in the words of a status description (which
/// never change while the fault lasts).
fn fault_summary(e: &anyhow::Error) -> String {
    if let Some(e) = e.downcast_ref::<CacheError>() {
        return e.summary();
    }
    if e.downcast_ref::<crate::io::git::source::SourceError>().is_some() {
        return "error: the deploy repository is unreachable".into();
    }
    if e.chain().any(|c| c.downcast_ref::<SystemdError>().is_some()) {
        return "error: systemd cannot be reached".into();
    }
    "error: the deploy cannot go on (see the journal)".into()
}

impl InFlight {
    /// The unit the phase runs, the system it activates and how: the
    /// release's for switching, the previous system's for rolling back.
    fn activation(&self) -> Option<(Activation, &StorePath, Action)> {
        match &self.phase {
            Phase::Switching => Some((Activation::Switch, &self.target.toplevel, self.action)),
            Phase::RollingBack { to, .. } => {
                Some((Activation::Rollback, to, ending::rollback_action(self.action)))
            }
            Phase::Realising
            | Phase::Checking { .. }
            | Phase::AwaitingReboot { .. }
            | Phase::Rebooting { .. } => None,
        }
    }
}

/// When this host reboots in `windows`, asked at `now`.
fn reboot_moment(
    windows: &window::Windows,
    host: &ferry_signer::HostName,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    windows
        .reboot_moment(host, now, &chrono::Local)
        .ok_or_else(|| anyhow::anyhow!("the maintenance window ({windows}) does not open within a week"))
}

#[cfg(test)]
mod tests;
