//! The live wiring: the reconcile's ports implemented over the real
//! adapters — git through libgit2 off the async thread, the caches, the Nix
//! store (realised through the relay), systemd over D-Bus connected on first
//! use, the system clock and the host's time zone, and the outbox drained to
//! the forge. Each is a thin shim; the end-to-end tests cover them on the
//! real things.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_signer::forge::with_jitter;
use ferry_signer::{Action, AllowedSigners, CommitId, StorePath, VerifiedTip, VerifyError};
use git2::Oid;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::io::cache::client::{BinaryCaches, CacheError, Preflight};
use crate::io::cache::relay::realise_via_relay;
use crate::io::forge::{Delivery, ForgeClient};
use crate::io::git::source::{Source, SourceError};
use crate::io::nix::{self, Store, StoreError};
use crate::io::receipts::{ReceiptWriter, Written};
use crate::io::systemd::bus::{Systemd, SystemdError};
use crate::io::systemd::health::{self, Health, HealthCommand};
use crate::io::systemd::switch::{Attempt, Observed, SwitchResult, Switcher};
use crate::policy::window::HostZone;
use crate::reconcile::ports::{
    Activation, Clock, ClosureCache, NixStore, Pending, Ports, Reboot, ReleaseSource, StatusSink, Units,
};
use crate::reconcile::Agent;
use crate::state::outbox::{self, Outbox};
use crate::state::receipts::{self as receipt_queue, ReceiptQueue};
use crate::state::{BootId, StateError, Unsent};

/// The agent for `config`, reaching the real world: its allowed signers
/// (and the approvers', when a file of their own), state, outbox and
/// deploy repository clone.
pub fn agent(config: Config) -> anyhow::Result<Agent> {
    let signers = AllowedSigners::load(&config.source.allowed_signers)?;
    let approver_signers = config
        .approvals
        .allowed_signers
        .as_deref()
        .map(AllowedSigners::load)
        .transpose()?;
    let ports = ports(&config)?;
    Ok(Agent::with_ports(config, signers, ports)?.with_approver_signers(approver_signers))
}

/// The live ports for `config`: opens the deploy repository clone, the
/// outbox and the caches; systemd is connected to when first needed.
pub fn ports(config: &Config) -> anyhow::Result<Ports> {
    use anyhow::Context;
    let source = Source::open(
        &config.state_dir.join("deploy.git"),
        &config.source.url,
        &config.source.branch,
        config.source.token_file.as_deref(),
    )?
    .with_s3_credentials(config.source.s3_credentials_file.as_deref());
    let outbox = Outbox::open(&config.state_dir)?;
    let caches = BinaryCaches::for_config(&config.cache);
    Ok(Ports {
        source: Box::new(GitSource {
            source: Arc::new(Mutex::new(source)),
            host: config.host.clone(),
        }),
        // One set of caches for both: the realise takes the walk its
        // preflight made instead of walking the closure again.
        caches: Box::new(LiveCaches(caches.clone())),
        store: Box::new(LiveStore::sharing(config, caches)),
        units: Box::new(SystemdUnits {
            systemd: LazySystemd::default(),
            unit_prefix: config.switch.unit.clone(),
            timeout: config.switch.timeout,
            record_dir: config.state_dir.clone(),
            agent_exe: std::env::current_exe().context("cannot find this agent's executable")?,
        }),
        statuses: {
            let forge: Box<dyn StatusSink> = match &config.report.forge {
                Some(target) => Box::new(ForgeSink::new(outbox, ForgeClient::new(target))),
                None => Box::new(NoForge(outbox)),
            };
            match &config.report.receipts {
                Some(target) => Box::new(ReceiptSink {
                    forge,
                    queue: ReceiptQueue::open(&config.state_dir)?,
                    writer: ReceiptWriter::new(target.clone()),
                    host: config.host.clone(),
                    current_system: PathBuf::from(nix::CURRENT_SYSTEM),
                    failures: 0,
                    retry_at: None,
                }),
                None => forge,
            }
        },
        reboot: Box::new(SystemdReboot {
            systemd: LazySystemd::default(),
        }),
        clock: Box::new(SystemClock),
    })
}

/// The deploy repository through libgit2, off the async thread. A release
/// is read for `host` alone: no other host's entry decides anything here.
struct GitSource {
    source: Arc<Mutex<Source>>,
    host: ferry_signer::HostName,
}

impl GitSource {
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Source) -> T + Send + 'static,
    ) -> impl Future<Output = T> + 'static {
        let source = self.source.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&source.lock().expect("source lock")))
                .await
                .expect("git tasks do not panic")
        }
    }
}

fn oid(commit: &CommitId) -> Result<Oid, SourceError> {
    Ok(Oid::from_str(commit.as_str())?)
}

impl ReleaseSource for GitSource {
    fn remote_tip(&mut self) -> Pending<'_, Result<CommitId, SourceError>> {
        let tip = self.run(|s| s.remote_tip());
        Box::pin(async move { tip.await.map(CommitId::from) })
    }

    fn fetch(&mut self, tip: &CommitId) -> Pending<'_, Result<(), SourceError>> {
        let tip = oid(tip);
        Box::pin(async move {
            let tip = tip?;
            self.run(move |s| s.fetch(tip)).await
        })
    }

    fn verify(
        &mut self,
        tip: &CommitId,
        signers: &AllowedSigners,
        approver_signers: &AllowedSigners,
        now: DateTime<Utc>,
    ) -> Pending<'_, Result<VerifiedTip, Box<VerifyError>>> {
        let signers = signers.clone();
        let approver_signers = approver_signers.clone();
        let tip = tip.clone();
        let host = self.host.clone();
        Box::pin(self.run(move |s| {
            let tip = Oid::from_str(tip.as_str()).map_err(|e| Box::new(VerifyError::Git(e.into())))?;
            let scope = ferry_signer::Scope::Host(&host);
            ferry_signer::verify_tip_scoped(s.repo(), tip, &signers, &approver_signers, now, scope)
                .map_err(Box::new)
        }))
    }

    fn descends_from(&mut self, tip: &CommitId, anchor: &CommitId) -> Pending<'_, Result<bool, SourceError>> {
        let ids = oid(tip).and_then(|t| Ok((t, oid(anchor)?)));
        Box::pin(async move {
            let (tip, anchor) = ids?;
            self.run(move |s| s.descends_from(tip, anchor)).await
        })
    }
}

/// The configured binary caches, checked against this host's store.
#[derive(Debug, Clone)]
pub struct LiveCaches(pub BinaryCaches);

impl ClosureCache for LiveCaches {
    fn preflight<'a>(
        &'a mut self,
        toplevel: &StorePath,
        invalid: &'a BTreeSet<StorePath>,
    ) -> Pending<'a, Result<Preflight, CacheError>> {
        let toplevel = toplevel.clone();
        Box::pin(async move {
            self.0
                .preflight_except(&toplevel, Path::new(ferry_signer::names::STORE_DIR), invalid)
                .await
        })
    }
}

/// The host's Nix store and profile, and the symlinks naming the running and
/// booted systems.
#[derive(Debug, Clone)]
pub struct LiveStore {
    pub store: Store,
    /// The caches the closure is realised from, relayed to Nix on loopback.
    pub caches: BinaryCaches,
    /// `/run/current-system`.
    pub current_system: PathBuf,
    /// `/run/booted-system`.
    pub booted_system: PathBuf,
}

impl LiveStore {
    /// The store and profile `config` names, on this host.
    pub fn for_config(config: &Config) -> Self {
        Self::sharing(config, BinaryCaches::for_config(&config.cache))
    }

    /// [`LiveStore::for_config`] realising from `caches`, which the
    /// preflight uses too (a clone shares its last walk).
    pub fn sharing(config: &Config, caches: BinaryCaches) -> Self {
        LiveStore {
            store: Store {
                profile: config.switch.profile.clone(),
                gc_roots: config.state_dir.join("gcroots"),
                substituters: config.cache.substituters.clone(),
                trusted_public_keys: config
                    .cache
                    .trusted_public_keys
                    .iter()
                    .map(|k| k.to_string())
                    .collect(),
                realise_timeout: config.switch.timeout.max(Duration::from_secs(3600)),
            },
            caches,
            current_system: PathBuf::from(nix::CURRENT_SYSTEM),
            booted_system: PathBuf::from(nix::BOOTED_SYSTEM),
        }
    }
}

impl NixStore for LiveStore {
    fn realise(&mut self, toplevel: &StorePath) -> Pending<'_, Result<(), StoreError>> {
        let toplevel = toplevel.clone();
        Box::pin(async move { realise_via_relay(&self.store, &self.caches, &toplevel, "current").await })
    }

    fn set_profile(&mut self, toplevel: &StorePath) -> Pending<'_, Result<(), StoreError>> {
        let toplevel = toplevel.clone();
        Box::pin(async move { self.store.set_profile(&toplevel).await })
    }

    fn invalid_paths(&mut self, paths: &[StorePath]) -> Pending<'_, Result<Vec<StorePath>, StoreError>> {
        let paths = paths.to_vec();
        Box::pin(async move { self.store.invalid_paths(&paths).await })
    }

    fn profile_system(&self) -> Option<StorePath> {
        self.store.profile_system()
    }

    fn running_system(&self) -> Option<StorePath> {
        nix::resolve_system(&self.current_system)
    }

    fn kernel_changed(&self, toplevel: &StorePath) -> bool {
        nix::reboot_required(&self.booted_system, toplevel)
    }

    fn booted_system(&self) -> Option<StorePath> {
        nix::resolve_system(&self.booted_system)
    }
}

/// Switch units and health over D-Bus, connected on first use.
struct SystemdUnits {
    systemd: LazySystemd,
    unit_prefix: String,
    timeout: Duration,
    record_dir: PathBuf,
    agent_exe: PathBuf,
}

/// A connection to systemd made on first use and kept.
#[derive(Default)]
struct LazySystemd(Option<Systemd>);

impl LazySystemd {
    async fn get(&mut self) -> Result<Systemd, SystemdError> {
        if let Some(s) = &self.0 {
            return Ok(s.clone());
        }
        let s = Systemd::connect().await?;
        self.0 = Some(s.clone());
        Ok(s)
    }
}

impl SystemdUnits {
    async fn systemd(&mut self) -> Result<Systemd, SystemdError> {
        self.systemd.get().await
    }

    async fn switcher(&mut self) -> Result<Switcher, SystemdError> {
        Ok(Switcher {
            systemd: self.systemd().await?,
            unit_prefix: self.unit_prefix.clone(),
            timeout: self.timeout,
            record_dir: self.record_dir.clone(),
            agent_exe: self.agent_exe.clone(),
        })
    }

    /// The switcher and the attempt of release `serial`'s `activation`.
    async fn attempt(
        &mut self,
        serial: u64,
        activation: Activation,
    ) -> Result<(Switcher, Attempt), SystemdError> {
        let switcher = self.switcher().await?;
        let attempt = switcher.attempt(serial, activation == Activation::Rollback);
        Ok((switcher, attempt))
    }
}

impl Units for SystemdUnits {
    fn failed_units(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>> {
        Box::pin(async move { self.systemd().await?.failed_units().await })
    }

    fn start(
        &mut self,
        serial: u64,
        activation: Activation,
        system: &StorePath,
        action: Action,
    ) -> Pending<'_, Result<(), SystemdError>> {
        let system = system.clone();
        Box::pin(async move {
            let (switcher, attempt) = self.attempt(serial, activation).await?;
            switcher.start(&attempt, &system, action).await
        })
    }

    fn observe(
        &mut self,
        serial: u64,
        activation: Activation,
    ) -> Pending<'_, Result<Observed, SystemdError>> {
        Box::pin(async move {
            let (switcher, attempt) = self.attempt(serial, activation).await?;
            switcher.observe(&attempt).await
        })
    }

    fn wait(
        &mut self,
        serial: u64,
        activation: Activation,
    ) -> Pending<'_, Result<SwitchResult, SystemdError>> {
        Box::pin(async move {
            let (switcher, attempt) = self.attempt(serial, activation).await?;
            switcher.wait(&attempt).await
        })
    }

    fn check_health<'a>(
        &'a mut self,
        settle: Duration,
        commands: &'a [HealthCommand],
    ) -> Pending<'a, Result<Health, SystemdError>> {
        Box::pin(async move { health::check(&self.systemd().await?, settle, commands).await })
    }

    fn activations_running(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>> {
        Box::pin(async move {
            let pattern = format!("{}-*.service", self.unit_prefix);
            self.systemd().await?.active_units(&pattern).await
        })
    }
}

/// The kernel's boot id, which every boot of a machine changes.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Rebooting through systemd over D-Bus, connected on first use.
struct SystemdReboot {
    systemd: LazySystemd,
}

impl SystemdReboot {
    async fn systemd(&mut self) -> Result<Systemd, SystemdError> {
        self.systemd.get().await
    }
}

impl Reboot for SystemdReboot {
    /// The kernel's boot id and when systemd started: a container shares
    /// its machine's kernel (and boot id), but its systemd starts anew when
    /// it reboots.
    fn this_boot(&mut self) -> Pending<'_, Result<BootId, SystemdError>> {
        Box::pin(async move {
            let kernel = std::fs::read_to_string(KERNEL_BOOT_ID).unwrap_or_default();
            let started = self.systemd().await?.userspace_started().await?;
            let id = format!("{}/{started}", kernel.trim());
            Ok(id.parse().expect("a uuid and a number make a boot id"))
        })
    }

    fn request(&mut self) -> Pending<'_, Result<(), SystemdError>> {
        Box::pin(async move { self.systemd().await?.reboot().await })
    }
}

/// The system clock.
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn zone(&self) -> HostZone {
        HostZone::Local
    }
}

/// No forge configured (`forge = "none"`): statuses go nowhere, and any
/// still waiting from when a forge was configured are dropped.
struct NoForge(Outbox);

impl StatusSink for NoForge {
    fn queue(&mut self, _: &Unsent) -> Result<(), StateError> {
        Ok(())
    }

    fn deliver(&mut self) -> Pending<'_, ()> {
        // Bounded: an entry that cannot be removed is not looked at forever.
        for _ in 0..=crate::state::outbox::MAX_OUTBOX_ENTRIES {
            match self.0.peek() {
                Ok(Some(queued)) => {
                    if let Err(e) = self.0.remove(queued.seq) {
                        error!("cannot empty the status outbox: {e}");
                        break;
                    }
                }
                Ok(None) => break,
                // An unreadable entry was removed by `peek` itself.
                Err(StateError::Corrupt { .. }) => {}
                Err(e) => {
                    error!("cannot read the status outbox: {e}");
                    break;
                }
            }
        }
        Box::pin(std::future::ready(()))
    }
}

/// The durable outbox, drained to the forge in order, leaving the forge
/// alone while it rate-limits the agent.
#[derive(Debug)]
pub struct ForgeSink {
    outbox: Outbox,
    forge: ForgeClient,
    /// Until when the forge asked to be left alone (a rate limit, with
    /// jitter), as the outbox remembers it across restarts.
    limited_until: Option<DateTime<Utc>>,
}

impl ForgeSink {
    /// The sink for `outbox`, delivering through `forge`; a rate limit the
    /// outbox remembers (from before a restart) still holds.
    pub fn new(outbox: Outbox, forge: ForgeClient) -> Self {
        Self {
            limited_until: outbox.limited_until(),
            outbox,
            forge,
        }
    }

    /// Remembers the rate limit (or that there is none any more).
    fn limit(&mut self, until: Option<DateTime<Utc>>) {
        if self.limited_until == until {
            return;
        }
        self.limited_until = until;
        if let Err(e) = self.outbox.set_limited_until(until) {
            warn!("cannot remember the forge's rate limit: {e}");
        }
    }
}

impl StatusSink for ForgeSink {
    fn queue(&mut self, unsent: &Unsent) -> Result<(), StateError> {
        if !unsent.to_forge {
            return Ok(());
        }
        let dropped = self.outbox.push_once(unsent.id, &unsent.status)?;
        if dropped > 0 {
            warn!(dropped, "status outbox full: dropped the oldest statuses");
        }
        Ok(())
    }

    fn deliver(&mut self) -> Pending<'_, ()> {
        Box::pin(async move {
            let now = Utc::now();
            // Left alone until then: one request after it, then as the
            // forge answers.
            if self.limited_until.is_some_and(|until| now < until) {
                return;
            }
            match outbox::drain(&self.outbox, &self.forge).await {
                Ok(d) => {
                    if d.delivered > 0 || d.dropped > 0 {
                        info!(
                            delivered = d.delivered,
                            dropped = d.dropped,
                            "commit statuses delivered"
                        );
                    }
                    match d.stopped {
                        Some(Delivery::RateLimited { until }) => {
                            use rand_core::RngCore;
                            let until = with_jitter(until, now, rand_core::OsRng.next_u64());
                            let waiting = self.outbox.len().unwrap_or_default();
                            warn!(
                                "the forge limits the rate of requests until {}: {waiting} commit statuses wait in the outbox",
                                until.format("%H:%M:%S UTC")
                            );
                            self.limit(Some(until));
                        }
                        Some(Delivery::Retry(why)) => {
                            self.limit(None);
                            warn!("commit statuses wait in the outbox: {why}")
                        }
                        Some(Delivery::Misconfigured(why)) => {
                            self.limit(None);
                            error!("commit statuses wait in the outbox: {why}")
                        }
                        Some(Delivery::Delivered | Delivery::Rejected(_)) | None => self.limit(None),
                    }
                }
                Err(e) => error!("cannot read the status outbox: {e}"),
            }
        })
    }
}

/// Receipts beside the statuses (`report.receipts`): the release's status
/// becomes this host's receipt — with the system it runs and its boot —
/// queued durably in `<state_dir>/receipts` and written to the bucket,
/// signed with the host key, after the statuses are delivered; what the
/// forge gets is `forge`'s to deliver. A bucket that fails is asked again
/// after a growing, jittered pause (`reporting::receipt_retry`).
struct ReceiptSink {
    forge: Box<dyn StatusSink>,
    queue: ReceiptQueue,
    writer: ReceiptWriter,
    host: ferry_signer::HostName,
    /// `/run/current-system`.
    current_system: PathBuf,
    /// Drains in a row that stopped at a fault.
    failures: u32,
    /// No write before then.
    retry_at: Option<DateTime<Utc>>,
}

impl StatusSink for ReceiptSink {
    fn queue(&mut self, unsent: &Unsent) -> Result<(), StateError> {
        if let Some(note) = &unsent.receipt {
            let receipt = ferry_signer::receipt::Receipt {
                release: unsent.status.commit.clone(),
                source: note.source.clone(),
                host: self.host.clone(),
                state: unsent.status.state,
                time: Utc::now(),
                toplevel: nix::resolve_system(&self.current_system),
                boot: std::fs::read_to_string(KERNEL_BOOT_ID)
                    .ok()
                    .map(|b| b.trim().to_owned())
                    .filter(|b| {
                        !b.is_empty() && b.len() <= 64 && b.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                    }),
                description: unsent.status.description.clone(),
            };
            let dropped = self.queue.put(&receipt)?;
            if dropped > 0 {
                warn!(
                    dropped,
                    "receipt queue full: dropped the receipts of the oldest releases"
                );
            }
        }
        self.forge.queue(unsent)
    }

    fn deliver(&mut self) -> Pending<'_, ()> {
        Box::pin(async move {
            self.forge.deliver().await;
            let now = Utc::now();
            if self.retry_at.is_some_and(|at| now < at) {
                return;
            }
            let drain = match receipt_queue::drain(&self.queue, &self.writer).await {
                Ok(d) => d,
                Err(e) => {
                    error!("cannot read the receipt queue: {e}");
                    return;
                }
            };
            if drain.written > 0 || drain.dropped > 0 {
                info!(
                    written = drain.written,
                    dropped = drain.dropped,
                    "receipts written to {}",
                    self.writer.describe()
                );
            }
            let Some(stopped) = drain.stopped else {
                self.failures = 0;
                self.retry_at = None;
                return;
            };
            use rand_core::RngCore;
            let pause = crate::policy::reporting::receipt_retry(self.failures, rand_core::OsRng.next_u64());
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(now + pause);
            let waiting = self.queue.len().unwrap_or_default();
            let again = format!(
                "{waiting} receipt(s) wait in the queue, written again at the first poll after {}s",
                pause.as_secs()
            );
            match stopped {
                Written::Retry(why) => warn!("{why}: {again}"),
                Written::Misconfigured(why) => error!("{why}: {again}"),
                Written::Written | Written::Rejected(_) => {}
            }
        })
    }
}
