//! Commit statuses: what a deploy tells the forge, the exact HTTP request each
//! forge expects (GitHub, Gitea/Forgejo, GitLab; built by `ferry_signer::forge`,
//! the one copy `ferry-signer status` reads back with), and the durable outbox
//! that holds statuses until the forge accepts them, in order, across
//! restarts. Building requests is pure; sending is `forge.rs`'s.

use std::path::{Path, PathBuf};

use ferry_signer::forge::{ForgeKind, ForgeSettings};
use serde::{Deserialize, Serialize};

use crate::config::Forge;
use crate::state::{atomic_write, StateError};

/// One status to post on one commit; `Status::new` cuts the description to
/// the forge limit. The signer's type: one copy of the forge protocol.
pub use ferry_signer::forge::NewStatus as Status;
pub use ferry_signer::forge::{StatusRequest, StatusState, Token, MAX_DESCRIPTION_CHARS};

/// Oldest statuses are dropped beyond this many waiting (with a log line).
pub const MAX_OUTBOX_ENTRIES: usize = 1000;

/// Builds the request `forge` expects for `status`, with the signer's
/// request builder. `token` is only placed in a header; callers must never
/// log the headers.
pub fn request_for(
    forge: Forge,
    api_url: &str,
    repository: &str,
    token: &Token,
    status: &Status,
) -> Option<StatusRequest> {
    let kind = match forge {
        Forge::None => return None,
        Forge::Github => ForgeKind::Github,
        Forge::Gitea => ForgeKind::Gitea,
        Forge::Gitlab => ForgeKind::Gitlab,
    };
    let settings = ForgeSettings {
        kind,
        api_url: api_url.trim_end_matches('/').to_owned(),
        repository: repository.to_owned(),
        context: status.context.clone(),
    };
    Some(settings.status_request(token, status))
}

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
    pub status: Status,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuedFile {
    commit: String,
    state: String,
    context: String,
    description: String,
}

impl Outbox {
    /// Opens (creating) the outbox directory.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("outbox");
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
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
    pub fn push(&self, status: &Status) -> Result<usize, StateError> {
        let entries = self.entries()?;
        let seq = entries.last().map_or(1, |(s, _)| s + 1);
        let file = QueuedFile {
            commit: status.commit.to_string(),
            state: status.state.as_str().into(),
            context: status.context.clone(),
            description: status.description.clone(),
        };
        let bytes = serde_json::to_vec(&file).expect("status serialises");
        atomic_write(&self.dir.join(format!("{seq:020}.json")), &bytes)?;
        let excess = (entries.len() + 1).saturating_sub(MAX_OUTBOX_ENTRIES);
        for (_, path) in entries.iter().take(excess) {
            let _ = std::fs::remove_file(path);
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
        let parsed: Option<Status> = serde_json::from_slice::<QueuedFile>(&bytes).ok().and_then(|f| {
            Some(Status {
                commit: f.commit.parse().ok()?,
                state: StatusState::parse(&f.state)?,
                context: f.context,
                description: f.description,
            })
        });
        match parsed {
            Some(status) => Ok(Some(Queued { seq, status })),
            None => {
                let _ = std::fs::remove_file(&path);
                Err(StateError::Corrupt {
                    path,
                    detail: "not a queued status; removed".into(),
                })
            }
        }
    }

    /// Removes a delivered status.
    pub fn remove(&self, seq: u64) -> Result<(), StateError> {
        let path = self.dir.join(format!("{seq:020}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Write { path, source }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: StatusState) -> Status {
        Status::new(
            "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            state,
            "ferry/web1",
            "deployed",
        )
    }

    #[test]
    fn github_request() {
        let r = request_for(
            Forge::Github,
            "https://api.github.com/",
            "ops/deploy",
            &Token::new("T0K").unwrap(),
            &status(StatusState::Success),
        )
        .unwrap();
        assert_eq!(
            r.url,
            "https://api.github.com/repos/ops/deploy/statuses/9fceb02d0ae598e95dc970b74767f19372d61af8"
        );
        assert!(r.headers.contains(&("Authorization", "Bearer T0K".into())));
        assert_eq!(
            r.body,
            serde_json::json!({"state": "success", "description": "deployed", "context": "ferry/web1"})
        );
    }

    #[test]
    fn gitea_request() {
        let r = request_for(
            Forge::Gitea,
            "https://git.example.com/api/v1",
            "ops/deploy",
            &Token::new("T0K").unwrap(),
            &status(StatusState::Pending),
        )
        .unwrap();
        assert_eq!(r.url, "https://git.example.com/api/v1/repos/ops/deploy/statuses/9fceb02d0ae598e95dc970b74767f19372d61af8");
        assert!(r.headers.contains(&("Authorization", "token T0K".into())));
        assert_eq!(r.body["state"], "pending");
    }

    #[test]
    fn gitlab_request() {
        let r = request_for(
            Forge::Gitlab,
            "https://gitlab.com/api/v4",
            "ops/deploy",
            &Token::new("T0K").unwrap(),
            &status(StatusState::Failure),
        )
        .unwrap();
        assert_eq!(r.url, "https://gitlab.com/api/v4/projects/ops%2Fdeploy/statuses/9fceb02d0ae598e95dc970b74767f19372d61af8");
        assert!(r.headers.contains(&("PRIVATE-TOKEN", "T0K".into())));
        assert_eq!(
            r.body,
            serde_json::json!({"state": "failed", "name": "ferry/web1", "description": "deployed"})
        );
        let p = request_for(
            Forge::Gitlab,
            "https://gitlab.com/api/v4",
            "42",
            &Token::new("T").unwrap(),
            &status(StatusState::Pending),
        )
        .unwrap();
        assert!(p.url.contains("/projects/42/statuses/"));
        assert_eq!(p.body["state"], "running");
        assert!(request_for(
            Forge::None,
            "",
            "",
            &Token::new("T").unwrap(),
            &status(StatusState::Pending)
        )
        .is_none());
    }

    #[test]
    fn descriptions_are_cut_to_140_chars() {
        let long = "é".repeat(300);
        let s = Status::new(
            "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            StatusState::Error,
            "c",
            &long,
        );
        assert_eq!(s.description.chars().count(), 140);
        assert!(s.description.ends_with('…'));
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
