//! The durable outbox: commit statuses waiting for the forge, one file each
//! in `<state_dir>/outbox`, named by a sequence number so delivery follows
//! creation order across restarts, bounded, and a file format pinned by a
//! test (the files hosts already have keep loading). [`drain`] delivers them
//! oldest first through the forge client: a network failure or 5xx stops the
//! drain (order is kept, it is retried later), a refused status is dropped.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::io::durable::{atomic_write, create_dir, remove_file};
use crate::io::forge::{CommitStatus, Delivery, ForgeClient, StatusState};
use crate::state::StateError;

/// The file, beside the outbox, that remembers a rate limit.
const RATE_LIMIT_FILE: &str = "forge-rate-limit";

/// Oldest statuses are dropped beyond this many waiting (with a log line).
pub const MAX_OUTBOX_ENTRIES: usize = 1000;

/// Statuses waiting for the forge, one file each in `<state_dir>/outbox`,
/// named by a sequence number so delivery follows creation order.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// A status waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub status: CommitStatus,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuedFile {
    commit: String,
    state: String,
    context: String,
    description: String,
    /// The id the status was recorded under in `state.json`, so a flush
    /// repeated after a crash queues it once (absent in older entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

impl Outbox {
    /// Opens (creating) the outbox directory.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("outbox");
        create_dir(&dir, 0o700).map_err(|source| StateError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Where the forge's rate limit is remembered: `<state_dir>/forge-rate-limit`,
    /// one RFC 3339 time, so a restarted agent leaves the forge alone too.
    fn limit_file(&self) -> PathBuf {
        self.dir.with_file_name(RATE_LIMIT_FILE)
    }

    /// Until when the forge asked to be left alone (a rate limit), as last
    /// recorded; `None` when it did not (or the file cannot be read: the
    /// next delivery finds out again).
    pub fn limited_until(&self) -> Option<DateTime<Utc>> {
        let text = std::fs::read_to_string(self.limit_file()).ok()?;
        DateTime::parse_from_rfc3339(text.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Records (or, with `None`, forgets) until when the forge asked to be
    /// left alone.
    pub fn set_limited_until(&self, until: Option<DateTime<Utc>>) -> Result<(), StateError> {
        let path = self.limit_file();
        let result = match until {
            Some(t) => atomic_write(&path, t.to_rfc3339().as_bytes()),
            None => remove_file(&path),
        };
        result.map_err(|source| StateError::Write { path, source })
    }

    fn entries(&self) -> Result<Vec<(u64, PathBuf)>, StateError> {
        let read_err = |source| StateError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse().ok());
            if let Some(seq) = seq {
                entries.push((seq, path));
            }
        }
        entries.sort();
        Ok(entries)
    }

    /// Appends a status durably; returns how many older ones were dropped to
    /// stay within [`MAX_OUTBOX_ENTRIES`].
    pub fn push(&self, status: &CommitStatus) -> Result<usize, StateError> {
        self.append(self.entries()?, status, None)
    }

    /// Appends the status recorded as `id` durably, unless an entry with that
    /// id already waits (queued before a crash that came before `state.json`
    /// could say so); returns how many older ones were dropped.
    pub fn push_once(&self, id: u64, status: &CommitStatus) -> Result<usize, StateError> {
        let entries = self.entries()?;
        for (_, path) in &entries {
            let queued = std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<QueuedFile>(&b).ok());
            if queued.is_some_and(|q| q.id == Some(id)) {
                return Ok(0);
            }
        }
        self.append(entries, status, Some(id))
    }

    fn append(
        &self,
        entries: Vec<(u64, PathBuf)>,
        status: &CommitStatus,
        id: Option<u64>,
    ) -> Result<usize, StateError> {
        let seq = entries.last().map_or(1, |(s, _)| s + 1);
        let file = QueuedFile {
            commit: status.commit.to_string(),
            state: status.state.as_str().into(),
            context: status.context.clone(),
            description: status.description.clone(),
            id,
        };
        let bytes = serde_json::to_vec(&file).expect("status serialises");
        let path = self.dir.join(format!("{seq:020}.json"));
        atomic_write(&path, &bytes).map_err(|source| StateError::Write { path, source })?;
        let excess = (entries.len() + 1).saturating_sub(MAX_OUTBOX_ENTRIES);
        for (_, path) in entries.iter().take(excess) {
            let _ = remove_file(path);
        }
        Ok(excess)
    }

    /// The oldest waiting status. Unreadable entries are removed (they could
    /// never be delivered) and reported as the error.
    pub fn peek(&self) -> Result<Option<Queued>, StateError> {
        let Some((seq, path)) = self.entries()?.into_iter().next() else {
            return Ok(None);
        };
        let bytes = std::fs::read(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        let parsed: Option<CommitStatus> = serde_json::from_slice::<QueuedFile>(&bytes).ok().and_then(|f| {
            Some(CommitStatus {
                commit: f.commit.parse().ok()?,
                state: StatusState::parse(&f.state)?,
                context: f.context,
                description: f.description,
            })
        });
        match parsed {
            Some(status) => Ok(Some(Queued { seq, status })),
            None => {
                let _ = remove_file(&path);
                Err(StateError::Corrupt {
                    path,
                    detail: "not a queued status; removed".into(),
                })
            }
        }
    }

    /// Removes a delivered status, synced: a power cut cannot bring it back
    /// to be sent again.
    pub fn remove(&self, seq: u64) -> Result<(), StateError> {
        let path = self.dir.join(format!("{seq:020}.json"));
        remove_file(&path).map_err(|source| StateError::Write { path, source })
    }

    /// How many statuses wait.
    pub fn len(&self) -> Result<usize, StateError> {
        Ok(self.entries()?.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }
}

/// What a drain of the outbox achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub delivered: usize,
    pub dropped: usize,
    /// Why the drain stopped early, if it did.
    pub stopped: Option<Delivery>,
}

/// Delivers the statuses waiting in `outbox` to `forge`, oldest first, until
/// the outbox is empty or a delivery must wait.
pub async fn drain(outbox: &Outbox, forge: &ForgeClient) -> Result<Drain, StateError> {
    let mut drain = Drain {
        delivered: 0,
        dropped: 0,
        stopped: None,
    };
    loop {
        let queued = match outbox.peek() {
            Ok(Some(q)) => q,
            Ok(None) => return Ok(drain),
            Err(StateError::Corrupt { .. }) => {
                drain.dropped += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        match forge.send(&queued.status).await {
            Delivery::Delivered => {
                outbox.remove(queued.seq)?;
                drain.delivered += 1;
            }
            Delivery::Rejected(_) => {
                outbox.remove(queued.seq)?;
                drain.dropped += 1;
            }
            other => {
                drain.stopped = Some(other);
                return Ok(drain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::forge::tests::status;

    #[test]
    fn outbox_files_hosts_already_have_still_load() {
        // Byte for byte what agents have written to `<state_dir>/outbox`:
        // without an id (older agents) and with one.
        let dir = tempfile::tempdir().unwrap();
        let outbox_dir = dir.path().join("outbox");
        std::fs::create_dir_all(&outbox_dir).unwrap();
        std::fs::write(
            outbox_dir.join("00000000000000000004.json"),
            br#"{"commit":"9fceb02d0ae598e95dc970b74767f19372d61af8","state":"pending","context":"ferry/web1","description":"deploying release 3 to web1"}"#,
        )
        .unwrap();
        std::fs::write(
            outbox_dir.join("00000000000000000005.json"),
            r#"{"commit":"9fceb02d0ae598e95dc970b74767f19372d61af8","state":"error","context":"ferry/web1","description":"café …","id":12}"#,
        )
        .unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let first = outbox.peek().unwrap().unwrap();
        assert_eq!(first.seq, 4);
        assert_eq!(
            first.status,
            CommitStatus::new(
                "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
                StatusState::Pending,
                "ferry/web1",
                "deploying release 3 to web1",
            )
        );
        // The entry queued under id 12 is recognised: not queued twice.
        outbox.push_once(12, &first.status).unwrap();
        assert_eq!(outbox.len().unwrap(), 2);
        outbox.remove(4).unwrap();
        let second = outbox.peek().unwrap().unwrap();
        assert_eq!((second.seq, second.status.state), (5, StatusState::Error));
        assert_eq!(second.status.description, "café …");

        // And what is written now is the same format, byte for byte.
        outbox.push_once(13, &first.status).unwrap();
        assert_eq!(
            std::fs::read_to_string(outbox_dir.join("00000000000000000006.json")).unwrap(),
            r#"{"commit":"9fceb02d0ae598e95dc970b74767f19372d61af8","state":"pending","context":"ferry/web1","description":"deploying release 3 to web1","id":13}"#
        );
        outbox.push(&first.status).unwrap();
        assert_eq!(
            std::fs::read_to_string(outbox_dir.join("00000000000000000007.json")).unwrap(),
            r#"{"commit":"9fceb02d0ae598e95dc970b74767f19372d61af8","state":"pending","context":"ferry/web1","description":"deploying release 3 to web1"}"#
        );
    }

    #[test]
    fn outbox_is_fifo_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        assert!(outbox.peek().unwrap().is_none());
        outbox.push(&status(StatusState::Pending)).unwrap();
        outbox.push(&status(StatusState::Success)).unwrap();
        // A new handle (a restart) sees the same queue in the same order.
        let again = Outbox::open(dir.path()).unwrap();
        let first = again.peek().unwrap().unwrap();
        assert_eq!(first.status.state, StatusState::Pending);
        again.remove(first.seq).unwrap();
        assert_eq!(again.peek().unwrap().unwrap().status.state, StatusState::Success);
        assert_eq!(again.len().unwrap(), 1);
        // Sequence numbers keep increasing after removals.
        again.push(&status(StatusState::Failure)).unwrap();
        let seqs: Vec<u64> = again.entries().unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3]);
    }

    #[test]
    fn a_status_recorded_under_an_id_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.push_once(7, &status(StatusState::Pending)).unwrap();
        outbox.push_once(8, &status(StatusState::Success)).unwrap();
        // The flush repeated after a crash: both already wait.
        outbox.push_once(7, &status(StatusState::Pending)).unwrap();
        outbox.push_once(8, &status(StatusState::Success)).unwrap();
        assert_eq!(outbox.len().unwrap(), 2);
        // Unidentified entries never match, and are still read.
        outbox.push(&status(StatusState::Failure)).unwrap();
        outbox.push_once(9, &status(StatusState::Failure)).unwrap();
        assert_eq!(outbox.len().unwrap(), 4);
        assert_eq!(outbox.peek().unwrap().unwrap().status.state, StatusState::Pending);
    }

    #[test]
    fn outbox_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let mut dropped = 0;
        for _ in 0..MAX_OUTBOX_ENTRIES + 2 {
            dropped += outbox.push(&status(StatusState::Pending)).unwrap();
        }
        assert_eq!(dropped, 2);
        assert_eq!(outbox.len().unwrap(), MAX_OUTBOX_ENTRIES);
        assert_eq!(outbox.peek().unwrap().unwrap().seq, 3);
    }

    #[test]
    fn corrupt_entry_is_removed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("outbox").join(format!("{:020}.json", 1)), b"junk").unwrap();
        outbox.push(&status(StatusState::Success)).unwrap();
        assert!(outbox.peek().is_err());
        assert_eq!(outbox.peek().unwrap().unwrap().status.state, StatusState::Success);
    }
}
