//! Commit statuses: what a deploy tells the forge, the HTTP request each forge
//! expects (GitHub, Gitea/Forgejo, GitLab), and the durable outbox that holds
//! statuses until the forge accepts them, in order, across restarts. The
//! statuses and their requests are `ferry_signer::forge`'s, the one copy the
//! signer posts with too; this module adds the agent's User-Agent. Building
//! requests is pure; sending is `forge.rs`'s.

use std::path::{Path, PathBuf};

use ferry_signer::forge::{status_request, Token};
use serde::{Deserialize, Serialize};

use crate::config::{absolute, Forge, ForgeTarget, Invalid, ReportConfig, ReportFile};
use crate::durable::atomic_write;
use crate::state::StateError;

/// One status to post on one commit; `CommitStatus::new` cuts the
/// description to [`MAX_DESCRIPTION_CHARS`].
pub use ferry_signer::forge::NewStatus as CommitStatus;
/// An HTTP request, ready to send: method is always POST.
pub use ferry_signer::forge::StatusRequest;
/// A commit status state, in Ferry's terms.
pub use ferry_signer::forge::StatusState;
/// GitHub refuses longer descriptions; we hold every forge to it.
pub use ferry_signer::forge::MAX_DESCRIPTION_CHARS;
/// Oldest statuses are dropped beyond this many waiting (with a log line).
pub const MAX_OUTBOX_ENTRIES: usize = 1000;

/// The `[report]` section of the configuration, validated: with a forge,
/// where and how to post (API URL defaulted per forge, repository and token
/// file required); `forge = "none"` is no forge at all.
pub(crate) fn validate(r: ReportFile) -> Result<ReportConfig, Invalid> {
    let token_file = |file: Option<PathBuf>| {
        file.map(|p| absolute(p, "token_file"))
            .transpose()
            .map_err(|p| Invalid::new("report.token_file", p))
    };
    let forge = match r.forge.0 {
        None => {
            token_file(r.token_file)?;
            None
        }
        Some(forge) => {
            let api_url = match (forge, r.api_url) {
                (_, Some(url)) => url.trim_end_matches('/').to_owned(),
                (Forge::Github, None) => "https://api.github.com".into(),
                (Forge::Gitlab, None) => "https://gitlab.com/api/v4".into(),
                (Forge::Gitea, None) => {
                    return Err(Invalid::new(
                        "report.api_url",
                        "required for gitea, e.g. https://git.example.com/api/v1",
                    ))
                }
            };
            if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
                return Err(Invalid::new(
                    "report.api_url",
                    format!("`{api_url}` is not an http(s) URL"),
                ));
            }
            if !ferry_signer::forge::token_travels_safely(&api_url) {
                return Err(Invalid::new(
                    "report.api_url",
                    format!(
                        "`{api_url}` is plain HTTP to another machine, so the forge token would cross \
                         the network in clear: use https:// (plain http:// only to this machine: \
                         localhost or a loopback address)"
                    ),
                ));
            }
            if r.repository.is_empty() {
                return Err(Invalid::new(
                    "report.repository",
                    "required: owner/repo (or a GitLab project id)",
                ));
            }
            let Some(token_file) = token_file(r.token_file)? else {
                return Err(Invalid::new(
                    "report.token_file",
                    "required to post statuses (a systemd credential, for example)",
                ));
            };
            Some(ForgeTarget {
                forge,
                api_url,
                repository: r.repository,
                token_file,
            })
        }
    };
    Ok(ReportConfig {
        forge,
        context: r.context,
        error_after: r.error_after.0,
    })
}

/// Builds the request `forge` expects for `status`: the signer's, with the
/// agent's User-Agent last. `token` is only placed in a header; callers must
/// never log the headers.
pub fn request_for(
    forge: Forge,
    api_url: &str,
    repository: &str,
    token: &Token,
    status: &CommitStatus,
) -> StatusRequest {
    let mut request = status_request(forge, api_url, repository, token, status);
    request
        .headers
        .push(("User-Agent", format!("ferry-agent/{}", env!("CARGO_PKG_VERSION"))));
    request
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

    fn status(state: StatusState) -> CommitStatus {
        CommitStatus::new(
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
        );
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
        );
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
        );
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
        );
        assert!(p.url.contains("/projects/42/statuses/"));
        assert_eq!(p.body["state"], "running");
    }

    #[test]
    fn headers_are_exactly_what_agents_have_always_sent() {
        let token = Token::new("T0K").unwrap();
        let ua = format!("ferry-agent/{}", env!("CARGO_PKG_VERSION"));
        let headers = |forge| {
            request_for(
                forge,
                "https://f/api",
                "o/r",
                &token,
                &status(StatusState::Success),
            )
            .headers
        };
        assert_eq!(
            headers(Forge::Github),
            vec![
                ("Authorization", "Bearer T0K".to_owned()),
                ("Accept", "application/vnd.github+json".to_owned()),
                ("X-GitHub-Api-Version", "2022-11-28".to_owned()),
                ("User-Agent", ua.clone()),
            ]
        );
        assert_eq!(
            headers(Forge::Gitea),
            vec![
                ("Authorization", "token T0K".to_owned()),
                ("User-Agent", ua.clone())
            ]
        );
        assert_eq!(
            headers(Forge::Gitlab),
            vec![("PRIVATE-TOKEN", "T0K".to_owned()), ("User-Agent", ua)]
        );
        // Every state, every forge: the names posted.
        for (state, name, gitlab) in [
            (StatusState::Pending, "pending", "running"),
            (StatusState::Success, "success", "success"),
            (StatusState::Failure, "failure", "failed"),
            (StatusState::Error, "error", "failed"),
        ] {
            let body = |forge| request_for(forge, "https://f/api", "o/r", &token, &status(state)).body;
            assert_eq!(body(Forge::Github)["state"], name);
            assert_eq!(body(Forge::Gitea)["state"], name);
            assert_eq!(body(Forge::Gitlab)["state"], gitlab);
        }
        // GitLab project paths: everything but unreserved characters encoded.
        let r = request_for(
            Forge::Gitlab,
            "https://f/api",
            "my group/sub.g~r_p-1",
            &token,
            &status(StatusState::Success),
        );
        assert_eq!(
            r.url,
            "https://f/api/projects/my%20group%2Fsub.g~r_p-1/statuses/9fceb02d0ae598e95dc970b74767f19372d61af8"
        );
    }

    #[test]
    fn descriptions_at_the_limit_are_kept_whole() {
        let exact = "d".repeat(MAX_DESCRIPTION_CHARS);
        let s = CommitStatus::new(
            "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            StatusState::Success,
            "c",
            &exact,
        );
        assert_eq!(s.description, exact);
    }

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
    fn descriptions_are_cut_to_140_chars() {
        let long = "é".repeat(300);
        let s = CommitStatus::new(
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
