//! The reconcile rules against fakes of every seam: no network, store,
//! systemd or runtime. Every fake answers at once, so a reconcile completes in
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
use crate::io::durable::faults;
use crate::io::forge::CommitStatus;
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
use crate::state::StateError;

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
    Unsigned,
    Oversized,
    DiskUnknown,
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
    descends: bool,
    cached: Cached,
    running: Option<StorePath>,
    profile: Option<StorePath>,
    /// Closure paths found in the store directory, and those of them Nix's
    /// database holds invalid.
    on_disk: Vec<StorePath>,
    invalid: Vec<StorePath>,
    realise_fails: bool,
    /// How the unit of each (serial, activation) ends once started.
    ends: BTreeMap<(u64, bool), SwitchResult>,
    units: BTreeMap<(u64, bool), Unit>,
    health: Health,
    /// The effect at which the agent is killed (once), after letting
    /// `crash_skip` calls of it through.
    crash_at: Option<&'static str>,
    crash_skip: usize,
    /// Effects, in order, as `verb argument`.
    effects: Vec<String>,
    statuses: Vec<(CommitId, StatusState, String)>,
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
        _: DateTime<Utc>,
    ) -> Pending<'_, Result<VerifiedTip, Box<VerifyError>>> {
        let tip = tip.clone();
        effect(&self.0, "verify", move |w| match w.releases[&tip].clone() {
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
            Cached::Unsigned => Err(CacheError::Untrusted(
                crate::io::cache::narinfo::TrustError::Unsigned { path },
            )),
            Cached::Oversized => Err(CacheError::Narinfo {
                url: format!("https://cache.example.com/{}.narinfo", &path[11..43]),
                source: crate::io::cache::narinfo::NarInfoError::TooLarge,
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
            match w.realise_fails {
                true => Err(StoreError::Failed {
                    program: "nix-store",
                    status: "exit status: 1".into(),
                    stderr: "copying 1 paths... | error: path is not valid".into(),
                }),
                false => Ok(()),
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
            Ok(w.health.clone())
        })
    }
    fn activations_running(&mut self) -> Pending<'_, Result<Vec<String>, SystemdError>> {
        effect(&self.0, "activations", |w| Ok(w.activations.clone()))
    }
}

/// The real durable outbox in the host's state directory, delivered to a
/// fake forge that records what it was sent (`statuses`). `post` is the
/// forge call; `delivered` the instant after it, before the entry is removed.
struct FakeSink {
    world: Shared,
    outbox: Outbox,
}

impl StatusSink for FakeSink {
    fn queue(&mut self, id: u64, status: &CommitStatus) -> Result<(), StateError> {
        self.outbox.push_once(id, status).map(|_| ())
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
            releases: BTreeMap::from([(commit(R1), Verifies::As(verified(R1, 1, entry, Utc::now())))]),
            descends: true,
            cached: Cached::Yes,
            running: Some(system('a')),
            profile: Some(system('a')),
            on_disk: Vec::new(),
            invalid: Vec::new(),
            realise_fails: false,
            ends: BTreeMap::new(),
            units: BTreeMap::new(),
            health: Health::default(),
            crash_at: None,
            crash_skip: 0,
            effects: Vec::new(),
            statuses: Vec::new(),
            state_at_realise: None,
            state_dir: dir.path().join("state"),
            now: Utc::now(),
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

#[test]
fn a_new_release_is_realised_switched_checked_and_reported() {
    let host = Host::new();
    let r = run(&mut host.agent());
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    let b = system('b');
    assert_eq!(
        host.changes(),
        [
            format!("realise {}", b.name()),
            format!("profile {}", b.name()),
            format!("start switch 1 {} switch", b.name()),
            "health".into(),
        ]
    );
    let state = host.state();
    assert_eq!(state.in_flight, None);
    assert_eq!(state.anchor.map(|a| (a.commit, a.serial)), Some((commit(R1), 1)));
    assert_eq!(state.last_seen_tip, Some(commit(R1)));
    let success = state.last_success.expect("recorded");
    assert_eq!(success.result, OutcomeKind::Success);
    assert_eq!(success.toplevel, Some(b));
    assert_eq!(state.last_outcome, Some(success));
    // Each status goes to the release commit and its source commit.
    assert_eq!(
        host.statuses(),
        [
            (StatusState::Pending, "deploying release 1 to web1".into()),
            (StatusState::Pending, "deploying release 1 to web1".into()),
            (StatusState::Success, "web1 runs release 1".into()),
            (StatusState::Success, "web1 runs release 1".into()),
        ]
    );
    // Nothing more to do: the tip is remembered.
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
}

#[test]
fn the_anchor_moves_before_realising() {
    let host = Host::new();
    run(&mut host.agent());
    let seen = host.w().state_at_realise.clone().expect("realised");
    assert_eq!(seen.anchor.map(|a| (a.commit, a.serial)), Some((commit(R1), 1)));
    let flight = seen.in_flight.expect("recorded in flight");
    assert_eq!(flight.phase, Phase::Realising);
    assert_eq!(flight.previous, Some(system('a')));
    assert_eq!(flight.failed_before, ["old.service"]);
    // The tip is remembered only once the deploy ended.
    assert_eq!(seen.last_seen_tip, None);
}

#[test]
fn already_running_records_success_and_changes_nothing() {
    let host = Host::new();
    host.w().running = Some(system('b'));
    assert_eq!(run(&mut host.agent()), Pass::AlreadyRunning);
    assert_eq!(host.changes(), Vec::<String>::new());
    let state = host.state();
    assert_eq!(state.anchor.map(|a| a.serial), Some(1));
    assert_eq!(state.last_success.map(|o| o.result), Some(OutcomeKind::Success));
    assert_eq!(
        host.statuses().last(),
        Some(&(StatusState::Success, "web1 runs release 1".into()))
    );
}

/// A refusal case: how the world is set, the status it is reported with,
/// and words its description contains.
struct RefusalCase {
    name: &'static str,
    set: fn(&mut World),
    status: StatusState,
    says: &'static str,
}

#[test]
fn every_refusal_records_reports_and_leaves_the_host_untouched() {
    let cases = [
        RefusalCase {
            name: "unsigned",
            set: |w| {
                w.releases.insert(commit(R1), Verifies::Unsigned);
            },
            status: StatusState::Failure,
            says: "not signed",
        },
        RefusalCase {
            name: "unreadable commit",
            set: |w| {
                w.releases.insert(commit(R1), Verifies::Unreadable);
            },
            status: StatusState::Error,
            says: "cannot read the release commit",
        },
        RefusalCase {
            name: "no entry for this host",
            set: |w| {
                w.releases
                    .insert(commit(R1), Verifies::As(verified(R1, 1, None, Utc::now())));
            },
            status: StatusState::Failure,
            says: "no entry for web1",
        },
        RefusalCase {
            name: "unsigned path in the cache",
            set: |w| w.cached = Cached::Unsigned,
            status: StatusState::Failure,
            says: "is not signed",
        },
        RefusalCase {
            name: "oversized narinfo",
            set: |w| w.cached = Cached::Oversized,
            status: StatusState::Failure,
            says: "served bad metadata",
        },
        RefusalCase {
            name: "disk space unknown",
            set: |w| w.cached = Cached::DiskUnknown,
            status: StatusState::Error,
            says: "cannot check free disk space",
        },
        RefusalCase {
            name: "missing from the cache long after the release",
            set: |w| {
                let old = verified(
                    R1,
                    1,
                    Some((system('b'), Action::Switch)),
                    Utc::now() - chrono::Duration::hours(2),
                );
                w.releases.insert(commit(R1), Verifies::As(old));
                w.cached = Cached::Missing;
            },
            status: StatusState::Failure,
            says: "missing from the binary cache",
        },
    ];
    for case in cases {
        let host = Host::new();
        (case.set)(&mut host.w());
        let r = run(&mut host.agent());
        assert!(matches!(r, Pass::Refused(_)), "{}: {r:?}", case.name);
        assert_eq!(host.changes(), Vec::<String>::new(), "{}", case.name);
        let state = host.state();
        assert_eq!(state.last_seen_tip, Some(commit(R1)), "{}", case.name);
        assert_eq!(state.anchor, None, "{}: the anchor does not move", case.name);
        assert_eq!(state.in_flight, None, "{}", case.name);
        let outcome = state.last_outcome.expect("recorded");
        assert_eq!(outcome.result, OutcomeKind::Refused, "{}", case.name);
        assert!(
            outcome.description.contains(case.says),
            "{}: {}",
            case.name,
            outcome.description
        );
        let (status, description) = host.statuses().pop().expect("reported");
        assert_eq!(status, case.status, "{}", case.name);
        assert_eq!(description, outcome.description, "{}", case.name);
        // Refused once: the same tip is not looked at again.
        assert_eq!(run(&mut host.agent()), Pass::UpToDate, "{}", case.name);
    }
}

#[test]
fn anti_rollback_refusals_leave_the_anchor_where_it_was() {
    let host = Host::new();
    run(&mut host.agent());
    let anchor = host.state().anchor;
    for (serial, descends, says) in [
        (2, false, "rewound"),
        (1, true, "not greater than the last accepted serial 1"),
    ] {
        {
            let mut w = host.w();
            w.tip = commit(R2);
            let r = verified(R2, serial, Some((system('c'), Action::Switch)), Utc::now());
            w.releases.insert(commit(R2), Verifies::As(r));
            w.descends = descends;
            w.effects.clear();
        }
        let mut state = host.state();
        state.last_seen_tip = Some(commit(R1));
        StateDir::open(&host.dir.path().join("state"))
            .unwrap()
            .save(&state)
            .unwrap();
        let r = run(&mut host.agent());
        assert!(matches!(&r, Pass::Refused(why) if why.contains(says)), "{r:?}");
        assert_eq!(host.changes(), Vec::<String>::new());
        assert_eq!(host.state().anchor, anchor);
        assert_eq!(host.statuses().last().map(|s| s.0), Some(StatusState::Failure));
    }
}

#[test]
fn waiting_for_the_cache_is_a_wait_reported_once() {
    let host = Host::new();
    host.w().cached = Cached::Missing;
    let mut agent = host.agent();
    for _ in 0..3 {
        let r = run(&mut agent);
        assert!(matches!(r, Pass::WaitingForClosure { serial: 1, .. }), "{r:?}");
        let state = host.state();
        assert_eq!(
            state.last_seen_tip, None,
            "the tip is not remembered while waiting"
        );
        assert_eq!(state.anchor, None);
        assert_eq!(state.last_outcome, None);
    }
    assert_eq!(host.changes(), Vec::<String>::new());
    let waiting = |host: &Host| {
        host.statuses()
            .into_iter()
            .filter(|(s, d)| *s == StatusState::Pending && d.contains("waiting for the closure"))
            .count()
    };
    // Once, on the release commit and its source commit.
    assert_eq!(waiting(&host), 2, "{:?}", host.statuses());
    host.w().cached = Cached::Yes;
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(waiting(&host), 2);
    let deploying = host
        .statuses()
        .into_iter()
        .filter(|(_, d)| d.starts_with("deploying release 1"))
        .count();
    assert_eq!(deploying, 2, "one per commit, not one per attempt");
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

/// A cache that answers 503 for many polls, across a restart, posts the
/// release's pending status once per commit; a different status (waiting
/// for the closure) is still posted, and so is the final one, once.
#[test]
fn a_transient_cache_fault_posts_one_pending_status_across_polls_and_restarts() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let deploying = "deploying release 1 to web1".to_string();
    let pending = vec![
        (commit(R1), StatusState::Pending, deploying.clone()),
        (commit(SOURCE), StatusState::Pending, deploying.clone()),
    ];
    let mut agent = host.agent();
    for poll in 0..4 {
        let err = transient(&mut agent);
        assert!(err.contains("HTTP 503"), "poll {poll}: {err}");
        assert_eq!(posted(&host), pending, "poll {poll}");
    }
    // A restart forgets nothing: the same status is not posted again.
    let mut agent = host.agent();
    for poll in 0..3 {
        transient(&mut agent);
        assert_eq!(posted(&host), pending, "after the restart, poll {poll}");
    }
    // Another status of the same release and context is posted.
    host.w().cached = Cached::Missing;
    let r = run(&mut agent);
    assert!(matches!(r, Pass::WaitingForClosure { serial: 1, .. }), "{r:?}");
    let waiting = "release 1: waiting for the closure in the binary cache".to_string();
    let mut expected = pending.clone();
    expected.extend([
        (commit(R1), StatusState::Pending, waiting.clone()),
        (commit(SOURCE), StatusState::Pending, waiting),
    ]);
    assert_eq!(posted(&host), expected);
    host.w().cached = Cached::Unavailable;
    transient(&mut agent);
    assert_eq!(posted(&host), expected, "still waiting: nothing new to say");
    // Recovery: the final status, once per commit.
    host.w().cached = Cached::Yes;
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let success = "web1 runs release 1".to_string();
    expected.extend([
        (commit(R1), StatusState::Success, success.clone()),
        (commit(SOURCE), StatusState::Success, success),
    ]);
    assert_eq!(posted(&host), expected);
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
    assert_eq!(posted(&host), expected);
}

#[test]
fn a_realise_failure_is_an_error_and_nothing_is_switched() {
    let host = Host::new();
    host.w().realise_fails = true;
    let r = run(&mut host.agent());
    assert!(
        matches!(&r, Pass::Error(why) if why.starts_with("error: cannot realise")),
        "{r:?}"
    );
    assert!(!host
        .effects()
        .iter()
        .any(|e| e.starts_with("start") || e.starts_with("profile")));
    let state = host.state();
    assert_eq!(state.in_flight, None);
    assert_eq!(
        state.anchor.map(|a| a.serial),
        Some(1),
        "accepted: the anchor stays"
    );
    assert_eq!(
        host.statuses().last(),
        Some(&(
            StatusState::Error,
            "error: cannot realise the closure: nix-store: path is not valid".into()
        )),
        "the reason first, said once"
    );
}

#[test]
fn an_unhealthy_switch_is_rolled_back() {
    let host = Host::new();
    host.w().health = Health {
        failed_units: vec![
            "old.service".into(),
            "nginx.service".into(),
            "ferry-switch-1.service".into(),
        ],
        failed_commands: vec![],
    };
    let r = run(&mut host.agent());
    let a = system('a');
    let expected = format!("failed units: nginx.service; rolled back to {}", a.name());
    assert_eq!(r, Pass::Failed(expected.clone()));
    let changes = host.changes();
    assert_eq!(
        changes[changes.len() - 2..],
        [
            format!("profile {}", a.name()),
            format!("start rollback 1 {} switch", a.name())
        ]
    );
    assert_eq!(host.w().running, Some(a.clone()));
    assert_eq!(host.w().profile, Some(a));
    assert_eq!(host.statuses().last(), Some(&(StatusState::Failure, expected)));
    assert_eq!(host.state().last_success, None);
}

#[test]
fn resume_never_starts_a_second_unit_for_the_same_release() {
    // The unit as a restarted agent finds it, and whether it is started.
    let cases = [
        (Some(Unit::Running(SwitchResult::Ok)), Some(system('a')), 0),
        (Some(Unit::Finished(SwitchResult::Ok)), Some(system('b')), 0),
        // Gone without a trace, but its system runs: it finished.
        (None, Some(system('b')), 0),
        // Never started: started now, once.
        (None, Some(system('a')), 1),
    ];
    for (unit, running, starts) in cases {
        let host = Host::new();
        let mut state = State {
            anchor: Some(Anchor {
                commit: commit(R1),
                serial: 1,
            }),
            in_flight: Some(InFlight {
                tip: commit(R1),
                target: Target {
                    commit: commit(R1),
                    serial: 1,
                    toplevel: system('b'),
                },
                source: None,
                action: Action::Switch,
                phase: Phase::Switching,
                previous: Some(system('a')),
                failed_before: vec![],
                started: Utc::now(),
            }),
            ..State::default()
        };
        StateDir::open(&host.dir.path().join("state"))
            .unwrap()
            .save(&state)
            .unwrap();
        {
            let mut w = host.w();
            w.running = running;
            if let Some(unit) = unit {
                w.units.insert((1, false), unit);
            }
        }
        let r = run(&mut host.agent());
        assert_eq!(
            r,
            Pass::Deployed {
                reboot_required: false
            },
            "{unit:?}"
        );
        let started = host
            .effects()
            .iter()
            .filter(|e| e.starts_with("start switch"))
            .count();
        assert_eq!(started, starts, "{unit:?}: {:?}", host.effects());
        assert!(
            !host
                .effects()
                .iter()
                .any(|e| e.starts_with("realise") || e.starts_with("fetch")),
            "resumed where it was: {:?}",
            host.effects()
        );
        state = host.state();
        assert_eq!(state.in_flight, None);
        assert_eq!(state.last_seen_tip, Some(commit(R1)));
    }
}

/// Kills the agent at `crash_at`, starts a new one, and returns how the
/// deploy ended and the effects of both.
fn killed_then_resumed(host: &Host, crash_at: &'static str) -> (Pass, Vec<String>) {
    host.w().crash_at = Some(crash_at);
    assert!(killed(&mut host.agent()), "killed at {crash_at}");
    assert!(
        host.effects().contains(&format!("killed at {crash_at}")),
        "{crash_at}: {:?}",
        host.effects()
    );
    let r = run(&mut host.agent());
    (r, host.effects())
}

#[test]
fn a_crash_at_each_phase_boundary_resumes_correctly() {
    for crash_at in [
        "failed-units",
        "realise",
        "profile",
        "start switch",
        "observe switch",
        "wait switch",
        "health",
    ] {
        let host = Host::new();
        let (r, effects) = killed_then_resumed(&host, crash_at);
        assert_eq!(
            r,
            Pass::Deployed {
                reboot_required: false
            },
            "{crash_at}: {effects:?}"
        );
        let starts = effects.iter().filter(|e| e.starts_with("start switch")).count();
        assert_eq!(starts, 1, "{crash_at}: one switch unit: {effects:?}");
        let state = host.state();
        assert_eq!(state.in_flight, None, "{crash_at}");
        assert_eq!(
            state.last_success.map(|o| o.toplevel),
            Some(Some(system('b'))),
            "{crash_at}"
        );
        let successes = host
            .statuses()
            .iter()
            .filter(|(s, _)| *s == StatusState::Success)
            .count();
        assert_eq!(successes, 2, "{crash_at}: reported once (two commits)");
    }
}

#[test]
fn a_crash_during_a_rollback_resumes_the_rollback() {
    // The deploy sets the profile once; the rollback sets it back second.
    for (crash_at, skip) in [
        ("profile", 1),
        ("start rollback", 0),
        ("observe rollback", 0),
        ("wait rollback", 0),
    ] {
        let host = Host::new();
        host.w().ends.insert((1, false), SwitchResult::Failed { code: 4 });
        host.w().crash_skip = skip;
        let (r, effects) = killed_then_resumed(&host, crash_at);
        let a = system('a');
        assert_eq!(
            r,
            Pass::Failed(format!(
                "switch-to-configuration failed (exit 4); rolled back to {}",
                a.name()
            )),
            "{crash_at}: {effects:?}"
        );
        let rollbacks = effects.iter().filter(|e| e.starts_with("start rollback")).count();
        assert_eq!(rollbacks, 1, "{crash_at}: {effects:?}");
        let switches = effects.iter().filter(|e| e.starts_with("start switch")).count();
        assert_eq!(switches, 1, "{crash_at}: {effects:?}");
        assert_eq!(host.w().profile, Some(a.clone()), "{crash_at}: profile back");
        assert_eq!(host.w().running, Some(a), "{crash_at}");
        assert_eq!(host.state().in_flight, None);
        assert_eq!(
            host.state().last_outcome.map(|o| o.result),
            Some(OutcomeKind::Failed)
        );
    }
}

/// How a test sets up the world for one ending.
type SetUp = fn(&mut World);

/// The endings a release can come to, each set up on a fresh host.
fn endings() -> [(&'static str, SetUp); 4] {
    [
        ("deployed", |_| {}),
        ("already running", |w| w.running = Some(system('b'))),
        ("refused", |w| {
            w.releases.insert(commit(R1), Verifies::Unsigned);
        }),
        ("rolled back", |w| {
            w.ends.insert((1, false), SwitchResult::Failed { code: 4 });
        }),
    ]
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

/// The statuses of an ending reached undisturbed, and how many durable
/// writes it took.
fn undisturbed(set: SetUp) -> (Vec<(CommitId, StatusState, String)>, usize) {
    let host = Host::new();
    set(&mut host.w());
    faults::kill_before_write(usize::MAX);
    run(&mut host.agent());
    let writes = faults::writes();
    (finals(&host), writes)
}

/// Keeps the test output free of the marker panics that stand for kills.
fn quiet_kills() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&faults::KILLED) {
                default(info)
            }
        }));
    });
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
                Some(&faults::KILLED),
                "another panic"
            );
            true
        }
    }
}

/// New agents on the host until one finds nothing to do.
fn until_up_to_date(host: &Host, what: &str) {
    for _ in 0..5 {
        if run(&mut host.agent()) == Pass::UpToDate {
            let state = host.state();
            assert_eq!(state.unsent, [], "{what}: everything queued");
            let outbox = Outbox::open(&host.dir.path().join("state")).unwrap();
            assert_eq!(outbox.len().unwrap(), 0, "{what}: everything delivered");
            return;
        }
    }
    panic!("{what}: still busy after five restarts: {:?}", host.effects());
}

/// Exactly one final status per commit reaches the forge, whichever durable
/// write the agent is killed right before: the ending and its statuses are
/// one write, and moving them to the outbox is idempotent.
#[test]
fn a_kill_before_any_durable_write_loses_no_final_status_and_doubles_none() {
    for (name, set) in endings() {
        let (expected, writes) = undisturbed(set);
        assert!(!expected.is_empty(), "{name}: reported");
        assert!(writes >= 2, "{name}: {writes} durable writes");
        for n in 1..=writes {
            let what = format!("{name}, killed before durable write {n} of {writes}");
            let host = Host::new();
            set(&mut host.w());
            faults::kill_before_write(n);
            assert!(killed_before_write(&mut host.agent()), "{what}: not killed");
            faults::kill_before_write(usize::MAX);
            until_up_to_date(&host, &what);
            assert_eq!(finals(&host), expected, "{what}");
        }
    }
}

/// A kill at a forge call: before the forge answered, the status is sent
/// again; after it answered but before the outbox entry was removed, it is
/// sent again too — the one place delivery is at least once. The repeat is
/// the same status (state, description, context) right after itself, so the
/// forge's verdict on the commit does not change.
#[test]
fn a_kill_at_any_forge_call_repeats_at_most_the_same_status() {
    for (name, set) in endings() {
        let (expected, _) = undisturbed(set);
        let posts = {
            let host = Host::new();
            set(&mut host.w());
            run(&mut host.agent());
            host.statuses().len()
        };
        for (crash_at, skip) in (0..posts).flat_map(|n| [("post", n), ("delivered", n)]) {
            let what = format!("{name}, killed at forge call {crash_at} {skip}");
            let host = Host::new();
            set(&mut host.w());
            host.w().crash_skip = skip;
            host.w().crash_at = Some(crash_at);
            assert!(killed(&mut host.agent()), "{what}: not killed");
            until_up_to_date(&host, &what);
            let mut got = finals(&host);
            if crash_at == "post" {
                assert_eq!(got, expected, "{what}");
            } else {
                got.dedup();
                assert_eq!(got, expected, "{what}: only an immediate repeat");
            }
        }
    }
}

/// With the outbox's filesystem full when an ending is recorded, its
/// statuses stay in state.json and reach the forge once there is room.
#[test]
fn a_status_that_cannot_be_queued_waits_in_the_state_until_there_is_room() {
    struct Room;
    impl Drop for Room {
        fn drop(&mut self) {
            faults::disk_full(None);
        }
    }
    for (name, set) in endings() {
        let (expected, _) = undisturbed(set);
        let host = Host::new();
        set(&mut host.w());
        let room = Room;
        faults::disk_full(Some("outbox"));
        let r = run(&mut host.agent());
        assert_ne!(r, Pass::UpToDate, "{name}");
        assert_eq!(finals(&host), [], "{name}: nothing could be queued");
        let unsent: Vec<_> = host
            .state()
            .unsent
            .into_iter()
            .filter(|u| u.status.state != StatusState::Pending)
            .map(|u| (u.status.commit, u.status.state, u.status.description))
            .collect();
        assert_eq!(unsent, expected, "{name}: kept in state.json");
        assert_eq!(run(&mut host.agent()), Pass::UpToDate, "{name}: recorded once");
        assert_eq!(finals(&host), [], "{name}: the disk is still full");
        drop(room);
        until_up_to_date(&host, name);
        assert_eq!(finals(&host), expected, "{name}");
    }
}

/// With state.json's filesystem full, an ending cannot be recorded: the
/// reconcile fails (retried by the daemon), and once there is room the same
/// ending is reached and reported once.
#[test]
fn an_ending_that_cannot_be_saved_is_reached_again() {
    let refused = endings()[2].1;
    let (expected, _) = undisturbed(refused);
    let host = Host::new();
    refused(&mut host.w());
    faults::disk_full(Some("state.json"));
    let err = host
        .agent()
        .reconcile()
        .now_or_never()
        .expect("fakes answer at once");
    faults::disk_full(None);
    let err = err.expect_err("nothing recorded").to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(host.state(), State::default());
    assert_eq!(finals(&host), []);
    until_up_to_date(&host, "refused after the disk had room again");
    assert_eq!(finals(&host), expected);
}

// ---- reboots in a maintenance window, deploy windows ---------------------

const REBOOT_WINDOW: &str = "Sat 02:00-04:00";

fn wednesday() -> DateTime<Utc> {
    "2027-01-06T11:00:00Z".parse().unwrap()
}

/// A host whose release needs a reboot (a new kernel), with the reboot
/// policy `in-window`, on a Wednesday before the window.
fn kernel_host() -> Host {
    let host = Host::new();
    {
        let mut w = host.w();
        w.kernel_changed = true;
        w.now = wednesday();
    }
    *host.config.borrow_mut() = format!("[reboot]\npolicy = \"in-window\"\nwindow = [\"{REBOOT_WINDOW}\"]\n");
    host
}

/// When web1 reboots in the window, asked at `now`.
fn moment(now: DateTime<Utc>) -> DateTime<Utc> {
    let windows = window::Windows::parse(&[REBOOT_WINDOW]).unwrap();
    windows
        .reboot_moment(&"web1".parse().unwrap(), now, &HostZone::Fixed(ZONE))
        .unwrap()
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

#[test]
fn a_release_needing_a_reboot_reboots_in_the_window_and_confirms_what_booted() {
    let host = kernel_host();
    let at = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    let flight = host.state().in_flight.expect("still in flight");
    assert_eq!(flight.phase, Phase::AwaitingReboot { at });
    // Polls before the moment change nothing and say nothing new.
    host.w().now = at - chrono::Duration::seconds(1);
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    assert_eq!(count(&host, "reboot"), 0);
    // At the moment: announced, then requested, once.
    host.w().now = at;
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert_eq!(count(&host, "reboot"), 1);
    // The next boot confirms it.
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let when = window::wall_clock_text(at, &HostZone::Fixed(ZONE));
    assert_eq!(
        release_statuses(&host),
        [
            (StatusState::Pending, "deploying release 1 to web1".into()),
            (
                StatusState::Pending,
                format!("release 1 installed; reboot at {when} (maintenance window)")
            ),
            (StatusState::Pending, "rebooting into release 1".into()),
            (StatusState::Success, "web1 runs release 1 (rebooted)".into()),
        ]
    );
    let state = host.state();
    assert_eq!(state.in_flight, None);
    assert_eq!(state.last_success.map(|o| o.result), Some(OutcomeKind::Success));
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
    assert_eq!(count(&host, "reboot"), 1);
}

#[test]
fn booting_another_generation_is_a_failure_naming_it() {
    let host = kernel_host();
    run(&mut host.agent());
    host.w().now = moment(wednesday());
    // The reboot is requested, but the boot loader falls back to the old system.
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    {
        let mut w = host.w();
        w.booted = Some(system('a'));
        w.running = Some(system('a'));
    }
    let r = run(&mut host.agent());
    let Pass::Failed(why) = r else { panic!("{r:?}") };
    assert!(
        why.ends_with(&format!(
            "release 1 did not boot (boot loader fallback, or another generation chosen): booted {}",
            system('a')
        )),
        "{why}"
    );
    let last = release_statuses(&host).pop().unwrap();
    assert_eq!(last.0, StatusState::Failure);
    assert!(last.1.contains("boot loader fallback"), "{}", last.1);
    let outcome = host.state().last_outcome.unwrap();
    assert_eq!(outcome.result, OutcomeKind::Failed);
    assert_eq!(outcome.description, why);
}

#[test]
fn the_default_policy_never_reboots() {
    let host = kernel_host();
    *host.config.borrow_mut() = String::new();
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: true
        }
    );
    host.w().now = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::UpToDate);
    assert_eq!(count(&host, "reboot"), 0);
}

#[test]
fn a_boot_release_reboots_too() {
    let host = kernel_host();
    host.w().releases = BTreeMap::from([(
        commit(R1),
        Verifies::As(verified(R1, 1, Some((system('b'), Action::Boot)), Utc::now())),
    )]);
    let at = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    host.w().now = at;
    run(&mut host.agent());
    run(&mut host.agent());
    assert_eq!(host.w().running, Some(system('b')));
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(StatusState::Success, "web1 runs release 1 (rebooted)".into()))
    );
}

#[test]
fn no_reboot_while_a_switch_unit_runs() {
    let host = kernel_host();
    run(&mut host.agent());
    let at = moment(wednesday());
    host.w().now = at;
    host.w().activations = vec!["ferry-switch-7.service".into()];
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 1, at });
    assert_eq!(count(&host, "reboot"), 0);
    host.w().activations.clear();
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert_eq!(count(&host, "reboot"), 1);
}

#[test]
fn a_moment_missed_outside_the_window_moves_to_the_next_window() {
    let host = kernel_host();
    run(&mut host.agent());
    // The host was off over the weekend: Monday, the window has closed.
    let monday: DateTime<Utc> = "2027-01-11T12:00:00Z".parse().unwrap();
    host.w().now = monday;
    let next = moment(monday);
    assert!(next > monday + chrono::Duration::days(3), "{next}");
    assert_eq!(
        run(&mut host.agent()),
        Pass::RebootScheduled { serial: 1, at: next }
    );
    assert_eq!(count(&host, "reboot"), 0);
    let when = window::wall_clock_text(next, &HostZone::Fixed(ZONE));
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(
            StatusState::Pending,
            format!("release 1 installed; reboot at {when} (maintenance window)")
        ))
    );
}

#[test]
fn a_newer_release_before_the_reboot_ends_the_wait_and_is_deployed() {
    let host = kernel_host();
    run(&mut host.agent());
    {
        let mut w = host.w();
        w.tip = commit(R2);
        w.releases.insert(
            commit(R2),
            Verifies::As(verified(R2, 2, Some((system('c'), Action::Switch)), Utc::now())),
        );
    }
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: true
        }
    );
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(
            StatusState::Success,
            "web1 runs release 1; reboot required".into()
        ))
    );
    // The next poll takes release 2, which waits for the window in its turn.
    let at = moment(wednesday());
    assert_eq!(run(&mut host.agent()), Pass::RebootScheduled { serial: 2, at });
    assert_eq!(count(&host, "reboot"), 0);
}

/// Whichever durable write the agent is killed right before, from the
/// release's arrival to the confirmation after the reboot: exactly one
/// reboot, and exactly one final status on each commit.
#[test]
fn a_kill_before_any_durable_write_around_the_reboot_reboots_once() {
    let drive = |host: &Host| -> usize {
        for _ in 0..12 {
            let r = run(&mut host.agent());
            match r {
                Pass::RebootScheduled { at, .. } => host.w().now = at,
                Pass::UpToDate => return count(host, "reboot"),
                _ => {}
            }
        }
        panic!("not done: {:?}", host.effects())
    };
    let host = kernel_host();
    faults::kill_before_write(usize::MAX);
    assert_eq!(drive(&host), 1);
    let writes = faults::writes();
    let expected = finals(&host);
    assert_eq!(expected.len(), 2, "{expected:?}");
    for n in 1..=writes {
        let what = format!("killed before durable write {n} of {writes}");
        let host = kernel_host();
        faults::kill_before_write(n);
        let mut was_killed = false;
        for _ in 0..12 {
            if killed_before_write(&mut host.agent()) {
                was_killed = true;
                break;
            }
            if let Some(f) = host.state().in_flight {
                if let Phase::AwaitingReboot { at } = f.phase {
                    host.w().now = at;
                }
            }
        }
        assert!(was_killed, "{what}: not killed");
        faults::kill_before_write(usize::MAX);
        assert_eq!(drive(&host), 1, "{what}: {:?}", host.effects());
        assert_eq!(finals(&host), expected, "{what}");
    }
}

/// Killed at the reboot request itself (before it took effect), and right
/// after it (the host went down before the agent returned): one reboot.
#[test]
fn a_kill_at_the_reboot_request_reboots_once() {
    let host = kernel_host();
    run(&mut host.agent());
    host.w().now = moment(wednesday());
    host.w().crash_at = Some("reboot");
    assert!(killed(&mut host.agent()));
    assert_eq!(count(&host, "reboot"), 0);
    assert_eq!(host.state().in_flight.map(|f| f.phase.name()), Some("rebooting"));
    // The next start, in the same boot, requests it; the one after confirms.
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert!(matches!(run(&mut host.agent()), Pass::Deployed { .. }));
    assert_eq!(count(&host, "reboot"), 1);
    let success = "web1 runs release 1 (rebooted)".to_string();
    assert_eq!(
        release_statuses(&host)
            .iter()
            .filter(|(s, _)| *s != StatusState::Pending)
            .collect::<Vec<_>>(),
        [&(StatusState::Success, success)]
    );
}

#[test]
fn outside_the_deploy_window_a_release_waits_with_one_pending_status() {
    let host = Host::new();
    // Only Wednesdays 09:00-10:00 (the host's time); it is Wednesday 12:00 UTC.
    *host.config.borrow_mut() = "[switch]\nwindow = [\"Wed 09:00-10:00\"]\n".into();
    let now: DateTime<Utc> = "2027-01-06T12:00:00Z".parse().unwrap();
    let windows = window::Windows::parse(&["Wed 09:00-10:00"]).unwrap();
    let now = if windows.contains(now, &HostZone::Fixed(ZONE)) {
        now + chrono::Duration::hours(4)
    } else {
        now
    };
    host.w().now = now;
    let until = windows
        .current_or_next(now, &HostZone::Fixed(ZONE))
        .unwrap()
        .start;
    for _ in 0..3 {
        assert_eq!(
            run(&mut host.agent()),
            Pass::WaitingForWindow { serial: 1, until }
        );
    }
    assert_eq!(host.changes(), Vec::<String>::new());
    let when = window::wall_clock_text(until, &HostZone::Fixed(ZONE));
    assert_eq!(
        release_statuses(&host),
        [(
            StatusState::Pending,
            format!("release 1 waits for the deploy window (opens {when})")
        )]
    );
    // The window opens: deployed.
    host.w().now = until;
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
    assert_eq!(
        release_statuses(&host).last(),
        Some(&(StatusState::Success, "web1 runs release 1".into()))
    );
}

#[test]
fn boot_releases_and_refusals_are_not_held_back_by_the_deploy_window() {
    let closed = "[switch]\nwindow = [\"Wed 09:00-10:00\"]\n";
    let now: DateTime<Utc> = "2027-01-09T12:00:00Z".parse().unwrap();
    let host = Host::with_release(Some((system('b'), Action::Boot)));
    *host.config.borrow_mut() = closed.into();
    host.w().now = now;
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: true
        }
    );
    let host = Host::new();
    *host.config.borrow_mut() = closed.into();
    host.w().now = now;
    host.w().releases.insert(commit(R1), Verifies::Unsigned);
    assert!(matches!(run(&mut host.agent()), Pass::Refused(_)));
}

/// A tip that does not verify (anyone who can push to the branch can make
/// one) does not end the wait: the reboot happens, and the tip is refused
/// afterwards as any other.
#[test]
fn an_unsigned_tip_does_not_cancel_the_reboot() {
    let host = kernel_host();
    run(&mut host.agent());
    {
        let mut w = host.w();
        w.tip = commit(R2);
        w.releases.insert(commit(R2), Verifies::Unsigned);
        w.now = moment(wednesday());
    }
    assert_eq!(run(&mut host.agent()), Pass::Rebooting { serial: 1 });
    assert!(matches!(run(&mut host.agent()), Pass::Deployed { .. }));
    assert_eq!(count(&host, "reboot"), 1);
    assert!(matches!(run(&mut host.agent()), Pass::Refused(_)));
}

/// An agent with metrics written to `<dir>/textfile`.
fn metered(host: &Host) -> Agent {
    let textfile = host.dir.path().join("textfile");
    std::fs::create_dir_all(&textfile).unwrap();
    let mut agent = host.agent();
    agent.metrics = crate::metrics::Metrics::new(crate::metrics::MetricsConfig {
        textfile_dir: Some(textfile),
        listen: None,
    })
    .with_booted_system(&host.dir.path().join("booted-system"));
    agent
}

/// The `ferry_deploys_total` samples of the textfile with a count.
fn deploys_counted(host: &Host) -> Vec<String> {
    let text = std::fs::read_to_string(host.dir.path().join("textfile/ferry_agent.prom")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("ferry_deploys_total{") && !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

/// Each ending is counted exactly once in `ferry_deploys_total`, whichever
/// durable write the agent is killed right before (state, outbox, the
/// counters, the textfile): the counters remember the ending they last
/// counted, and the next agent counts one it missed.
#[test]
fn a_kill_before_any_durable_write_counts_each_ending_once() {
    let outcomes = ["success", "success", "refused", "failed"];
    for ((name, set), outcome) in endings().into_iter().zip(outcomes) {
        let expected = vec![format!("ferry_deploys_total{{outcome=\"{outcome}\"}} 1")];
        let host = Host::new();
        set(&mut host.w());
        faults::kill_before_write(usize::MAX);
        run(&mut metered(&host));
        let writes = faults::writes();
        assert_eq!(deploys_counted(&host), expected, "{name}, undisturbed");
        for n in 1..=writes {
            let what = format!("{name}, killed before durable write {n} of {writes}");
            let host = Host::new();
            set(&mut host.w());
            faults::kill_before_write(n);
            assert!(killed_before_write(&mut metered(&host)), "{what}: not killed");
            faults::kill_before_write(usize::MAX);
            let mut rounds = 0;
            while run(&mut metered(&host)) != Pass::UpToDate {
                rounds += 1;
                assert!(rounds < 5, "{what}: still busy after five restarts");
            }
            // And once more at a start, as the daemon does.
            metered(&host).update_metrics(false);
            assert_eq!(deploys_counted(&host), expected, "{what}");
        }
    }
}

impl Host {
    /// Rewrites the state file as `change` says (time passing, in effect).
    fn edit_state(&self, change: impl FnOnce(&mut State)) {
        let dir = StateDir::open(&self.dir.path().join("state")).unwrap();
        let mut state = dir.load().unwrap();
        change(&mut state);
        dir.save(&state).unwrap();
    }
}

/// A cache unreachable for longer than `report.error_after` turns the
/// release's status to one `error` (across polls and a restart), and back
/// to the normal statuses once the cache answers again.
#[test]
fn a_persisting_transient_fault_posts_one_error_status_then_normal_ones() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let deploying = "deploying release 1 to web1".to_string();
    let mut expected = vec![
        (commit(R1), StatusState::Pending, deploying.clone()),
        (commit(SOURCE), StatusState::Pending, deploying.clone()),
    ];
    let mut agent = host.agent();
    transient(&mut agent);
    assert_eq!(posted(&host), expected, "a fresh fault is only retried");
    let since = host.state().fault.expect("the first failure is remembered").since;
    transient(&mut agent);
    assert_eq!(host.state().fault.unwrap().since, since, "the first one counts");
    assert_eq!(posted(&host), expected);
    // 15 minutes (the default `report.error_after`) later, still failing.
    let began = since - chrono::Duration::minutes(15);
    host.edit_state(|s| s.fault.as_mut().unwrap().since = began);
    transient(&mut agent);
    let error = wording::fault_description("error: binary cache unreachable", began);
    assert!(error.starts_with("error: binary cache unreachable; retrying since "));
    expected.extend([
        (commit(R1), StatusState::Error, error.clone()),
        (commit(SOURCE), StatusState::Error, error.clone()),
    ]);
    assert_eq!(posted(&host), expected);
    for _ in 0..3 {
        transient(&mut agent);
    }
    transient(&mut host.agent());
    assert_eq!(posted(&host), expected, "one error status, not one per poll");
    // The cache is back: "deploying" again, then the ending.
    host.w().cached = Cached::Yes;
    let mut agent = host.agent();
    assert_eq!(
        run(&mut agent),
        Pass::Deployed {
            reboot_required: false
        }
    );
    let success = "web1 runs release 1".to_string();
    expected.extend([
        (commit(R1), StatusState::Pending, deploying.clone()),
        (commit(SOURCE), StatusState::Pending, deploying),
        (commit(R1), StatusState::Success, success.clone()),
        (commit(SOURCE), StatusState::Success, success),
    ]);
    assert_eq!(posted(&host), expected);
    assert_eq!(host.state().fault, None, "forgotten once it cleared");
}

/// A fault that clears before `report.error_after` is forgotten: the next
/// one starts its own clock.
#[test]
fn a_fault_that_clears_early_is_never_reported_and_forgotten() {
    let host = Host::new();
    host.w().cached = Cached::Unavailable;
    let mut agent = host.agent();
    transient(&mut agent);
    host.edit_state(|s| s.fault.as_mut().unwrap().since -= chrono::Duration::minutes(10));
    host.w().cached = Cached::Missing;
    assert!(matches!(run(&mut agent), Pass::WaitingForClosure { .. }));
    assert_eq!(host.state().fault, None);
    host.w().cached = Cached::Unavailable;
    transient(&mut agent);
    let since = host.state().fault.unwrap().since;
    assert!(Utc::now() - since < chrono::Duration::minutes(1), "a new clock");
    assert!(
        posted(&host).iter().all(|(_, s, _)| *s == StatusState::Pending),
        "{:?}",
        posted(&host)
    );
}

/// The first sighting of a missing closure is saved: a restarted agent
/// neither says "deploying" and "waiting" again nor waits another hour.
#[test]
fn the_wait_for_a_closure_survives_restarts() {
    let host = Host::new();
    // The signer's clock is a day ahead: only the host's first sighting
    // bounds the wait.
    let ahead = Utc::now() + chrono::Duration::days(1);
    host.w().releases.insert(
        commit(R1),
        Verifies::As(verified(R1, 1, Some((system('b'), Action::Switch)), ahead)),
    );
    host.w().cached = Cached::Missing;
    let Pass::WaitingForClosure { until, .. } = run(&mut host.agent()) else {
        panic!("waiting expected")
    };
    let said = posted(&host);
    assert_eq!(said.len(), 4, "deploying and waiting, on two commits: {said:?}");
    for _ in 0..3 {
        let r = run(&mut host.agent());
        assert_eq!(r, Pass::WaitingForClosure { serial: 1, until });
    }
    assert_eq!(posted(&host), said, "nothing said again after restarts");
    // An hour after the first sighting, a restarted agent gives up.
    host.edit_state(|s| s.closure_missing.as_mut().unwrap().since -= chrono::Duration::minutes(61));
    let r = run(&mut host.agent());
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("in none of the binary caches")),
        "{r:?}"
    );
    assert_eq!(host.state().closure_missing, None);
    let last = posted(&host).pop().unwrap();
    assert_eq!(last.1, StatusState::Failure);
}

/// A path that exists in the store directory but that Nix holds invalid is
/// not taken as present: Nix is asked about every path found on disk, and
/// the preflight checks the invalid one in the cache like a missing one.
#[test]
fn the_preflight_asks_nix_which_paths_on_disk_are_valid() {
    let host = Host::new();
    host.w().on_disk = vec![system('c'), system('d')];
    host.w().invalid = vec![system('d')];
    let r = run(&mut host.agent());
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    let asked: Vec<_> = host
        .effects()
        .into_iter()
        .filter(|e| e.starts_with("preflight") || e.starts_with("valid?"))
        .collect();
    let (c, d) = (system('c').name().to_owned(), system('d').name().to_owned());
    assert_eq!(
        asked,
        [
            "preflight except []".to_string(),
            format!("valid? [{c} {d}]"),
            format!("preflight except [{d}]"),
            format!("valid? [{c}]"),
        ]
    );
}

// ---- the two-person rule --------------------------------------------------

const A1: &str = "a111111111111111111111111111111111111111";
const A2: &str = "a222222222222222222222222222222222222222";
const A3: &str = "a333333333333333333333333333333333333333";
const TWO_APPROVERS: &str = "[approvals]\nrequired = 2\napprovers = [\"alice\", \"bob\", \"carol\"]\n";

fn approval(id: &str, principal: &str) -> Approval {
    Approval {
        commit: commit(id),
        signer: Signer {
            principal: principal.into(),
            fingerprint: format!("SHA256:{principal}"),
            key_type: "ssh-ed25519".into(),
        },
    }
}

/// Moves the fake branch to `tip`: release 1 with `approvals` on top.
fn approve(host: &Host, tip: &str, approvals: Vec<Approval>) {
    let mut w = host.w();
    let Verifies::As(release) = w.releases[&commit(R1)].clone() else {
        unreachable!("release 1 verifies")
    };
    w.releases
        .insert(commit(tip), Verifies::Approved(release, approvals));
    w.tip = commit(tip);
}

#[test]
fn a_release_awaiting_approvals_changes_nothing_and_says_so_once() {
    let host = Host::new();
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert_eq!(
        r,
        Pass::AwaitingApproval {
            serial: 1,
            approved: vec![],
            required: 2
        }
    );
    assert!(r.is_ok(), "awaiting approval is not an error");
    assert_eq!(host.changes(), Vec::<String>::new());
    let state = host.state();
    assert_eq!(
        state.anchor, None,
        "the anchor moves only for an accepted release"
    );
    assert_eq!(state.in_flight, None);
    // Posted on the release and its source commit, once.
    assert_eq!(
        posted(&host),
        [
            (
                commit(R1),
                StatusState::Pending,
                "release 1 awaits approval (0 of 2)".into()
            ),
            (
                commit(SOURCE),
                StatusState::Pending,
                "release 1 awaits approval (0 of 2)".into()
            ),
        ]
    );
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);

    // One approval: still waiting, and the forge hears who approved.
    approve(&host, A1, vec![approval(A1, "alice")]);
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert!(
        matches!(r, Pass::AwaitingApproval { ref approved, .. } if approved == &["alice"]),
        "{r:?}"
    );
    assert_eq!(host.changes(), Vec::<String>::new());
    assert_eq!(
        host.statuses().last().unwrap().1,
        "release 1 awaits approval (1 of 2: alice)"
    );
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);
    assert_eq!(host.statuses().len(), 4, "nothing is posted again at a poll");

    // The second approval: deployed, pending then success, anchored on the release.
    approve(&host, A2, vec![approval(A1, "alice"), approval(A2, "bob")]);
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert_eq!(
        r,
        Pass::Deployed {
            reboot_required: false
        }
    );
    let s = host.statuses();
    assert_eq!(
        s[4..].iter().map(|(st, d)| (*st, d.as_str())).collect::<Vec<_>>(),
        [
            (StatusState::Pending, "deploying release 1 to web1"),
            (StatusState::Pending, "deploying release 1 to web1"),
            (StatusState::Success, "web1 runs release 1"),
            (StatusState::Success, "web1 runs release 1"),
        ]
    );
    let state = host.state();
    assert_eq!(state.anchor.map(|a| a.commit), Some(commit(R1)));
    assert_eq!(state.last_seen_tip, Some(commit(A2)));
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);
}

#[test]
fn approvals_that_do_not_count_leave_the_release_waiting() {
    for (what, approvals) in [
        (
            "the same approver twice",
            vec![approval(A1, "alice"), approval(A2, "alice")],
        ),
        (
            "the releaser",
            vec![approval(A1, "alice"), approval(A2, "ci@example.com")],
        ),
        (
            "not an approver",
            vec![approval(A1, "alice"), approval(A2, "mallory")],
        ),
    ] {
        let host = Host::new();
        approve(&host, A2, approvals);
        let r = run(&mut host.agent_with(TWO_APPROVERS));
        assert!(
            matches!(r, Pass::AwaitingApproval { ref approved, .. } if approved == &["alice"]),
            "{what}: {r:?}"
        );
        assert_eq!(host.changes(), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn a_host_without_the_requirement_deploys_at_once() {
    let host = Host::new();
    assert_eq!(
        run(&mut host.agent()),
        Pass::Deployed {
            reboot_required: false
        }
    );
}

#[test]
fn a_release_by_someone_who_may_not_release_is_refused() {
    let host = Host::new();
    let policy = "[approvals]\nreleasers = [\"release-bot\"]\n";
    let r = run(&mut host.agent_with(policy));
    assert!(
        matches!(&r, Pass::Refused(why) if why.contains("signed by ci@example.com, who may not release here")),
        "{r:?}"
    );
    assert_eq!(host.changes(), Vec::<String>::new());
    assert_eq!(
        host.statuses()[0],
        (
            StatusState::Failure,
            "refused: release signed by ci@example.com, who may not release".into()
        )
    );
}

#[test]
fn approvals_dropped_after_the_deploy_change_nothing() {
    let host = Host::new();
    approve(&host, A2, vec![approval(A1, "alice"), approval(A2, "bob")]);
    assert!(matches!(
        run(&mut host.agent_with(TWO_APPROVERS)),
        Pass::Deployed { .. }
    ));
    let before = host.changes();
    // The branch is rewound to the first approval: the release is still
    // the anchor, and the host keeps running it.
    approve(&host, A1, vec![approval(A1, "alice")]);
    host.w().running = Some(system('b'));
    let r = run(&mut host.agent_with(TWO_APPROVERS));
    assert_eq!(r, Pass::AlreadyRunning);
    assert_eq!(host.changes(), before);
    assert_eq!(host.state().anchor.map(|a| a.commit), Some(commit(R1)));
}

#[test]
fn a_deploy_resumed_after_a_crash_remembers_the_approval_it_was_accepted_at() {
    let host = Host::new();
    approve(&host, A3, vec![approval(A1, "alice"), approval(A3, "carol")]);
    host.w().crash_at = Some("realise");
    assert!(killed(&mut host.agent_with(TWO_APPROVERS)));
    assert_eq!(host.state().in_flight.map(|f| f.tip), Some(commit(A3)));
    assert!(matches!(
        run(&mut host.agent_with(TWO_APPROVERS)),
        Pass::Deployed { .. }
    ));
    assert_eq!(host.state().last_seen_tip, Some(commit(A3)));
    assert_eq!(run(&mut host.agent_with(TWO_APPROVERS)), Pass::UpToDate);
}
