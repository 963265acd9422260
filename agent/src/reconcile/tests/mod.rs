//! The world the reconcile tests run in: fakes of every port (no network,
//! store, systemd or runtime), the `Host` they share, and helpers. The rules
//! themselves are tested in one module per section below. Every fake answers at once, so a reconcile completes in
//! one poll; a fake told to "crash" at an effect never answers, and dropping
//! the reconcile there is an agent killed at that instant.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_signer::{
    Action, AllowedSigners, Approval, CommitId, HostEntry, Release, Signer, StorePath, VerifiedRelease,
    VerifiedTip, VerifyError,
};
use futures_util::FutureExt;

use super::*;
use crate::io::cache::client::{CacheError, Preflight};
use crate::io::durable;
use crate::io::git::source::SourceError;
use crate::io::nix::StoreError;
use crate::io::systemd::bus::SystemdError;
use crate::io::systemd::health::Health;
use crate::io::systemd::health::HealthCommand;
use crate::policy::window::HostZone;
use crate::reconcile::ports::{
    Activation, Clock, ClosureCache, NixStore, Pending, Ports, Reboot, ReleaseSource, StatusSink, Units,
};
use crate::state::outbox::Outbox;
use crate::state::receipts::ReceiptQueue;
use crate::state::{StateError, Unsent};

mod approvals;
mod crashes;
mod faults;
mod pipeline;
mod reboots;
mod receipts;
mod stops;

/// Where the tests' clock starts: Wednesday 6 January 2027, 12:00 UTC. Time
/// moves only when a test moves `World::now`.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-06T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The host the tests run as.
fn web1() -> ferry_signer::HostName {
    "web1".parse().unwrap()
}

/// The host's time zone in these tests: +01:00 whatever the machine's.
const ZONE: chrono::FixedOffset = match chrono::FixedOffset::east_opt(3600) {
    Some(z) => z,
    None => panic!("a valid offset"),
};

const R1: &str = "1111111111111111111111111111111111111111";

const R2: &str = "2222222222222222222222222222222222222222";

const SOURCE: &str = "5555555555555555555555555555555555555555";

fn commit(s: &str) -> CommitId {
    s.parse().unwrap()
}

fn system(c: char) -> StorePath {
    format!("/nix/store/{}-nixos-system-web1", c.to_string().repeat(32))
        .parse()
        .unwrap()
}

/// What a release in the fake repository verifies to.
#[derive(Debug, Clone)]
enum Verifies {
    As(VerifiedRelease),
    /// A release with approvals on top (the key is the last approval).
    Approved(VerifiedRelease, Vec<Approval>),
    Unsigned,
    Unreadable,
}

/// What the fake cache says of a closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    Yes,
    Missing,
    /// The cache answers 503: a transient fault, retried at the next poll.
    Unavailable,
    /// The cache answers 401 to this host's credentials.
    Denied,
    Unsigned,
    Oversized,
    DiskUnknown,
    /// Less room in the store than the closure needs.
    DiskFull,
}

/// A switch unit as the fake systemd holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Running(SwitchResult),
    Finished(SwitchResult),
}

/// Everything outside the agent, and what the agent did to it.
#[derive(Debug)]
struct World {
    tip: CommitId,
    releases: BTreeMap<CommitId, Verifies>,
    /// How many times a tip was verified.
    verifications: usize,
    descends: bool,
    cached: Cached,
    running: Option<StorePath>,
    profile: Option<StorePath>,
    /// Closure paths found in the store directory, and those of them Nix's
    /// database holds invalid.
    on_disk: Vec<StorePath>,
    invalid: Vec<StorePath>,
    /// How the next realises fail, one each (then they succeed).
    realise_fails: Vec<RealiseFails>,
    /// How the unit of each (serial, activation) ends once started.
    ends: BTreeMap<(u64, bool), SwitchResult>,
    units: BTreeMap<(u64, bool), Unit>,
    health: Health,
    /// What the next health check finds instead of `health` (once).
    health_interrupted: Option<Health>,
    /// The effect at which the agent is killed (once), after letting
    /// `crash_skip` calls of it through.
    crash_at: Option<&'static str>,
    crash_skip: usize,
    /// Effects, in order, as `verb argument`.
    effects: Vec<String>,
    statuses: Vec<(CommitId, StatusState, String)>,
    /// The receipts queued: release, its source, state and words.
    receipts: Vec<(CommitId, Option<CommitId>, StatusState, String)>,
    /// The state file as the store's `realise` found it.
    state_at_realise: Option<State>,
    state_dir: std::path::PathBuf,
    /// The clock.
    now: DateTime<Utc>,
    /// Whether the new system's kernel differs from the booted one.
    kernel_changed: bool,
    /// Which boot this is (a reboot counts up) and what it booted.
    boot: u32,
    booted: Option<StorePath>,
    /// Switch units running, which hold a reboot back.
    activations: Vec<String>,
}

/// How a fake realise fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RealiseFails {
    /// Nix refuses the closure.
    Refused,
    /// Nix stopped by a signal (the agent's stop reached it).
    Stopped,
    /// The store's file system is full.
    StoreFull,
    /// The binary cache stalled mid-NAR (the relay says so).
    CacheStalled,
}

impl RealiseFails {
    fn error(self) -> StoreError {
        let refused = || StoreError::Failed {
            program: "nix-store",
            status: "exit status: 1".into(),
            stderr: "copying 1 paths... | error: path is not valid".into(),
        };
        match self {
            RealiseFails::Refused => refused(),
            RealiseFails::Stopped => StoreError::Interrupted {
                program: "nix-store",
                how: "killed by signal SIGTERM".into(),
            },
            RealiseFails::StoreFull => StoreError::NoSpace {
                program: "nix-store",
                line: "writing to file: No space left on device".into(),
            },
            RealiseFails::CacheStalled => StoreError::Cache {
                nix: Box::new(refused()),
                cache: "http://cache.example.com stalled".into(),
                summary: "error: binary cache http://cache.example.com stalled mid-download".into(),
            },
        }
    }
}

type Shared = Rc<RefCell<World>>;

/// An effect that answers now, or never when the agent is killed at it.
fn effect<'a, T: 'a>(
    world: &Shared,
    name: &'static str,
    answer: impl FnOnce(&mut World) -> T + 'a,
) -> Pending<'a, T> {
    let mut w = world.borrow_mut();
    if w.crash_at == Some(name) && w.crash_skip > 0 {
        w.crash_skip -= 1;
    } else if w.crash_at == Some(name) {
        w.crash_at = None;
        w.effects.push(format!("killed at {name}"));
        return Box::pin(std::future::pending());
    }
    let value = answer(&mut w);
    Box::pin(std::future::ready(value))
}

struct FakeSource(Shared);

struct FakeCache(Shared);

struct FakeStore(Shared);

struct FakeUnits(Shared);

struct FakeReboot(Shared);

struct FakeClock(Shared);

impl Reboot for FakeReboot {
    fn this_boot(&mut self) -> Pending<'_, Result<BootId, SystemdError>> {
        effect(&self.0, "this-boot", |w| {
            Ok(format!("boot-{}", w.boot).parse().unwrap())
        })
    }
    /// The host reboots at once into what its profile names.
    fn request(&mut self) -> Pending<'_, Result<(), SystemdError>> {
        effect(&self.0, "reboot", |w| {
            w.effects.push("reboot".into());
            w.boot += 1;
            w.booted = w.profile.clone();
            w.running = w.profile.clone();
            Ok(())
        })
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.borrow().now
    }
    fn zone(&self) -> HostZone {
        HostZone::Fixed(ZONE)
    }
}

impl ReleaseSource for FakeSource {
    fn remote_tip(&mut self) -> Pending<'_, Result<CommitId, SourceError>> {
        effect(&self.0, "tip", |w| Ok(w.tip.clone()))
    }
    fn fetch(&mut self, tip: &CommitId) -> Pending<'_, Result<(), SourceError>> {
        let tip = tip.clone();
        effect(&self.0, "fetch", move |w| {
            w.effects.push(format!("fetch {tip}"));
            Ok(())
        })
    }
    fn verify(
        &mut self,
        tip: &CommitId,
        _: &AllowedSigners,
        _: &AllowedSigners,
        now: DateTime<Utc>,
    ) -> Pending<'_, Result<VerifiedTip, Box<VerifyError>>> {
        let tip = tip.clone();
        effect(&self.0, "verify", move |w| {
            w.verifications += 1;
            match w.releases[&tip].clone() {
                // Expiry by the clock given, as the real verifier judges it.
                Verifies::As(release) | Verifies::Approved(release, _) if release.release.is_expired(now) => {
                    Err(Box::new(VerifyError::Expired {
                        commit: git2::Oid::ZERO_SHA1,
                        serial: release.release.serial,
                        expires: release.release.expires.expect("expired"),
                    }))
                }
                Verifies::As(release) => Ok(VerifiedTip {
                    tip,
                    release,
                    approvals: Vec::new(),
                }),
                Verifies::Approved(release, approvals) => Ok(VerifiedTip {
                    tip,
                    release,
                    approvals,
                }),
                Verifies::Unsigned => Err(Box::new(VerifyError::Unsigned {
                    commit: git2::Oid::ZERO_SHA1,
                })),
                Verifies::Unreadable => Err(Box::new(VerifyError::Git(
                    git2::Error::from_str("object not found").into(),
                ))),
            }
        })
    }
    fn descends_from(&mut self, _: &CommitId, _: &CommitId) -> Pending<'_, Result<bool, SourceError>> {
        effect(&self.0, "descends", |w| Ok(w.descends))
    }
}

impl ClosureCache for FakeCache {
    fn preflight<'a>(
        &'a mut self,
        toplevel: &StorePath,
        invalid: &'a std::collections::BTreeSet<StorePath>,
    ) -> Pending<'a, Result<Preflight, CacheError>> {
        let path = toplevel.to_string();
        effect(&self.0, "preflight", move |w| match w.cached {
            Cached::Yes => {
                // The toplevel is fetched; the paths on disk count as
                // present unless the caller says Nix holds them invalid.
                let names: Vec<_> = invalid.iter().map(|p| p.name().to_owned()).collect();
                if !w.on_disk.is_empty() {
                    w.effects.push(format!("preflight except [{}]", names.join(" ")));
                }
                let (fetched, on_disk): (Vec<_>, Vec<_>) =
                    w.on_disk.iter().cloned().partition(|p| invalid.contains(p));
                Ok(Preflight {
                    paths: 1 + w.on_disk.len(),
                    missing: 1 + fetched.len(),
                    download_bytes: 1,
                    unpacked_bytes: 1,
                    signers: Default::default(),
                    on_disk,
                })
            }
            Cached::Missing => Err(CacheError::NotFound {
                path,
                caches: "https://cache.example.com".into(),
            }),
            Cached::Unavailable => Err(CacheError::Unreachable {
                url: "https://cache.example.com/nix-cache-info".into(),
                detail: "HTTP 503".into(),
            }),
            Cached::Denied => Err(CacheError::Denied {
                url: "https://cache.example.com/nix-cache-info".into(),
                status: 401,
                advice: "check cache.netrc_file".into(),
            }),
            Cached::Unsigned => Err(CacheError::Untrusted(
                crate::io::cache::narinfo::TrustError::Unsigned { path },
            )),
            Cached::Oversized => Err(CacheError::Narinfo {
                url: format!("https://cache.example.com/{}.narinfo", &path[11..43]),
                source: crate::io::cache::narinfo::NarInfoError::TooLarge,
            }),
            Cached::DiskFull => Err(CacheError::DiskFull {
                store: "/nix/store".into(),
                need: 2 << 30,
                available: 1 << 30,
            }),
            Cached::DiskUnknown => Err(CacheError::Disk {
                store: "/nix/store".into(),
                detail: "statvfs failed".into(),
            }),
        })
    }
}

impl NixStore for FakeStore {
    fn invalid_paths(&mut self, paths: &[StorePath]) -> Pending<'_, Result<Vec<StorePath>, StoreError>> {
        let paths = paths.to_vec();
        effect(&self.0, "validity", move |w| {
            if !paths.is_empty() {
                let names: Vec<_> = paths.iter().map(|p| p.name().to_owned()).collect();
                w.effects.push(format!("valid? [{}]", names.join(" ")));
            }
            Ok(paths.into_iter().filter(|p| w.invalid.contains(p)).collect())
        })
    }
    fn realise(&mut self, toplevel: &StorePath) -> Pending<'_, Result<(), StoreError>> {
        let toplevel = toplevel.clone();
        effect(&self.0, "realise", move |w| {
            w.state_at_realise = Some(StateDir::open(&w.state_dir).unwrap().load().unwrap());
            w.effects.push(format!("realise {}", toplevel.name()));
            match w.realise_fails.is_empty() {
                true => Ok(()),
                false => Err(w.realise_fails.remove(0).error()),
            }
        })
    }
    fn set_profile(&mut self, toplevel: &StorePath) -> Pending<'_, Result<(), StoreError>> {
        let toplevel = toplevel.clone();
        effect(&self.0, "profile", move |w| {
            w.effects.push(format!("profile {}", toplevel.name()));
            w.profile = Some(toplevel);
            Ok(())
        })
    }
    fn profile_system(&self) -> Option<StorePath> {
        self.0.borrow().profile.clone()
    }
    fn running_system(&self) -> Option<StorePath> {
        self.0.borrow().running.clone()
    }
    fn kernel_changed(&self, _: &StorePath) -> bool {
        self.0.borrow().kernel_changed
    }
    fn booted_system(&self) -> Option<StorePath> {
        self.0.borrow().booted.clone()
    }
}

fn label(activation: Activation) -> &'static str {
    match activation {
        Activation::Switch => "switch",
        Activation::Rollback => "rollback",
    }
}

/// The name of a unit effect, as `crash_at` and the effects list say it.
fn unit_effect(verb: &'static str, activation: Activation) -> &'static str {
    match (verb, activation) {
        ("start", Activation::Switch) => "start switch",
        ("start", Activation::Rollback) => "start rollback",
        ("observe", Activation::Switch) => "observe switch",
        ("observe", Activation::Rollback) => "observe rollback",
        ("wait", Activation::Switch) => "wait switch",
        ("wait", Activation::Rollback) => "wait rollback",
        _ => unreachable!("no unit effect {verb}"),
    }
}

impl Units for FakeUnits {
    fn failed_units(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>> {
        effect(&self.0, "failed-units", |_| Ok(vec!["old.service".into()]))
    }
    fn start(
        &mut self,
        serial: u64,
        activation: Activation,
        system: &StorePath,
        action: Action,
    ) -> Pending<'_, Result<(), SystemdError>> {
        let system = system.clone();
        effect(&self.0, unit_effect("start", activation), move |w| {
            let key = (serial, activation == Activation::Rollback);
            w.effects.push(format!(
                "start {} {serial} {} {action}",
                label(activation),
                system.name()
            ));
            let ends = w.ends.get(&key).copied().unwrap_or(SwitchResult::Ok);
            // switch-to-configuration makes the system current before it
            // starts units, so a switch whose units failed still ran.
            let ran = matches!(ends, SwitchResult::Failed { .. }) || ends.activated();
            if ran && action != Action::Boot {
                w.running = Some(system);
            }
            w.units.insert(key, Unit::Running(ends));
            Ok(())
        })
    }
    fn observe(
        &mut self,
        serial: u64,
        activation: Activation,
    ) -> Pending<'_, Result<Observed, SystemdError>> {
        effect(&self.0, unit_effect("observe", activation), move |w| {
            let key = (serial, activation == Activation::Rollback);
            Ok(match w.units.get(&key) {
                Some(Unit::Running(_)) => Observed::Running,
                Some(Unit::Finished(r)) => Observed::Finished(*r),
                None => Observed::Unknown,
            })
        })
    }
    fn wait(
        &mut self,
        serial: u64,
        activation: Activation,
    ) -> Pending<'_, Result<SwitchResult, SystemdError>> {
        effect(&self.0, unit_effect("wait", activation), move |w| {
            let key = (serial, activation == Activation::Rollback);
            match w.units.get(&key).copied() {
                Some(Unit::Running(r) | Unit::Finished(r)) => {
                    w.units.insert(key, Unit::Finished(r));
                    Ok(r)
                }
                None => panic!("waiting for a unit never started: {key:?}"),
            }
        })
    }
    fn check_health<'a>(
        &'a mut self,
        _: Duration,
        _: &'a [HealthCommand],
    ) -> Pending<'a, Result<Health, SystemdError>> {
        effect(&self.0, "health", |w| {
            w.effects.push("health".into());
            Ok(match w.health_interrupted.take() {
                Some(killed) => killed,
                None => w.health.clone(),
            })
        })
    }
    fn activations_running(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>> {
        effect(&self.0, "activations", |w| Ok(w.activations.clone()))
    }
}

/// The real durable outbox in the host's state directory, delivered to a
/// fake forge that records what it was sent (`statuses`), and the real
/// receipt queue beside it (what was queued also in `receipts`). `post` is the
/// forge call; `delivered` the instant after it, before the entry is removed.
struct FakeSink {
    world: Shared,
    outbox: Outbox,
}

impl StatusSink for FakeSink {
    fn queue(&mut self, unsent: &Unsent) -> Result<(), StateError> {
        if let Some(note) = &unsent.receipt {
            let s = &unsent.status;
            // The live sink's durable queue, so a kill before its write
            // is a kill the agent must come back from.
            let queue = ReceiptQueue::open(&self.world.borrow().state_dir)?;
            queue.put(&ferry_signer::receipt::Receipt {
                release: s.commit.clone(),
                source: note.source.clone(),
                host: "web1".parse().expect("a host name"),
                state: s.state,
                time: self.world.borrow().now,
                toplevel: None,
                boot: None,
                description: s.description.clone(),
            })?;
            self.world.borrow_mut().receipts.push((
                s.commit.clone(),
                note.source.clone(),
                s.state,
                s.description.clone(),
            ));
        }
        if !unsent.to_forge {
            return Ok(());
        }
        self.outbox.push_once(unsent.id, &unsent.status).map(|_| ())
    }
    fn deliver(&mut self) -> Pending<'_, ()> {
        Box::pin(async move {
            while let Some(queued) = self.outbox.peek().expect("outbox readable") {
                let status = queued.status;
                effect(&self.world, "post", move |w| {
                    w.statuses.push((status.commit, status.state, status.description))
                })
                .await;
                effect(&self.world, "delivered", |_| ()).await;
                self.outbox.remove(queued.seq).expect("removed");
            }
        })
    }
}

fn verified(
    tip: &str,
    serial: u64,
    entry: Option<(StorePath, Action)>,
    created: DateTime<Utc>,
) -> VerifiedRelease {
    VerifiedRelease {
        commit: commit(tip),
        signer: Signer {
            principal: "ci@example.com".into(),
            fingerprint: "SHA256:x".into(),
            key_type: "ssh-ed25519".into(),
        },
        committed_at: created,
        release: Release {
            serial,
            created,
            expires: None,
            source: Some(commit(SOURCE)),
            hosts: entry
                .into_iter()
                .map(|(toplevel, action)| ("web1".parse().unwrap(), HostEntry { toplevel, action }))
                .collect(),
        },
    }
}

/// A host running system `a`, whose branch tip is release 1 (serial 1,
/// system `b`, `switch`), fresh from CI.
struct Host {
    dir: tempfile::TempDir,
    world: Shared,
    /// More agent.toml, appended to every agent's configuration.
    config: RefCell<String>,
}

impl Host {
    fn new() -> Self {
        Self::with_release(Some((system('b'), Action::Switch)))
    }

    fn with_release(entry: Option<(StorePath, Action)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let world = World {
            tip: commit(R1),
            releases: BTreeMap::from([(commit(R1), Verifies::As(verified(R1, 1, entry, t0())))]),
            verifications: 0,
            descends: true,
            cached: Cached::Yes,
            running: Some(system('a')),
            profile: Some(system('a')),
            on_disk: Vec::new(),
            invalid: Vec::new(),
            realise_fails: Vec::new(),
            ends: BTreeMap::new(),
            units: BTreeMap::new(),
            health: Health::default(),
            health_interrupted: None,
            crash_at: None,
            crash_skip: 0,
            effects: Vec::new(),
            statuses: Vec::new(),
            receipts: Vec::new(),
            state_at_realise: None,
            state_dir: dir.path().join("state"),
            now: t0(),
            kernel_changed: false,
            boot: 1,
            booted: Some(system('a')),
            activations: Vec::new(),
        };
        Host {
            dir,
            world: Rc::new(RefCell::new(world)),
            config: RefCell::new(String::new()),
        }
    }

    /// A new agent process on this host (same state directory, same world).
    fn agent(&self) -> Agent {
        self.agent_with("")
    }

    /// [`Host::agent`] with more of agent.toml appended (a section).
    fn agent_with(&self, extra: &str) -> Agent {
        let text = format!(
            "host = \"web1\"\nstate_dir = \"{}\"\n[source]\nurl = \"https://git.example.com/deploy.git\"\n\
             allowed_signers = \"{}\"\n[cache]\nsubstituters = [\"https://cache.example.com\"]\n\
             trusted_public_keys = [\"c-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n\
             [health]\nsettle = \"0s\"\n{}{extra}",
            self.dir.path().join("state").display(),
            self.dir.path().join("allowed_signers").display(),
            self.config.borrow(),
        );
        let config = Config::parse(&text, Path::new("agent.toml"), || None).unwrap();
        let w = &self.world;
        let ports = Ports {
            source: Box::new(FakeSource(w.clone())),
            caches: Box::new(FakeCache(w.clone())),
            store: Box::new(FakeStore(w.clone())),
            units: Box::new(FakeUnits(w.clone())),
            statuses: Box::new(FakeSink {
                world: w.clone(),
                outbox: Outbox::open(&self.dir.path().join("state")).unwrap(),
            }),
            reboot: Box::new(FakeReboot(w.clone())),
            clock: Box::new(FakeClock(w.clone())),
        };
        Agent::with_ports(config, AllowedSigners::parse("").unwrap(), ports).unwrap()
    }

    fn state(&self) -> State {
        StateDir::open(&self.dir.path().join("state"))
            .unwrap()
            .load()
            .unwrap()
    }

    fn w(&self) -> std::cell::RefMut<'_, World> {
        self.world.borrow_mut()
    }

    fn effects(&self) -> Vec<String> {
        self.world.borrow().effects.clone()
    }

    fn statuses(&self) -> Vec<(StatusState, String)> {
        let w = self.world.borrow();
        w.statuses.iter().map(|(_, s, d)| (*s, d.clone())).collect()
    }

    /// The effects that change the host: realising, profile, units.
    fn changes(&self) -> Vec<String> {
        self.effects()
            .into_iter()
            .filter(|e| !e.starts_with("fetch"))
            .collect()
    }
}

/// Runs a reconcile to its end: the fakes never make it wait.
fn run(agent: &mut Agent) -> Pass {
    agent
        .reconcile()
        .now_or_never()
        .expect("fakes answer at once")
        .expect("no transient error")
}

/// Runs a reconcile that is killed where the world says; true if it was.
fn killed(agent: &mut Agent) -> bool {
    agent.reconcile().now_or_never().is_none()
}

/// Runs a reconcile that ends in a transient error (nothing recorded).
fn transient(agent: &mut Agent) -> String {
    agent
        .reconcile()
        .now_or_never()
        .expect("fakes answer at once")
        .expect_err("a transient fault")
        .to_string()
}

/// Every status the forge received, with its commit, in order.
fn posted(host: &Host) -> Vec<(CommitId, StatusState, String)> {
    host.world.borrow().statuses.clone()
}

fn release_statuses(host: &Host) -> Vec<(StatusState, String)> {
    posted(host)
        .into_iter()
        .filter(|(c, _, _)| *c == commit(R1))
        .map(|(_, s, d)| (s, d))
        .collect()
}

fn count(host: &Host, effect: &str) -> usize {
    host.effects().iter().filter(|e| *e == effect).count()
}

/// The final (not pending) statuses the forge received, in order.
fn finals(host: &Host) -> Vec<(CommitId, StatusState, String)> {
    let w = host.world.borrow();
    w.statuses
        .iter()
        .filter(|(_, s, _)| *s != StatusState::Pending)
        .cloned()
        .collect()
}

/// Runs a reconcile that is killed before the durable write the fault plan
/// names; true if it was.
fn killed_before_write(agent: &mut Agent) -> bool {
    quiet_kills();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.reconcile().now_or_never()));
    match run {
        Ok(_) => false,
        Err(payload) => {
            assert_eq!(
                payload.downcast_ref::<&str>(),
                Some(&durable::faults::KILLED),
                "another panic"
            );
            true
        }
    }
}

/// Keeps the test output free of the marker panics that stand for kills.
fn quiet_kills() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&durable::faults::KILLED) {
                default(info)
            }
        }));
    });
}
