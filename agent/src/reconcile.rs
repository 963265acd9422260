//! One reconcile: the pipeline of docs/architecture.md as explicit phases. Each step
//! that changes the machine is preceded by a durable record of the phase
//! reached, so an agent killed at any instant resumes where it was and never
//! starts a second switch for the same release.
//!
//! poll → fetch → verify → judge → preflight → realise → switch → health →
//! (rollback) → record → report

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chrono::Utc;
use ferry_signer::{Action, AllowedSigners, CommitId, HostEntry, StorePath, VerifiedRelease};
use git2::Oid;
use tracing::{error, info, warn};

use crate::cache::{BinaryCaches, CacheError};
use crate::config::Config;
use crate::decide::{self, SwitchResult, Verdict};
use crate::forge::{Delivery, ForgeClient};
use crate::health;
use crate::report::{Outbox, Status, StatusState};
use crate::source::Source;
use crate::state::{Anchor, InFlight, Outcome, OutcomeKind, Phase, State, StateStore};
use crate::store::{self, Store};
use crate::switch::{Observed, Switcher};
use crate::systemd::Systemd;

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The tip has not moved since the last reconcile: nothing fetched or verified.
    UpToDate,
    /// The host already runs its entry of the newest release.
    AlreadyRunning,
    /// Deployed (`reboot_required` when the kernel or initrd changed).
    Deployed { reboot_required: bool },
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
            Reconciled::UpToDate | Reconciled::AlreadyRunning | Reconciled::Deployed { .. }
        )
    }
}

/// Everything one reconcile needs, built from the configuration.
pub struct Agent {
    pub config: Config,
    pub signers: AllowedSigners,
    pub state: StateStore,
    pub outbox: Outbox,
    pub forge: ForgeClient,
    pub caches: BinaryCaches,
    pub store: Store,
    source: Arc<Mutex<Source>>,
    systemd: Option<Systemd>,
    /// The release whose closure was missing from the cache at the last
    /// attempt (CI may still be uploading) and when that was first seen: its
    /// statuses are posted once, and the wait is bounded from then.
    awaiting_cache: Option<(CommitId, chrono::DateTime<Utc>)>,
    /// `/run/current-system` and `/run/booted-system`.
    pub current_system: PathBuf,
    pub booted_system: PathBuf,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host", &self.config.host)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Opens state, outbox and the deploy repository clone for `config`.
    pub fn new(config: Config) -> Result<Self> {
        let signers = AllowedSigners::load(&config.source.allowed_signers)?;
        let state = StateStore::open(&config.state_dir)?;
        let outbox = Outbox::open(&config.state_dir)?;
        let source = Source::open(
            &config.state_dir.join("deploy.git"),
            &config.source.url,
            &config.source.branch,
            config.source.token_file.as_deref(),
        )?;
        let store = Store {
            profile: config.switch.profile.clone(),
            gc_roots: config.state_dir.join("gcroots"),
            substituters: config.cache.substituters.clone(),
            trusted_public_keys: config
                .cache
                .trusted_public_keys
                .iter()
                .map(|k| k.to_string())
                .collect(),
            realise_timeout: config.switch.timeout.max(std::time::Duration::from_secs(3600)),
        };
        Ok(Self {
            forge: ForgeClient::new(&config.report),
            caches: BinaryCaches::new(&config.cache.substituters, &config.cache.trusted_public_keys),
            signers,
            state,
            outbox,
            store,
            source: Arc::new(Mutex::new(source)),
            systemd: None,
            awaiting_cache: None,
            current_system: PathBuf::from(store::CURRENT_SYSTEM),
            booted_system: PathBuf::from(store::BOOTED_SYSTEM),
            config,
        })
    }

    /// Replaces the allowed signers (after the file changed).
    pub fn set_signers(&mut self, signers: AllowedSigners) {
        self.signers = signers;
    }

    async fn systemd(&mut self) -> Result<Systemd> {
        if let Some(s) = &self.systemd {
            return Ok(s.clone());
        }
        let s = Systemd::connect().await?;
        self.systemd = Some(s.clone());
        Ok(s)
    }

    async fn switcher(&mut self) -> Result<Switcher> {
        Ok(Switcher {
            systemd: self.systemd().await?,
            unit_prefix: self.config.switch.unit.clone(),
            timeout: self.config.switch.timeout,
            record_dir: self.config.state_dir.clone(),
            agent_exe: std::env::current_exe().context("cannot find this agent's executable")?,
        })
    }

    async fn with_source<T: Send + 'static>(&self, f: impl FnOnce(&Source) -> T + Send + 'static) -> T {
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || f(&source.lock().expect("source lock")))
            .await
            .expect("git tasks do not panic")
    }

    /// The system this host runs now, by `/run/current-system`.
    pub fn running_system(&self) -> Option<StorePath> {
        store::resolve_system(&self.current_system)
    }

    /// Delivers waiting statuses (best effort; problems are logged).
    pub async fn deliver_statuses(&self) {
        match self.forge.drain(&self.outbox).await {
            Ok(d) => {
                if d.delivered > 0 || d.dropped > 0 {
                    info!(
                        delivered = d.delivered,
                        dropped = d.dropped,
                        "commit statuses delivered"
                    );
                }
                match d.stopped {
                    Some(Delivery::Retry(why)) => warn!("commit statuses wait in the outbox: {why}"),
                    Some(Delivery::Misconfigured(why)) => error!("commit statuses wait in the outbox: {why}"),
                    _ => {}
                }
            }
            Err(e) => error!("cannot read the status outbox: {e}"),
        }
    }

    /// Queues a status on the release commit and, if given, its source commit.
    fn report(&self, release: &CommitId, source: Option<&CommitId>, state: StatusState, description: &str) {
        let context = self.config.report.context_for(&self.config.host);
        for commit in std::iter::once(release).chain(source) {
            let status = Status::new(commit.clone(), state, &context, description);
            match self.outbox.push(&status) {
                Ok(0) => {}
                Ok(n) => warn!(dropped = n, "status outbox full: dropped the oldest statuses"),
                Err(e) => error!("cannot queue a commit status: {e}"),
            }
        }
    }

    /// Runs one reconcile. `Err` means a transient problem (network, bus):
    /// nothing was recorded and the caller retries later. Waiting statuses
    /// are delivered before and after, whatever happened.
    pub async fn reconcile(&mut self) -> Result<Reconciled> {
        self.deliver_statuses().await;
        let result = self.reconcile_inner().await;
        self.deliver_statuses().await;
        result
    }

    async fn reconcile_inner(&mut self) -> Result<Reconciled> {
        let mut state = self.state.load()?;
        if let Some(flight) = state.in_flight.clone() {
            info!(
                ferry_commit = %flight.commit, ferry_serial = flight.serial, ferry_toplevel = %flight.toplevel,
                ferry_phase = flight.phase_name(), "resuming a deploy interrupted by a restart"
            );
            return self.advance(&mut state, flight).await;
        }

        let tip = self.with_source(|s| s.remote_tip()).await?;
        let tip_id = CommitId::from(tip);
        if state.last_seen_tip.as_ref() == Some(&tip_id) {
            return Ok(Reconciled::UpToDate);
        }
        self.with_source(move |s| s.fetch(tip)).await?;
        info!(ferry_commit = %tip_id, ferry_phase = "fetch", "new tip on the deploy branch");

        let verified = {
            let signers = self.signers.clone();
            self.with_source(move |s| {
                ferry_signer::verify::verify_release_commit(s.repo(), tip, &signers, Utc::now())
                    .map_err(Box::new)
            })
            .await
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                let summary = e.summary();
                return self.refuse(
                    &mut state,
                    Refused {
                        phase: "verify",
                        tip: &tip_id,
                        serial: None,
                        source: None,
                        summary,
                        detail: e.to_string(),
                    },
                );
            }
        };
        let serial = verified.release.serial;
        let source_commit = verified.release.source.clone();
        let descends = match &state.anchor {
            Some(anchor) => {
                let anchor_oid = Oid::from_str(anchor.commit.as_str())?;
                self.with_source(move |s| s.descends_from(tip, anchor_oid))
                    .await?
            }
            None => false,
        };
        let entry_action = verified.release.hosts.get(&self.config.host).map(|e| e.action);
        let running = match entry_action {
            Some(Action::Boot) => self.store.profile_system(),
            _ => self.running_system(),
        };
        match decide::judge(
            &verified,
            &self.config.host,
            state.anchor.as_ref(),
            descends,
            running.as_ref(),
        ) {
            Verdict::Refuse(r) => {
                // Only a release that descends from the anchor may name where
                // to report: a rewound branch could point anywhere.
                let source = if matches!(r, decide::Refusal::NoEntry { .. }) {
                    source_commit.as_ref()
                } else {
                    None
                };
                self.refuse(
                    &mut state,
                    Refused {
                        phase: "select",
                        tip: &tip_id,
                        serial: Some(serial),
                        source,
                        summary: r.summary(),
                        detail: r.to_string(),
                    },
                )
            }
            Verdict::AlreadyRunning(entry) => {
                let description = format!("{} runs release {serial}", self.config.host);
                info!(
                    ferry_commit = %tip_id, ferry_serial = serial, ferry_toplevel = %entry.toplevel,
                    ferry_phase = "select", ferry_outcome = "already-running", "{description}"
                );
                state.anchor = Some(Anchor {
                    commit: tip_id.clone(),
                    serial,
                });
                state.last_seen_tip = Some(tip_id.clone());
                let outcome = Outcome {
                    commit: tip_id.clone(),
                    serial,
                    toplevel: Some(entry.toplevel),
                    result: OutcomeKind::Success,
                    description: description.clone(),
                    at: Utc::now(),
                };
                state.last_success = Some(outcome.clone());
                state.last_outcome = Some(outcome);
                self.state.save(&state)?;
                self.report(
                    &tip_id,
                    source_commit.as_ref(),
                    StatusState::Success,
                    &description,
                );
                Ok(Reconciled::AlreadyRunning)
            }
            Verdict::Deploy(entry) => self.deploy(&mut state, &verified, entry, running).await,
        }
    }

    /// Records a refusal: the tip is remembered (so it is not verified again)
    /// but the anchor does not move and nothing is deployed.
    fn refuse(&self, state: &mut State, refused: Refused<'_>) -> Result<Reconciled> {
        let Refused {
            phase,
            tip,
            serial,
            source,
            summary,
            detail,
        } = refused;
        error!(
            ferry_commit = %tip, ferry_serial = serial.unwrap_or(0), ferry_phase = phase,
            ferry_outcome = "refused", "release refused: {detail}"
        );
        state.last_seen_tip = Some(tip.clone());
        state.last_outcome = Some(Outcome {
            commit: tip.clone(),
            serial: serial.unwrap_or(0),
            toplevel: None,
            result: OutcomeKind::Refused,
            description: summary.clone(),
            at: Utc::now(),
        });
        self.state.save(state)?;
        let status = if summary.starts_with("error") {
            StatusState::Error
        } else {
            StatusState::Failure
        };
        self.report(tip, source, status, &summary);
        Ok(Reconciled::Refused(detail))
    }

    async fn deploy(
        &mut self,
        state: &mut State,
        verified: &VerifiedRelease,
        entry: HostEntry,
        running: Option<StorePath>,
    ) -> Result<Reconciled> {
        let tip = verified.commit.clone();
        let serial = verified.release.serial;
        let source = verified.release.source.clone();
        info!(
            ferry_commit = %tip, ferry_serial = serial, ferry_toplevel = %entry.toplevel, ferry_phase = "preflight",
            signer = %verified.signer.principal, "deploying release {serial} ({})", entry.action
        );
        let now = Utc::now();
        let first_seen_missing = match &self.awaiting_cache {
            Some((commit, since)) if *commit == tip => Some(*since),
            _ => None,
        };
        let retrying = first_seen_missing.is_some();
        if !retrying {
            self.report(
                &tip,
                source.as_ref(),
                StatusState::Pending,
                &format!("deploying release {serial} to {}", self.config.host),
            );
            self.deliver_statuses().await;
        }

        let preflight = match self
            .caches
            .preflight(&entry.toplevel, Path::new(ferry_signer::names::STORE_DIR))
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e @ CacheError::NotFound { .. })
                if decide::may_still_be_uploading(
                    verified.release.created,
                    first_seen_missing.unwrap_or(now),
                    now,
                ) =>
            {
                // Not refused (and the tip not remembered): the next poll
                // tries again, until the grace period ends.
                let until =
                    decide::upload_deadline(verified.release.created, first_seen_missing.unwrap_or(now));
                warn!(
                    ferry_commit = %tip, ferry_serial = serial, ferry_toplevel = %entry.toplevel,
                    ferry_phase = "preflight", "{e}; waiting for CI to finish uploading (until {until})"
                );
                if !retrying {
                    self.report(
                        &tip,
                        source.as_ref(),
                        StatusState::Pending,
                        &format!("release {serial}: waiting for the closure in the binary cache"),
                    );
                    self.awaiting_cache = Some((tip.clone(), now));
                }
                return Err(anyhow::Error::new(e).context(format!(
                    "release {serial}: the closure is not in the binary cache yet; retrying until {until}"
                )));
            }
            Err(e) => {
                self.awaiting_cache = None;
                return self.refuse(
                    state,
                    Refused {
                        phase: "preflight",
                        tip: &tip,
                        serial: Some(serial),
                        source: source.as_ref(),
                        summary: e.summary(),
                        detail: e.to_string(),
                    },
                );
            }
        };
        self.awaiting_cache = None;
        info!(
            ferry_commit = %tip, ferry_serial = serial, ferry_toplevel = %entry.toplevel, ferry_phase = "preflight",
            paths = preflight.paths, missing = preflight.missing, download_bytes = preflight.download_bytes,
            unpacked_bytes = preflight.unpacked_bytes, "closure preflight passed"
        );
        let failed_before = match self.systemd().await {
            Ok(sd) => sd.failed_units().await.unwrap_or_default(),
            Err(e) => return Err(e.context("cannot reach systemd")),
        };
        let flight = InFlight {
            commit: tip.clone(),
            serial,
            source,
            toplevel: entry.toplevel,
            action: entry.action,
            phase: Phase::Realising,
            previous: running,
            failed_before,
            switch_result: None,
            started: Utc::now(),
        };
        // From here the release is accepted: the anchor moves even if the
        // deploy fails, so an older release can never be served again.
        state.anchor = Some(Anchor { commit: tip, serial });
        state.in_flight = Some(flight.clone());
        self.state.save(state)?;
        self.advance(state, flight).await
    }

    /// Drives an in-flight deploy from its recorded phase to its end.
    async fn advance(&mut self, state: &mut State, mut flight: InFlight) -> Result<Reconciled> {
        let switcher = self.switcher().await?;
        let attempt = switcher.attempt(flight.serial, false);
        let rollback = switcher.attempt(flight.serial, true);
        loop {
            match flight.phase {
                Phase::Realising => {
                    self.log_phase(&flight, "realise", "realising the closure from the binary cache");
                    if let Err(e) = self.store.realise(&flight.toplevel, "current").await {
                        return self.finish(
                            state,
                            &flight,
                            OutcomeKind::Error,
                            &format!("error: cannot realise the closure: {e}"),
                        );
                    }
                    if flight.action.sets_profile() {
                        if let Err(e) = self.store.set_profile(&flight.toplevel).await {
                            return self.finish(
                                state,
                                &flight,
                                OutcomeKind::Error,
                                &format!("error: cannot set the system profile: {e}"),
                            );
                        }
                    }
                    flight.phase = Phase::Switching;
                    self.save_flight(state, &flight)?;
                    self.log_phase(
                        &flight,
                        "switch",
                        &format!("starting switch-to-configuration {}", flight.action),
                    );
                    switcher.start(&attempt, &flight.toplevel, flight.action).await?;
                }
                Phase::Switching => {
                    let result = match switcher.observe(&attempt).await? {
                        Observed::Running => switcher.wait(&attempt).await?,
                        Observed::Finished(r) => r,
                        Observed::Unknown if self.running_system().as_ref() == Some(&flight.toplevel) => {
                            SwitchResult::Ok
                        }
                        Observed::Unknown => {
                            // Never started (killed between recording the phase and
                            // starting the unit), or lost with a power cut: switching
                            // to the same system again is safe.
                            switcher.start(&attempt, &flight.toplevel, flight.action).await?;
                            switcher.wait(&attempt).await?
                        }
                    };
                    info!(
                        ferry_commit = %flight.commit, ferry_serial = flight.serial, ferry_toplevel = %flight.toplevel,
                        ferry_phase = "switch", ferry_switch_result = %result.encode(), "{}", result.describe()
                    );
                    flight.switch_result = Some(result.encode());
                    flight.phase = Phase::Checking;
                    self.save_flight(state, &flight)?;
                }
                Phase::Checking => {
                    let result = flight
                        .switch_result
                        .as_deref()
                        .and_then(SwitchResult::decode)
                        .unwrap_or(SwitchResult::Ok);
                    let switched_ok = matches!(result, SwitchResult::Ok | SwitchResult::RebootRequired);
                    let health = if switched_ok && flight.action != Action::Boot {
                        self.log_phase(&flight, "health", "checking health");
                        let sd = self.systemd().await?;
                        let mut h =
                            health::check(&sd, self.config.health.settle, &self.config.health.commands)
                                .await?;
                        // Switch units of this or earlier attempts are not the system's health.
                        let prefix = format!("{}-", self.config.switch.unit);
                        h.failed_units.retain(|u| !u.starts_with(&prefix));
                        h.failed_units.retain(|u| !flight.failed_before.contains(u));
                        h
                    } else {
                        health::Health::default()
                    };
                    let problem = if !switched_ok {
                        result.describe()
                    } else {
                        health.summary()
                    };
                    if decide::needs_rollback(
                        flight.action,
                        result,
                        health.is_healthy(),
                        self.config.switch.rollback,
                    ) {
                        match flight.previous.clone() {
                            Some(previous) => {
                                warn!(
                                    ferry_commit = %flight.commit, ferry_serial = flight.serial, ferry_toplevel = %flight.toplevel,
                                    ferry_phase = "rollback", "{problem}: rolling back to {}", previous.name()
                                );
                                flight.switch_result = Some(problem.clone());
                                flight.phase = Phase::RollingBack;
                                self.save_flight(state, &flight)?;
                                if flight.action.sets_profile() {
                                    self.store.set_profile(&previous).await?;
                                }
                                switcher
                                    .start(&rollback, &previous, rollback_action(flight.action))
                                    .await?;
                                continue;
                            }
                            None => {
                                let d = format!("{problem}; no previous system to roll back to");
                                return self.finish(state, &flight, OutcomeKind::Failed, &d);
                            }
                        }
                    }
                    if !switched_ok || !health.is_healthy() {
                        let d = format!("{problem}; rollback disabled");
                        return self.finish(state, &flight, OutcomeKind::Failed, &d);
                    }
                    let reboot = result == SwitchResult::RebootRequired
                        || (flight.action == Action::Switch
                            && store::reboot_required(&self.booted_system, &flight.toplevel));
                    let (kind, d) = match (flight.action, reboot) {
                        (Action::Boot, _) => (
                            OutcomeKind::Installed,
                            format!("release {} installed; active after reboot", flight.serial),
                        ),
                        (_, true) => (
                            OutcomeKind::SuccessRebootRequired,
                            format!(
                                "{} runs release {}; reboot required",
                                self.config.host, flight.serial
                            ),
                        ),
                        (_, false) => (
                            OutcomeKind::Success,
                            format!("{} runs release {}", self.config.host, flight.serial),
                        ),
                    };
                    return self.finish(state, &flight, kind, &d);
                }
                Phase::RollingBack => {
                    let previous = flight.previous.clone().expect("a rollback has a previous system");
                    let result = match switcher.observe(&rollback).await? {
                        Observed::Running => switcher.wait(&rollback).await?,
                        Observed::Finished(r) => r,
                        Observed::Unknown if self.running_system().as_ref() == Some(&previous) => {
                            SwitchResult::Ok
                        }
                        Observed::Unknown => {
                            switcher
                                .start(&rollback, &previous, rollback_action(flight.action))
                                .await?;
                            switcher.wait(&rollback).await?
                        }
                    };
                    let problem = flight
                        .switch_result
                        .clone()
                        .unwrap_or_else(|| "deploy failed".into());
                    let d = match result {
                        SwitchResult::Ok | SwitchResult::RebootRequired => {
                            format!("{problem}; rolled back to {}", previous.name())
                        }
                        other => format!("{problem}; rollback failed too: {}", other.describe()),
                    };
                    return self.finish(state, &flight, OutcomeKind::Failed, &d);
                }
            }
        }
    }

    fn log_phase(&self, flight: &InFlight, phase: &str, message: &str) {
        info!(
            ferry_commit = %flight.commit, ferry_serial = flight.serial, ferry_toplevel = %flight.toplevel,
            ferry_phase = phase, "{message}"
        );
    }

    fn save_flight(&self, state: &mut State, flight: &InFlight) -> Result<()> {
        state.in_flight = Some(flight.clone());
        Ok(self.state.save(state)?)
    }

    /// Ends a deploy: records the outcome, clears the in-flight record and
    /// queues the final status, in that order.
    fn finish(
        &self,
        state: &mut State,
        flight: &InFlight,
        kind: OutcomeKind,
        description: &str,
    ) -> Result<Reconciled> {
        let outcome = kind.as_str();
        if kind.is_success() {
            info!(
                ferry_commit = %flight.commit, ferry_serial = flight.serial, ferry_toplevel = %flight.toplevel,
                ferry_phase = "done", ferry_outcome = outcome, "{description}"
            );
        } else {
            error!(
                ferry_commit = %flight.commit, ferry_serial = flight.serial, ferry_toplevel = %flight.toplevel,
                ferry_phase = "done", ferry_outcome = outcome, "{description}"
            );
        }
        state.in_flight = None;
        state.last_seen_tip = Some(flight.commit.clone());
        let outcome = Outcome {
            commit: flight.commit.clone(),
            serial: flight.serial,
            toplevel: Some(flight.toplevel.clone()),
            result: kind,
            description: description.to_owned(),
            at: Utc::now(),
        };
        if kind.is_success() {
            state.last_success = Some(outcome.clone());
        }
        state.last_outcome = Some(outcome);
        self.state.save(state)?;
        let (status, result) = match kind {
            OutcomeKind::Success => (
                StatusState::Success,
                Reconciled::Deployed {
                    reboot_required: false,
                },
            ),
            OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed => (
                StatusState::Success,
                Reconciled::Deployed {
                    reboot_required: true,
                },
            ),
            OutcomeKind::Failed => (StatusState::Failure, Reconciled::Failed(description.to_owned())),
            OutcomeKind::Refused => (StatusState::Failure, Reconciled::Refused(description.to_owned())),
            OutcomeKind::Error => (StatusState::Error, Reconciled::Error(description.to_owned())),
        };
        self.report(&flight.commit, flight.source.as_ref(), status, description);
        Ok(result)
    }
}

/// A refusal to record: where it happened, of what, and why.
struct Refused<'a> {
    phase: &'static str,
    tip: &'a CommitId,
    serial: Option<u64>,
    /// Where else to report (the release's source commit), when trustworthy.
    source: Option<&'a CommitId>,
    /// Plain words for the commit status.
    summary: String,
    /// The full reason, for the journal and `once`.
    detail: String,
}

/// The action that puts the previous system back.
fn rollback_action(action: Action) -> Action {
    match action {
        Action::Test => Action::Test,
        _ => Action::Switch,
    }
}

impl InFlight {
    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Realising => "realise",
            Phase::Switching => "switch",
            Phase::Checking => "health",
            Phase::RollingBack => "rollback",
        }
    }
}
