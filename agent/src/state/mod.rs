//! What the agent remembers across restarts, in `<state_dir>/state.json`: the
//! anti-rollback anchor (last accepted release), any deploy in flight and the
//! phase it reached, the last outcome and the last success. The file format is
//! its own serialised type (below the domain types), kept compatible with the
//! files hosts already have. The commit statuses of an ending are saved in the
//! same write as the ending ([`State::unsent`]) and only then moved to the
//! outbox, so no crash can separate the two. The last status recorded per
//! commit and context of the release being worked on
//! ([`State::recent_statuses`]) is kept too, so a release retried for hours
//! is not reported again with the same words after every poll or restart.
//! Two first sightings are kept so their clocks survive a restart: when the
//! closure of the release being worked on was first seen missing from the
//! cache ([`State::closure_missing`]), and when a transient fault first kept
//! it from progressing ([`State::fault`]). The state is written as two files
//! (see [`file`]): `state.json` in format 1, which every agent ever released
//! reads, and beside it an extension with what format 1 cannot say, bound to
//! that exact `state.json`, so a host rolled back to an older agent is never
//! left with a state its agent refuses. Every write goes through
//! [`crate::io::durable::atomic_write`], extension first, so a crash or
//! power loss leaves either the old or the new state, never a torn one.

mod file;
pub mod outbox;
pub mod receipts;

use std::path::{Path, PathBuf};

pub use self::file::EXTENSION_FORMAT;
use self::file::{ExtensionFile, StateFile, VersionFile};
use chrono::{DateTime, Utc};
use ferry_signer::{Action, CommitId, StorePath};

use crate::io::durable::{atomic_write, create_dir, remove_file};
use crate::io::forge::{CommitStatus, StatusState};
use crate::io::systemd::switch::SwitchResult;

const STATE_FILE: &str = "state.json";
/// The directory of the extension of `state.json`: one file, named by the
/// SHA-256 of the `state.json` it extends.
const EXTENSION_DIR: &str = "state.ext";
/// The format of `state.json` written (the floor): what every agent reads.
const STATE_VERSION: u32 = 1;
/// The newest format of `state.json` this agent reads: agents before the
/// extension wrote 2 (first sightings, an approval tip) and 3 (the reboot
/// phases) into `state.json` itself.
const STATE_VERSION_REBOOTS: u32 = 3;

/// The agent's durable memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Branch tip at the last completed poll; an unchanged tip means no work.
    pub last_seen_tip: Option<CommitId>,
    /// The newest release accepted: later releases must descend from it and
    /// have a greater serial. Never moves backwards.
    pub anchor: Option<Anchor>,
    /// A deploy that was started and has not been recorded as finished.
    pub in_flight: Option<InFlight>,
    /// How the last deploy attempt ended.
    pub last_outcome: Option<Outcome>,
    /// The last deploy that succeeded: what this host should be running
    /// (drift is measured against it).
    pub last_success: Option<Outcome>,
    /// Commit statuses recorded (with the ending they report, in the same
    /// write) and not yet in the outbox, oldest first.
    pub unsent: Vec<Unsent>,
    /// The last status recorded for each commit and context of the release
    /// being worked on, oldest first (see `dedup::is_news`): saved with the
    /// statuses it records, and forgotten when the release's ending is
    /// recorded (nothing more is posted for it then).
    pub recent_statuses: Vec<CommitStatus>,
    /// The release whose closure was missing from the binary cache (CI may
    /// still be uploading it) and when this host first saw it missing: the
    /// wait is bounded from then (`faults::upload_deadline`), and its
    /// statuses are posted once, whatever restarts in between.
    pub closure_missing: Option<Sighting>,
    /// The release a transient fault (an unreachable cache, repository or
    /// systemd) keeps from progressing, and when it first did: past
    /// `report.error_after` it is reported as an `error` status
    /// (`faults::fault_persists`). Forgotten once a reconcile gets through.
    pub fault: Option<Sighting>,
    /// The commits of the release being worked on whose status on the
    /// forge this host last made a failure or an error, with
    /// `report.statuses = "failures"`: what follows on them is posted too,
    /// so a host that recovers does not stay red (`reporting::to_forge`).
    /// Forgotten with the release's recent statuses.
    pub red_on_forge: Vec<CommitId>,
}

/// Something first seen about a release, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub commit: CommitId,
    pub since: DateTime<Utc>,
}

impl Sighting {
    /// When this was first seen about `commit`, if it is about `commit`.
    pub fn since_for(sighting: Option<&Sighting>, commit: &CommitId) -> Option<DateTime<Utc>> {
        sighting.filter(|s| s.commit == *commit).map(|s| s.since)
    }
}

/// A commit status recorded in the state, waiting to be moved to the outbox
/// (and, for the release's own status with receipts on, to the receipt
/// queue). `id` makes that move idempotent across a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    pub id: u64,
    pub status: CommitStatus,
    /// Whether the forge gets it (`report.statuses`); always without receipts.
    pub to_forge: bool,
    /// With receipts on, on the release's own status: the receipt to write.
    pub receipt: Option<ReceiptNote>,
}

impl Unsent {
    /// A status for the forge alone, as without receipts.
    pub fn forge_only(id: u64, status: CommitStatus) -> Self {
        Self {
            id,
            status,
            to_forge: true,
            receipt: None,
        }
    }
}

/// What a receipt says beyond its status (the host, its key, its running
/// system and boot are the sink's to add when it queues it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptNote {
    /// The release's source commit, if it names one.
    pub source: Option<CommitId>,
}

/// The release the anti-rollback checks compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub commit: CommitId,
    pub serial: u64,
}

/// What one deploy is about: the release commit, its serial and this host's
/// toplevel. These are the `FERRY_COMMIT`, `FERRY_SERIAL` and
/// `FERRY_TOPLEVEL` journal fields of every event of the deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub commit: CommitId,
    pub serial: u64,
    pub toplevel: StorePath,
}

/// The phase a deploy had reached when last recorded, with exactly the data
/// that phase needs, so a restart resumes it. Each phase is recorded before
/// the step it names is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Verified and preflighted: the closure is realised and the system
    /// profile set.
    Realising,
    /// The transient switch unit was (or was about to be) started.
    Switching,
    /// The switch finished with this result: health is checked next.
    Checking { switch: SwitchResult },
    /// A rollback to the previous system `to` was started because of
    /// `problem` (plain words, as the final status reports it).
    RollingBack { to: StorePath, problem: String },
    /// Installed and healthy, and the release needs a reboot (a new kernel
    /// or initrd, or a `boot` release), which the reboot policy schedules
    /// `at` this moment of the maintenance window.
    AwaitingReboot { at: DateTime<Utc> },
    /// The reboot was requested (or was about to be) during boot `boot`:
    /// in that boot it is requested again, in any other it happened, and
    /// what booted is checked.
    Rebooting { boot: BootId },
}

/// Names one boot of this system: different in every boot, containers'
/// boots included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootId(String);

impl BootId {
    /// At most this many characters.
    pub const MAX_CHARS: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for BootId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > Self::MAX_CHARS || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("`{s}` is not a boot id"));
        }
        Ok(BootId(s.to_owned()))
    }
}

impl std::fmt::Display for BootId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Phase {
    /// The phase's one stable name: in `state.json`, in the journal's
    /// `FERRY_PHASE` field and in `status --json` (`in_progress.phase`).
    /// These names are an interface: docs/operations.md lists them.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Realising => "realising",
            Phase::Switching => "switching",
            Phase::Checking { .. } => "checking",
            Phase::RollingBack { .. } => "rolling-back",
            Phase::AwaitingReboot { .. } => "awaiting-reboot",
            Phase::Rebooting { .. } => "rebooting",
        }
    }
}

/// What follows a phase when the deploy ends there instead.
pub const END: &str = "the end";

/// The legal transitions, by phase name, in pipeline order: what each phase
/// carries, and what may be recorded after it ([`END`]: the deploy ends).
/// The reconcile asserts every step it takes against this table, and
/// docs/architecture.md's phase table is rendered from it by a test.
pub const TRANSITIONS: &[(&str, &str, &[&str])] = &[
    ("realising", "—", &["switching", END]),
    ("switching", "—", &["checking"]),
    (
        "checking",
        "the `SwitchResult`",
        &["rolling-back", "awaiting-reboot", END],
    ),
    ("rolling-back", "the previous system and the problem", &[END]),
    (
        "awaiting-reboot",
        "the moment of the reboot",
        &["awaiting-reboot", "rebooting", END],
    ),
    ("rebooting", "the boot the reboot was requested in", &[END]),
];

impl Phase {
    /// What may follow this phase (see [`TRANSITIONS`]).
    pub fn successors(&self) -> &'static [&'static str] {
        TRANSITIONS
            .iter()
            .find(|(name, _, _)| *name == self.name())
            .map_or(&[], |(_, _, next)| next)
    }
}

/// A deploy in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub target: Target,
    /// The branch tip the release was accepted at: the release itself, or
    /// the last approval on top of it (remembered as seen when it ends).
    pub tip: CommitId,
    /// The release's source commit (statuses go there too).
    pub source: Option<CommitId>,
    pub action: Action,
    pub phase: Phase,
    /// The system that was running before, for rollback.
    pub previous: Option<StorePath>,
    /// Units already failed before the switch: only new failures count.
    pub failed_before: Vec<String>,
    pub started: DateTime<Utc>,
}

/// The end of a deploy attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub commit: CommitId,
    pub serial: u64,
    pub toplevel: Option<StorePath>,
    pub result: OutcomeKind,
    /// Plain words, as sent to the forge.
    pub description: String,
    pub at: DateTime<Utc>,
}

/// The kinds of ending a deploy can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Switched (or already running) and healthy.
    Success,
    /// Switched; a reboot is needed for the new kernel or initrd.
    SuccessRebootRequired,
    /// A `boot` deploy: the new system becomes active at the next reboot.
    Installed,
    /// Refused before anything changed (verification, preflight).
    Refused,
    /// Switch or health failed; rolled back (or rollback disabled).
    Failed,
    /// Something outside the release went wrong (cache, store, D-Bus).
    Error,
}

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt ({detail}); move it aside to start afresh (the anti-rollback anchor is lost then: check the deploy branch by hand)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} was written by a newer ferry-agent (state format {version}; this one reads formats 1 to {STATE_VERSION_REBOOTS}): run the newer agent again (see docs/operations.md, Upgrading and downgrading the agent)")]
    Newer { path: PathBuf, version: u32 },
}

/// Reads and writes [`State`] in a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// The state last read, with the identity of the `state.json` it was
    /// read from: a poll asks several times, and the file is read again
    /// only once it has been replaced (every save renames a new file in).
    last: std::sync::Arc<std::sync::Mutex<Option<LastRead>>>,
}

/// A state as read, with the stamps of the files it was read from.
#[derive(Debug)]
struct LastRead {
    state_json: FileStamp,
    /// The extension `state.json` names, and its stamp (`None`: absent).
    extension: Option<(PathBuf, Option<FileStamp>)>,
    state: State,
}

/// What tells one version of a file from another: device, inode, size and
/// modification time. A save renames a new file in, so a new inode.
type FileStamp = (u64, u64, u64, i64, i64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl StateDir {
    /// Opens (creating with mode 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        create_dir(dir, 0o700).map_err(|source| StateError::Write {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            last: Default::default(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current state; the default when none was ever written.
    pub fn load(&self) -> Result<State, StateError> {
        // Taken before the read: a file replaced meanwhile only makes the
        // next load read again.
        let before = stamp(&self.dir.join(STATE_FILE));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(now), Some(read)) = (before, last.as_ref()) {
            let extension_same = match &read.extension {
                Some((path, then)) => stamp(path) == *then,
                None => true,
            };
            if now == read.state_json && extension_same {
                return Ok(read.state.clone());
            }
        }
        // A reader beside the agent (`status`) may read `state.json` just
        // before a save replaces it and removes its extension: read again
        // then, as the agent saves at most a few times a poll.
        let mut tries = 0;
        loop {
            let (state, extension_gone, extension) = self.load_once()?;
            tries += 1;
            if !extension_gone {
                *last = before.map(|state_json| LastRead {
                    state_json,
                    extension: extension.map(|path| {
                        let then = stamp(&path);
                        (path, then)
                    }),
                    state: state.clone(),
                });
                return Ok(state);
            }
            if tries == 3 {
                return Ok(state);
            }
        }
    }

    /// The state, and whether an extension it may have had was missing
    /// while `state.json` changed meanwhile.
    fn load_once(&self) -> Result<(State, bool, Option<PathBuf>), StateError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((State::default(), false, None)),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        // The version first: a newer file is not corrupt, and its unknown
        // fields must not be reported as if it were.
        if let Ok(VersionFile { version }) = serde_json::from_slice(&bytes) {
            if version > STATE_VERSION_REBOOTS {
                return Err(StateError::Newer { path, version });
            }
        }
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut state = file.into_state().map_err(|detail| StateError::Corrupt {
            path: path.clone(),
            detail,
        })?;
        let ext_path = self.extension_path(&bytes);
        let ext = match std::fs::read(&ext_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let replaced = std::fs::read(&path).is_ok_and(|now| now != bytes);
                return Ok((state, replaced, Some(ext_path)));
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: ext_path,
                    source,
                })
            }
        };
        // The floor alone is a state any agent may act on: an extension
        // this agent cannot use is set aside, never a reason to stop.
        match read_extension(&ext, &state) {
            Ok(extended) => state = extended,
            Err(why) => note_once(&ext_path, &why),
        }
        Ok((state, false, Some(ext_path)))
    }

    /// Replaces the state atomically: the extension (when the state has more
    /// than format 1 says) is written before the `state.json` it extends,
    /// and the extensions of earlier states are removed after it.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let floor = serde_json::to_vec_pretty(&StateFile::floor(state)).expect("state serialises");
        let ext_path = self.extension_path(&floor);
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Write { path, source }
        };
        match ExtensionFile::of(state) {
            Some(ext) => {
                let ext_dir = self.dir.join(EXTENSION_DIR);
                create_dir(&ext_dir, 0o700).map_err(write_err(&ext_dir))?;
                let bytes = serde_json::to_vec_pretty(&ext).expect("extension serialises");
                atomic_write(&ext_path, &bytes).map_err(write_err(&ext_path))?;
            }
            // The same floor may have had an extension: gone before the
            // floor is written again, so it cannot come back with it.
            None => remove_file(&ext_path).map_err(write_err(&ext_path))?,
        }
        let path = self.dir.join(STATE_FILE);
        atomic_write(&path, &floor).map_err(write_err(&path))?;
        // Extensions of floors that are no longer there: never read again
        // (each is bound to its floor); a removal that fails is retried at
        // the next save.
        if let Ok(entries) = std::fs::read_dir(self.dir.join(EXTENSION_DIR)) {
            for entry in entries.flatten() {
                if entry.path() != ext_path {
                    let _ = remove_file(&entry.path());
                }
            }
        }
        Ok(())
    }

    /// Where the extension of the `state.json` holding `floor` is.
    fn extension_path(&self, floor: &[u8]) -> PathBuf {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(floor);
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(EXTENSION_DIR).join(format!("{name}.json"))
    }
}

/// `floor` with the extension `bytes` added, or why the extension is set aside.
fn read_extension(bytes: &[u8], floor: &State) -> Result<State, String> {
    #[derive(serde::Deserialize)]
    struct Format {
        format: u32,
    }
    let Format { format } = serde_json::from_slice(bytes).map_err(|e| format!("unreadable ({e})"))?;
    if format > EXTENSION_FORMAT {
        return Err(format!(
            "written by a newer ferry-agent (extension format {format}; this one reads 1 to {EXTENSION_FORMAT})"
        ));
    }
    let ext: ExtensionFile = serde_json::from_slice(bytes).map_err(|e| format!("unreadable ({e})"))?;
    let mut state = floor.clone();
    ext.apply(&mut state).map_err(|e| format!("unreadable ({e})"))?;
    Ok(state)
}

/// Says once per process that an extension is set aside: the state is read
/// at every poll, and nothing changes until this agent writes it again.
fn note_once(path: &Path, why: &str) {
    static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "{} is {why}: acting on state.json alone, as format 1 says it (the statuses already \
             posted, first sightings and a reboot's schedule of the newer agent are not known here; \
             see docs/operations.md, Upgrading and downgrading the agent)",
            path.display()
        );
    }
}

impl OutcomeKind {
    /// Whether the deploy reached its goal.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            OutcomeKind::Success | OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed
        )
    }

    /// The name used in the state file and `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::SuccessRebootRequired => "success-reboot-required",
            OutcomeKind::Installed => "installed",
            OutcomeKind::Refused => "refused",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        use OutcomeKind::*;
        [Success, SuccessRebootRequired, Installed, Refused, Failed, Error]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let commit: CommitId = "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap();
        let toplevel: StorePath = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
            .parse()
            .unwrap();
        let mut state = State {
            last_seen_tip: Some(commit.clone()),
            anchor: Some(Anchor {
                commit: commit.clone(),
                serial: 7,
            }),
            in_flight: Some(InFlight {
                tip: commit.clone(),
                target: Target {
                    commit: commit.clone(),
                    serial: 7,
                    toplevel: toplevel.clone(),
                },
                source: None,
                action: Action::Boot,
                phase: Phase::Switching,
                previous: Some(toplevel.clone()),
                failed_before: vec!["old.service".into()],
                started: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            }),
            last_outcome: Some(Outcome {
                commit: commit.clone(),
                serial: 6,
                toplevel: Some(toplevel),
                result: OutcomeKind::SuccessRebootRequired,
                description: "deployed; reboot required".into(),
                at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            }),
            last_success: None,
            unsent: vec![Unsent::forge_only(
                42,
                CommitStatus::new(
                    commit.clone(),
                    StatusState::Success,
                    "ferry/web1",
                    "web1 runs release 7",
                ),
            )],
            recent_statuses: vec![CommitStatus::new(
                commit.clone(),
                StatusState::Pending,
                "ferry/web1",
                "deploying release 7 to web1",
            )],
            closure_missing: Some(Sighting {
                commit: commit.clone(),
                since: DateTime::from_timestamp(1_800_000_100, 0).unwrap(),
            }),
            fault: Some(Sighting {
                commit: commit.clone(),
                since: DateTime::from_timestamp(1_800_000_200, 0).unwrap(),
            }),
            red_on_forge: Vec::new(),
        };
        state.last_success = state.last_outcome.clone();
        state
    }

    #[test]
    fn receipts_and_red_statuses_round_trip_in_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(&dir.path().join("state")).unwrap();
        let mut state = sample();
        let source: CommitId = "1111111111111111111111111111111111111111".parse().unwrap();
        let status = state.unsent[0].status.clone();
        state.unsent = vec![
            Unsent {
                id: 1,
                status: status.clone(),
                to_forge: false,
                receipt: Some(ReceiptNote {
                    source: Some(source.clone()),
                }),
            },
            Unsent {
                id: 2,
                status,
                to_forge: true,
                receipt: Some(ReceiptNote { source: None }),
            },
        ];
        state.red_on_forge = vec![source];
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        // Without receipts, nothing new is written: what hosts always had.
        store.save(&sample()).unwrap();
        let ext = std::fs::read_dir(dir.path().join("state").join(EXTENSION_DIR))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect::<String>();
        assert!(!ext.contains("to_forge") && !ext.contains("receipt") && !ext.contains("red_on_forge"));
    }

    #[test]
    fn round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(&dir.path().join("state")).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap(), sample());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    /// A state read is kept until `state.json` is replaced: a save by this
    /// agent, by another process (another `StateDir` on the same
    /// directory), or a file written in place by hand are all seen at the
    /// next load; an unchanged file is not read again.
    #[test]
    fn a_load_reads_the_file_again_only_once_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let agent = StateDir::open(&dir.path().join("state")).unwrap();
        let other = StateDir::open(&dir.path().join("state")).unwrap();
        agent.save(&sample()).unwrap();
        assert_eq!(agent.load().unwrap(), sample());
        // Unchanged: answered from what was read (a file made unreadable
        // in place, keeping its stamp, would otherwise fail the load).
        let path = agent.dir().join(STATE_FILE);
        let stamp_before = stamp(&path).unwrap();
        assert_eq!(agent.load().unwrap(), sample());
        assert_eq!(stamp(&path).unwrap(), stamp_before);

        other.save(&State::default()).unwrap();
        assert_eq!(agent.load().unwrap(), State::default(), "another process's save");
        agent.save(&sample()).unwrap();
        assert_eq!(other.load().unwrap(), sample());
        std::fs::write(&path, "{").unwrap();
        assert!(
            matches!(agent.load(), Err(StateError::Corrupt { .. })),
            "a file written in place by hand"
        );
    }

    /// `state.json` as the first agents read it (format 1, before the state
    /// kept statuses): strictly, every field they do not know refused. A
    /// copy of their reader, so the floor cannot drift from it.
    mod first_agents {
        #![allow(dead_code)]
        use chrono::{DateTime, Utc};

        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct StateFile {
            pub version: u32,
            pub last_seen_tip: Option<String>,
            pub anchor: Option<AnchorFile>,
            pub in_flight: Option<InFlightFile>,
            pub last_outcome: Option<OutcomeFile>,
            #[serde(default)]
            pub last_success: Option<OutcomeFile>,
        }

        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct AnchorFile {
            commit: String,
            serial: u64,
        }

        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct InFlightFile {
            pub commit: String,
            pub serial: u64,
            pub source: Option<String>,
            pub toplevel: String,
            pub action: String,
            pub phase: String,
            pub previous: Option<String>,
            #[serde(default)]
            pub failed_before: Vec<String>,
            #[serde(default)]
            pub switch_result: Option<String>,
            pub started: DateTime<Utc>,
        }

        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct OutcomeFile {
            commit: String,
            serial: u64,
            toplevel: Option<String>,
            result: String,
            description: String,
            at: DateTime<Utc>,
        }
    }

    /// Every phase, rolling back to `to`.
    fn every_phase(to: &StorePath) -> Vec<Phase> {
        vec![
            Phase::Realising,
            Phase::Switching,
            Phase::Checking {
                switch: SwitchResult::Failed { code: 4 },
            },
            Phase::Checking {
                switch: SwitchResult::RebootRequired,
            },
            Phase::RollingBack {
                to: to.clone(),
                problem: "failed units: nginx.service".into(),
            },
            Phase::AwaitingReboot {
                at: DateTime::from_timestamp(1_800_000_600, 0).unwrap(),
            },
            Phase::Rebooting {
                boot: "4b1c0f6e-8a8e-4c57-a7f3-0d5b1c1d2e3f/1800000000000000"
                    .parse()
                    .unwrap(),
            },
        ]
    }

    /// Every state this agent can be in, with everything a newer format
    /// added: sightings, statuses, an approval tip and each phase.
    fn every_kind_of_state() -> Vec<State> {
        let to: StorePath = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
            .parse()
            .unwrap();
        let mut states = vec![State::default(), sample()];
        for phase in every_phase(&to) {
            let mut state = sample();
            let flight = state.in_flight.as_mut().unwrap();
            flight.phase = phase;
            // Written as the rollback's target while rolling back.
            flight.previous = Some(to.clone());
            flight.tip = "a222222222222222222222222222222222222222".parse().unwrap();
            states.push(state);
        }
        let mut plain = sample();
        plain.unsent.clear();
        plain.recent_statuses.clear();
        plain.closure_missing = None;
        plain.fault = None;
        states.push(plain);
        states
    }

    /// Whatever the state, `state.json` is what the first agents read, and
    /// says only what they may act on; everything else is in the extension,
    /// and this agent loads it all back.
    #[test]
    fn state_json_is_always_what_the_first_agents_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        for state in every_kind_of_state() {
            store.save(&state).unwrap();
            let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
            let first: first_agents::StateFile =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(first.version, 1, "{text}");
            if let Some(flight) = first.in_flight {
                assert!(
                    ["realising", "switching", "checking", "rolling-back"].contains(&flight.phase.as_str()),
                    "{text}"
                );
                let now = state.in_flight.as_ref().unwrap();
                if matches!(now.phase, Phase::AwaitingReboot { .. } | Phase::Rebooting { .. }) {
                    // Switched, healthy, and waiting for its reboot: to an
                    // older agent, a switch that asked for a reboot.
                    assert_eq!(flight.phase, "checking");
                    assert_eq!(flight.switch_result.as_deref(), Some("reboot-required"));
                }
            }
            assert_eq!(store.load().unwrap(), state, "{text}");
            // The extension is there only when the state holds more.
            let extensions = std::fs::read_dir(dir.path().join(EXTENSION_DIR))
                .map(|d| d.count())
                .unwrap_or(0);
            let more = StateFile::floor(&state).into_state().unwrap() != state;
            assert_eq!(extensions, usize::from(more), "{text}");
        }
    }

    /// What an older agent acts on is the floor alone: this agent reads it
    /// the same way when the extension is gone or cannot be used.
    #[test]
    fn the_floor_alone_is_a_state_to_act_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        let mut state = sample();
        state.in_flight.as_mut().unwrap().phase = Phase::AwaitingReboot {
            at: DateTime::from_timestamp(1_800_000_600, 0).unwrap(),
        };
        store.save(&state).unwrap();
        let ext_dir = dir.path().join(EXTENSION_DIR);
        let ext = std::fs::read_dir(&ext_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let floor = || {
            let mut floor = state.clone();
            floor.unsent.clear();
            floor.recent_statuses.clear();
            floor.closure_missing = None;
            floor.fault = None;
            floor.in_flight.as_mut().unwrap().phase = Phase::Checking {
                switch: SwitchResult::RebootRequired,
            };
            floor
        };
        let text = std::fs::read_to_string(&ext).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["format"], 1, "{text}");

        // Fields a newer agent added within the format are ignored.
        let mut newer = value.clone();
        newer["later"] = serde_json::json!({"anything": [1, 2]});
        newer["in_flight"]["later"] = serde_json::json!(true);
        newer["recent_statuses"][0]["later"] = serde_json::json!("x");
        std::fs::write(&ext, serde_json::to_vec(&newer).unwrap()).unwrap();
        assert_eq!(store.load().unwrap(), state);
        // A phase a newer agent added within the format: the floor's.
        let mut phase = value.clone();
        phase["in_flight"]["phase"] = serde_json::json!("some-later-phase");
        std::fs::write(&ext, serde_json::to_vec(&phase).unwrap()).unwrap();
        assert_eq!(store.load().unwrap().in_flight, floor().in_flight);

        // A newer format, an unreadable or a missing extension: the floor.
        let mut next = value.clone();
        next["format"] = serde_json::json!(2);
        for bytes in [
            serde_json::to_vec(&next).unwrap(),
            b"{\"format\": 1, \"unsent\": 7}".to_vec(),
            b"{".to_vec(),
        ] {
            std::fs::write(&ext, bytes).unwrap();
            assert_eq!(store.load().unwrap(), floor());
        }
        std::fs::remove_file(&ext).unwrap();
        assert_eq!(store.load().unwrap(), floor());

        // An older agent writes state.json again: the extension of the
        // floor it replaced no longer belongs to it.
        store.save(&state).unwrap();
        let older = std::fs::read_to_string(dir.path().join(STATE_FILE))
            .unwrap()
            .replace("\"serial\": 7", "\"serial\": 8");
        std::fs::write(dir.path().join(STATE_FILE), older).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.anchor.unwrap().serial, 8);
        assert!(loaded.recent_statuses.is_empty() && loaded.closure_missing.is_none());
        assert!(matches!(
            loaded.in_flight.unwrap().phase,
            Phase::Checking {
                switch: SwitchResult::RebootRequired
            }
        ));
    }

    /// Killed before any of the writes of a save, the agent finds the state
    /// before the save or after it, never the new floor with the old
    /// extension or the reverse.
    #[test]
    fn a_save_interrupted_anywhere_leaves_the_old_state_or_the_new() {
        use crate::io::durable::faults;
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        let states = every_kind_of_state();
        for (i, old) in states.iter().enumerate() {
            let new = &states[(i + 1) % states.len()];
            for n in 1..=3 {
                store.save(old).unwrap();
                faults::kill_before_write(n);
                let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.save(new)));
                faults::kill_before_write(usize::MAX);
                let loaded = store.load().unwrap();
                match killed {
                    Ok(saved) => {
                        saved.unwrap();
                        assert_eq!(&loaded, new, "save {i}, no kill at write {n}");
                    }
                    Err(_) => assert!(&loaded == old || &loaded == new, "save {i}, killed at write {n}"),
                }
            }
        }
    }

    /// Files of formats 2 and 3, which agents before the extension wrote
    /// into `state.json` itself, still load; a newer `state.json` is refused
    /// as newer, not as corrupt.
    #[test]
    fn files_of_formats_2_and_3_load_and_a_newer_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{
  "version": 3,
  "last_seen_tip": "a222222222222222222222222222222222222222",
  "anchor": { "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8", "serial": 7 },
  "in_flight": {
    "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
    "tip": "a222222222222222222222222222222222222222",
    "serial": 7,
    "source": null,
    "toplevel": "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1",
    "action": "switch",
    "phase": "awaiting-reboot",
    "previous": null,
    "failed_before": [],
    "switch_result": null,
    "reboot_at": "2027-01-15T03:00:00Z",
    "started": "2027-01-15T02:00:00Z"
  },
  "last_outcome": null,
  "last_success": null,
  "recent_statuses": [
    { "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8", "state": "pending", "context": "ferry/web1", "description": "deploying release 7 to web1" }
  ],
  "closure_missing": { "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8", "since": "2027-01-15T01:00:00Z" }
}"#,
        )
        .unwrap();
        let state = store.load().unwrap();
        let flight = state.in_flight.clone().unwrap();
        assert_eq!(flight.tip.to_string(), "a222222222222222222222222222222222222222");
        assert!(matches!(flight.phase, Phase::AwaitingReboot { .. }));
        assert_eq!(state.recent_statuses.len(), 1);
        assert!(state.closure_missing.is_some());
        // Written again, it is the floor and its extension.
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        serde_json::from_str::<first_agents::StateFile>(&text).unwrap();

        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"version": 4, "last_seen_tip": null, "anchor": null, "in_flight": null, "last_outcome": null, "later": 1}"#,
        )
        .unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Newer { version: 4, .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("newer ferry-agent")
                && err.contains("this one reads formats 1 to 3")
                && !err.contains("corrupt"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_state_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            b"{\"version\": 1, \"last_seen_tip\": \"zz\"",
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("is corrupt") && err.contains("move it aside"),
            "{err}"
        );
    }

    /// Every phase, with its data, survives a save and a load.
    #[test]
    fn every_phase_has_one_row_of_transitions_that_names_only_phases() {
        let to: StorePath = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
            .parse()
            .unwrap();
        let phases = [
            Phase::Realising,
            Phase::Switching,
            Phase::Checking {
                switch: SwitchResult::Ok,
            },
            Phase::RollingBack {
                to,
                problem: String::new(),
            },
            Phase::AwaitingReboot { at: Utc::now() },
            Phase::Rebooting {
                boot: "b/1".parse().unwrap(),
            },
        ];
        let names: Vec<&str> = phases.iter().map(Phase::name).collect();
        assert_eq!(
            TRANSITIONS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
            names,
            "one row per phase, in pipeline order"
        );
        for phase in &phases {
            assert!(!phase.successors().is_empty(), "{} leads nowhere", phase.name());
            for next in phase.successors() {
                assert!(*next == END || names.contains(next), "{} → {next}", phase.name());
            }
        }
        // What the pipeline never does.
        assert!(
            !Phase::Switching.successors().contains(&END),
            "a switch is always checked"
        );
        assert!(!Phase::Realising.successors().contains(&"checking"));
    }

    #[test]
    fn every_phase_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        let to: StorePath = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
            .parse()
            .unwrap();
        for phase in every_phase(&to) {
            let mut state = sample();
            let flight = state.in_flight.as_mut().unwrap();
            flight.phase = phase.clone();
            flight.previous = Some(to.clone());
            store.save(&state).unwrap();
            let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
            // The phases format 1 knows are written as they are; the others
            // in the extension.
            let reboots = matches!(phase, Phase::AwaitingReboot { .. } | Phase::Rebooting { .. });
            let written = if reboots { "checking" } else { phase.name() };
            assert!(text.contains(&format!("\"phase\": \"{written}\"")), "{text}");
            assert!(text.contains("\"version\": 1,"), "{text}");
            assert_eq!(store.load().unwrap(), state, "{}", phase.name());
        }
    }

    /// A deploy accepted at an approval above its release keeps both: the
    /// tip in the extension, which agents before approvals never read.
    #[test]
    fn a_deploy_accepted_at_an_approval_remembers_the_tip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        let mut state = sample();
        let approval: CommitId = "a222222222222222222222222222222222222222".parse().unwrap();
        state.in_flight.as_mut().unwrap().tip = approval.clone();
        state.closure_missing = None;
        state.fault = None;
        store.save(&state).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(!text.contains(&approval.to_string()), "{text}");
        assert_eq!(store.load().unwrap(), state);
    }

    /// A state file as agents before the typed phases wrote it, one per
    /// phase: hosts that upgrade mid-deploy resume where they were.
    #[test]
    fn loads_the_files_hosts_already_have() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        let file = |phase: &str, switch_result: &str| {
            format!(
                r#"{{
  "version": 1,
  "last_seen_tip": "9fceb02d0ae598e95dc970b74767f19372d61af8",
  "anchor": {{ "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8", "serial": 7 }},
  "in_flight": {{
    "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
    "serial": 7,
    "source": null,
    "toplevel": "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1",
    "action": "switch",
    "phase": "{phase}",
    "previous": "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1",
    "failed_before": [],
    "switch_result": {switch_result},
    "started": "2027-01-15T08:00:00Z"
  }},
  "last_outcome": null
}}"#
            )
        };
        let previous: StorePath = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
            .parse()
            .unwrap();
        let cases = [
            ("realising", "null", Phase::Realising),
            ("switching", "null", Phase::Switching),
            (
                "checking",
                "\"failed:4\"",
                Phase::Checking {
                    switch: SwitchResult::Failed { code: 4 },
                },
            ),
            (
                "checking",
                "\"reboot-required\"",
                Phase::Checking {
                    switch: SwitchResult::RebootRequired,
                },
            ),
            // Unreadable: observed again, never taken for a success.
            ("checking", "null", Phase::Switching),
            ("checking", "\"garbled\"", Phase::Switching),
            (
                "rolling-back",
                "\"switch-to-configuration failed (exit 4)\"",
                Phase::RollingBack {
                    to: previous.clone(),
                    problem: "switch-to-configuration failed (exit 4)".into(),
                },
            ),
        ];
        for (name, switch_result, phase) in cases {
            std::fs::write(dir.path().join(STATE_FILE), file(name, switch_result)).unwrap();
            let state = store.load().unwrap();
            let flight = state.in_flight.expect("in flight");
            assert_eq!(flight.phase, phase, "{name} {switch_result}");
            assert_eq!(flight.target.serial, 7);
            assert_eq!(flight.action, Action::Switch);
            assert_eq!(flight.previous.as_ref(), Some(&previous));
            assert_eq!(state.last_seen_tip, state.anchor.map(|a| a.commit));
            // Written before approvals: the tip the deploy was accepted at was the release.
            assert_eq!(flight.tip, flight.target.commit);
        }
        // The one thing a rollback cannot do without is the system to go back to.
        let orphan = file("rolling-back", "\"x\"").replace(
            "\"/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1\"",
            "null",
        );
        std::fs::write(dir.path().join(STATE_FILE), orphan).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("without a previous system"), "{err}");
        std::fs::write(dir.path().join(STATE_FILE), file("rollingback", "null")).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("unknown phase `rollingback`"), "{err}");
    }

    #[test]
    fn saving_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path()).unwrap();
        for _ in 0..3 {
            store.save(&sample()).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                std::ffi::OsString::from(EXTENSION_DIR),
                std::ffi::OsString::from(STATE_FILE)
            ]
        );
        // One extension: of the floor that is there.
        assert_eq!(
            std::fs::read_dir(dir.path().join(EXTENSION_DIR)).unwrap().count(),
            1
        );
    }
}
