//! The ports a reconcile reaches the world through: the deploy repository,
//! the binary caches, the Nix store and profile, systemd units, the commit
//! status sink, rebooting, and the clock (with the host's time zone). The
//! reconcile sees only these traits, so its rules are tested in milliseconds
//! with fakes (`reconcile/tests/`); the live implementations are
//! `app::live`'s thin adapters over `io`, which the end-to-end tests cover on
//! the real things.
//!
//! The agent runs on a single-threaded runtime, so these futures need not be
//! `Send`.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_signer::{Action, AllowedSigners, CommitId, StorePath, VerifiedTip, VerifyError};

use crate::io::cache::client::{CacheError, Preflight};
use crate::io::git::source::SourceError;
use crate::io::nix::StoreError;
use crate::io::systemd::bus::SystemdError;
use crate::io::systemd::health::{Health, HealthCommand};
use crate::io::systemd::switch::{Observed, SwitchResult};
use crate::policy::window::HostZone;
use crate::state::{BootId, StateError, Unsent};

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

/// The clock: every "now" of a reconcile, and the host's time zone, which
/// windows and reboot moments are measured in. Tests move it by hand.
pub trait Clock {
    fn now(&self) -> DateTime<Utc>;
    fn zone(&self) -> HostZone;
}

/// Where commit statuses (and, with receipts on, receipts) go.
pub trait StatusSink {
    /// Queues `unsent`'s status (for the forge, if `to_forge`) and its
    /// receipt (if any) durably; a second call with the same `id` (after a
    /// crash) queues nothing more. An error (a full disk) leaves the status
    /// recorded in the state, to be queued again.
    fn queue(&mut self, unsent: &Unsent) -> Result<(), StateError>;
    /// Delivers what waits (best effort; problems are logged).
    fn deliver(&mut self) -> Pending<'_, ()>;
}

/// The ports of an agent: live ones built from its configuration, or fakes.
pub struct Ports {
    pub source: Box<dyn ReleaseSource>,
    pub caches: Box<dyn ClosureCache>,
    pub store: Box<dyn NixStore>,
    pub units: Box<dyn Units>,
    pub statuses: Box<dyn StatusSink>,
    pub reboot: Box<dyn Reboot>,
    pub clock: Box<dyn Clock>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}
