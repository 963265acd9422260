//! The seams between a reconcile and the systems it drives: the deploy
//! repository, the binary caches, the Nix store and profile, systemd units,
//! the commit status sink, rebooting, and the clock. `reconcile.rs` sees only these traits, so its
//! rules are tested in milliseconds with fakes; the live implementations here
//! are thin adapters over `source.rs`, `cache.rs`, `store.rs`, `switch.rs`,
//! `health.rs`, `report.rs` and `forge.rs`, which the end-to-end tests cover
//! on the real things.
//!
//! The agent runs on a single-threaded runtime, so these futures need not be
//! `Send`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_signer::{Action, AllowedSigners, CommitId, StorePath, VerifiedTip, VerifyError};
use git2::Oid;
use tracing::{error, info, warn};

use crate::cache::{BinaryCaches, CacheError, Preflight};
use crate::cache_serve::LoopbackCache;
use crate::config::{Config, HealthCommand};
use crate::decide::SwitchResult;
use crate::forge::{Delivery, ForgeClient};
use crate::health::{self, Health};
use crate::report::{CommitStatus, Outbox};
use crate::source::{Source, SourceError};
use crate::state::{BootId, StateError};
use crate::store::{self, Store, StoreError};
use crate::switch::{Attempt, Observed, Switcher};
use crate::systemd::{Systemd, SystemdError};

/// A future borrowed from its seam.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The deploy repository: where releases come from.
pub trait ReleaseSource {
    /// The branch tip, by the cheapest means (no objects fetched).
    fn remote_tip(&mut self) -> Pending<'_, Result<CommitId, SourceError>>;
    /// Fetches the branch up to `tip`.
    fn fetch(&mut self, tip: &CommitId) -> Pending<'_, Result<(), SourceError>>;
    /// Verifies `tip`: the approvals on top (against `approver_signers`) and
    /// the release below them (against `signers`) at `now`.
    fn verify(
        &mut self,
        tip: &CommitId,
        signers: &AllowedSigners,
        approver_signers: &AllowedSigners,
        now: DateTime<Utc>,
    ) -> Pending<'_, Result<VerifiedTip, Box<VerifyError>>>;
    /// Whether `tip` is `anchor` or descends from it.
    fn descends_from(&mut self, tip: &CommitId, anchor: &CommitId) -> Pending<'_, Result<bool, SourceError>>;
}

/// The binary caches a closure is substituted from.
pub trait ClosureCache {
    /// Checks that `toplevel`'s closure can be substituted, is signed by a
    /// pinned key and fits on the disk; a path in the store directory counts
    /// as present unless it is in `invalid` (see [`checked_preflight`]).
    fn preflight<'a>(
        &'a mut self,
        toplevel: &StorePath,
        invalid: &'a BTreeSet<StorePath>,
    ) -> Pending<'a, Result<Preflight, CacheError>>;
}

/// Why a closure could not be checked: the caches' answer, or Nix's.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot ask Nix which store paths are valid: {0}")]
    Store(#[from] StoreError),
}

/// The closure preflight, with every path found in the store directory
/// confirmed by Nix's database: one that exists there but that Nix holds
/// invalid is checked in the caches like a missing one (and its references
/// with it), so "present" means what Nix means by it.
pub async fn checked_preflight(
    caches: &mut dyn ClosureCache,
    store: &mut dyn NixStore,
    toplevel: &StorePath,
) -> Result<Preflight, PreflightError> {
    let mut invalid = BTreeSet::new();
    loop {
        let preflight = caches.preflight(toplevel, &invalid).await?;
        let found = store.invalid_paths(&preflight.on_disk).await?;
        if found.is_empty() {
            return Ok(preflight);
        }
        // Each round adds at least one path, so this ends.
        invalid.extend(found);
    }
}

/// The local Nix store, the system profile, and which system runs.
pub trait NixStore {
    /// Realises `toplevel`'s closure and holds it with the agent's GC root.
    fn realise(&mut self, toplevel: &StorePath) -> Pending<'_, Result<(), StoreError>>;
    /// Points the system profile at `toplevel` (a new generation).
    fn set_profile(&mut self, toplevel: &StorePath) -> Pending<'_, Result<(), StoreError>>;
    /// Which of `paths` Nix's database does not hold valid.
    fn invalid_paths(&mut self, paths: &[StorePath]) -> Pending<'_, Result<Vec<StorePath>, StoreError>>;
    /// The system the profile points at.
    fn profile_system(&self) -> Option<StorePath>;
    /// The running system (`/run/current-system`).
    fn running_system(&self) -> Option<StorePath>;
    /// Whether `toplevel`'s kernel, initrd or modules differ from the booted
    /// system's.
    fn kernel_changed(&self, toplevel: &StorePath) -> bool;
    /// The system this boot started (`/run/booted-system`).
    fn booted_system(&self) -> Option<StorePath>;
}

/// Which activation of a release a unit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Activating the release's system.
    Switch,
    /// Putting the previous system back.
    Rollback,
}

/// systemd: the switch units of a release, failed units, health.
pub trait Units {
    /// Units failed right now.
    fn failed_units(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>>;
    /// Starts `switch-to-configuration <action>` of `system` in the unit of
    /// release `serial`'s `activation`.
    fn start(
        &mut self,
        serial: u64,
        activation: Activation,
        system: &StorePath,
        action: Action,
    ) -> Pending<'_, Result<(), SystemdError>>;
    /// Whether that unit runs, has finished (and how), or is unknown.
    fn observe(&mut self, serial: u64, activation: Activation)
        -> Pending<'_, Result<Observed, SystemdError>>;
    /// Waits for that unit to end.
    fn wait(
        &mut self,
        serial: u64,
        activation: Activation,
    ) -> Pending<'_, Result<SwitchResult, SystemdError>>;
    /// Waits `settle`, then lists failed units and runs the health commands.
    fn check_health<'a>(
        &'a mut self,
        settle: Duration,
        commands: &'a [HealthCommand],
    ) -> Pending<'a, Result<Health, SystemdError>>;
    /// The switch and rollback units (of any release) starting, running or
    /// stopping right now: no reboot while one is.
    fn activations_running(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>>;
}

/// Rebooting the host.
pub trait Reboot {
    /// Names the boot this runs in; another boot has another id.
    fn this_boot(&mut self) -> Pending<'_, Result<BootId, SystemdError>>;
    /// Asks systemd to reboot now; a repeated request joins the first.
    fn request(&mut self) -> Pending<'_, Result<(), SystemdError>>;
}

/// The wall clock, which windows and reboot moments are measured on (in the
/// host's time zone, `chrono::Local`).
pub trait Clock {
    fn now(&self) -> DateTime<Utc>;
}

/// Where commit statuses go.
pub trait StatusSink {
    /// Queues `status`, recorded in the state as `id`, durably; a second
    /// call with the same `id` (after a crash) queues nothing. An error (a
    /// full disk) leaves the status recorded in the state, to be queued again.
    fn queue(&mut self, id: u64, status: &CommitStatus) -> Result<(), StateError>;
    /// Delivers what waits (best effort; problems are logged).
    fn deliver(&mut self) -> Pending<'_, ()>;
}

/// The seams of an agent: live ones built from its configuration, or fakes.
pub struct Seams {
    pub source: Box<dyn ReleaseSource>,
    pub caches: Box<dyn ClosureCache>,
    pub store: Box<dyn NixStore>,
    pub units: Box<dyn Units>,
    pub statuses: Box<dyn StatusSink>,
    pub reboot: Box<dyn Reboot>,
    pub clock: Box<dyn Clock>,
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams").finish_non_exhaustive()
    }
}

impl Seams {
    /// Opens the deploy repository clone, the outbox and the caches for
    /// `config`; systemd is connected to when first needed.
    pub fn live(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let source = Source::open(
            &config.state_dir.join("deploy.git"),
            &config.source.url,
            &config.source.branch,
            config.source.token_file.as_deref(),
        )?;
        let outbox = Outbox::open(&config.state_dir)?;
        Ok(Seams {
            source: Box::new(GitSource(Arc::new(Mutex::new(source)))),
            caches: Box::new(LiveCaches(BinaryCaches::for_config(&config.cache))),
            store: Box::new(LiveStore::for_config(config)),
            units: Box::new(SystemdUnits {
                systemd: LazySystemd::default(),
                unit_prefix: config.switch.unit.clone(),
                timeout: config.switch.timeout,
                record_dir: config.state_dir.clone(),
                agent_exe: std::env::current_exe().context("cannot find this agent's executable")?,
            }),
            statuses: match &config.report.forge {
                Some(target) => Box::new(ForgeSink {
                    outbox,
                    forge: ForgeClient::new(target),
                }),
                None => Box::new(NoForge(outbox)),
            },
            reboot: Box::new(SystemdReboot {
                systemd: LazySystemd::default(),
            }),
            clock: Box::new(SystemClock),
        })
    }
}

/// The deploy repository through libgit2, off the async thread.
struct GitSource(Arc<Mutex<Source>>);

impl GitSource {
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Source) -> T + Send + 'static,
    ) -> impl Future<Output = T> + 'static {
        let source = self.0.clone();
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
        Box::pin(self.run(move |s| {
            let tip = Oid::from_str(tip.as_str()).map_err(|e| Box::new(VerifyError::Git(e.into())))?;
            ferry_signer::verify_tip(s.repo(), tip, &signers, &approver_signers, now).map_err(Box::new)
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
            caches: BinaryCaches::for_config(&config.cache),
            current_system: PathBuf::from(store::CURRENT_SYSTEM),
            booted_system: PathBuf::from(store::BOOTED_SYSTEM),
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
        store::resolve_system(&self.current_system)
    }

    fn kernel_changed(&self, toplevel: &StorePath) -> bool {
        store::reboot_required(&self.booted_system, toplevel)
    }

    fn booted_system(&self) -> Option<StorePath> {
        store::resolve_system(&self.booted_system)
    }
}

/// Realises `toplevel` from `caches` through the loopback relay: the closure
/// is walked again with freshly read credentials (every narinfo checked, as
/// in the preflight), the relay serves just those objects, and Nix realises
/// from it; a failure says what the cache answered.
pub async fn realise_via_relay(
    store: &Store,
    caches: &BinaryCaches,
    toplevel: &StorePath,
    root_name: &str,
) -> Result<(), StoreError> {
    let store_dir = Path::new(ferry_signer::names::STORE_DIR);
    let credentials = caches
        .load_credentials()
        .map_err(|e| StoreError::Closure(e.to_string()))?;
    // As in the preflight: what exists in the store but is invalid to Nix
    // is served too.
    let mut invalid = BTreeSet::new();
    let objects = loop {
        let (preflight, objects) = caches
            .walk(toplevel, store_dir, &credentials, &invalid)
            .await
            .map_err(|e| StoreError::Closure(e.to_string()))?;
        let found = store.invalid_paths(&preflight.on_disk).await?;
        if found.is_empty() {
            break objects;
        }
        invalid.extend(found);
    };
    let relay = LoopbackCache::start(caches.clone(), credentials, objects)
        .await
        .map_err(StoreError::Relay)?;
    let result = store
        .realise_from(toplevel, root_name, relay.substituters())
        .await;
    match (result, relay.failure()) {
        (Err(nix), Some(cache)) => Err(StoreError::Cache {
            nix: Box::new(nix),
            cache,
        }),
        (result, _) => result,
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
}

/// No forge configured (`forge = "none"`): statuses go nowhere, and any
/// still waiting from when a forge was configured are dropped.
struct NoForge(Outbox);

impl StatusSink for NoForge {
    fn queue(&mut self, _: u64, _: &CommitStatus) -> Result<(), StateError> {
        Ok(())
    }

    fn deliver(&mut self) -> Pending<'_, ()> {
        // Bounded: an entry that cannot be removed is not looked at forever.
        for _ in 0..=crate::report::MAX_OUTBOX_ENTRIES {
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

/// The durable outbox, drained to the forge.
struct ForgeSink {
    outbox: Outbox,
    forge: ForgeClient,
}

impl StatusSink for ForgeSink {
    fn queue(&mut self, id: u64, status: &CommitStatus) -> Result<(), StateError> {
        let dropped = self.outbox.push_once(id, status)?;
        if dropped > 0 {
            warn!(dropped, "status outbox full: dropped the oldest statuses");
        }
        Ok(())
    }

    fn deliver(&mut self) -> Pending<'_, ()> {
        Box::pin(async move {
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
                        Some(Delivery::Misconfigured(why)) => {
                            error!("commit statuses wait in the outbox: {why}")
                        }
                        _ => {}
                    }
                }
                Err(e) => error!("cannot read the status outbox: {e}"),
            }
        })
    }
}
