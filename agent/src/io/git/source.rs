//! The deploy repository as seen from this host: a bare clone under the state
//! directory, the cheap "what is the branch tip?" question (one ref
//! advertisement, nothing downloaded), a fetch of that one branch with a size
//! cap, and the ancestry test behind the no-rewind rule. All git goes through
//! libgit2; calls block, so async callers use `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Direction, FetchOptions, Oid, RemoteCallbacks, Repository};
use zeroize::Zeroizing;

use serde::Deserialize;

use crate::config::value::{absolute, secs, HumanDuration, Invalid};
use crate::io::git::limits::{self, MAX_FETCH_BYTES, PACK_TIMEOUT};
use crate::io::git::mirror::{self, Mirror, MirrorFault};
use crate::io::git::{daemon as git_daemon, http as git_http};
use ferry_signer::s3::S3Location;

const REMOTE_REF: &str = "refs/ferry/tip";

/// The `[source]` section of the configuration, validated.
pub(crate) fn validate(source: SourceFile) -> Result<SourceConfig, Invalid> {
    check_repo_url(&source.url).map_err(|p| Invalid::new("source.url", p))?;
    if source.branch.is_empty() || !git2::Reference::is_valid_name(&format!("refs/heads/{}", source.branch)) {
        return Err(Invalid::new(
            "source.branch",
            format!("`{}` is not a valid branch name", source.branch),
        ));
    }
    let allowed_signers = absolute(source.allowed_signers, "allowed_signers")
        .map_err(|p| Invalid::new("source.allowed_signers", p))?;
    if source.poll_interval.0 < Duration::from_secs(1) {
        return Err(Invalid::new("source.poll_interval", "must be at least 1s"));
    }
    let token_file = source
        .token_file
        .map(|p| absolute(p, "token_file"))
        .transpose()
        .map_err(|p| Invalid::new("source.token_file", p))?;
    let s3_credentials_file = source
        .s3_credentials_file
        .map(|p| absolute(p, "s3_credentials_file"))
        .transpose()
        .map_err(|p| Invalid::new("source.s3_credentials_file", p))?;
    let s3 = source.url.starts_with("s3://");
    if s3 && token_file.is_some() {
        return Err(Invalid::new(
            "source.token_file",
            "an s3:// source is read with an S3 key pair, not a token: use source.s3_credentials_file",
        ));
    }
    if !s3 && s3_credentials_file.is_some() {
        return Err(Invalid::new(
            "source.s3_credentials_file",
            format!(
                "`{}` is not an s3:// URL: the file is only for a mirror in a bucket (use source.token_file for a private https repository)",
                source.url
            ),
        ));
    }
    if token_file.is_some() && source.url.starts_with("http://") && !token_travels_safely(&source.url) {
        return Err(Invalid::new(
            "source.token_file",
            format!(
                "`{}` is plain HTTP, so the token would cross the network in clear: use https://",
                source.url
            ),
        ));
    }
    Ok(SourceConfig {
        url: source.url,
        branch: source.branch,
        allowed_signers,
        poll_interval: source.poll_interval.0,
        jitter: source.jitter.0,
        token_file,
        s3_credentials_file,
    })
}

// A token goes only over HTTPS, or plain HTTP to this machine itself (a
// local mirror or proxy): the signer's rule, one copy for both binaries.
pub(crate) use ferry_signer::forge::token_travels_safely;

fn check_repo_url(url: &str) -> Result<(), String> {
    if url.starts_with("s3://") {
        return S3Location::parse(url)
            .map(|_| ())
            .map_err(|e| format!("{e}: a mirror in a bucket is named s3://bucket/prefix?region=…"));
    }
    let ok = ["https://", "http://", "git://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
        || url.starts_with('/');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not supported: use https://, http://, git://, file://, s3:// or an absolute path"
        ))
    }
}

/// Why talking to the deploy repository failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open the agent's clone at {path}: {source}")]
    Open { path: PathBuf, source: git2::Error },
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: git2::Error },
    #[error("{url} has no branch `{branch}`: check source.branch, or publish a first release")]
    NoBranch { url: String, branch: String },
    #[error("fetching {url} was aborted: the transfer exceeded {MAX_FETCH_BYTES} bytes")]
    TooLarge { url: String },
    #[error("fetched {url} but it did not deliver commit {commit}")]
    Missing { url: String, commit: Oid },
    #[error("cannot read token file {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("cannot read the mirror at {url}: {fault}")]
    Mirror { url: String, fault: MirrorFault },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl SourceError {
    /// Whether retrying later may help (network trouble) rather than a
    /// configuration or content problem.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Unreachable { .. } | SourceError::Mirror { .. })
    }
}

/// The agent's bare clone of the deploy branch.
pub struct Source {
    repo: Repository,
    url: String,
    branch: String,
    token_file: Option<PathBuf>,
    s3_credentials_file: Option<PathBuf>,
    /// Total time for a tip check and for a fetch (git://).
    deadlines: (Duration, Duration),
    /// For an http(s) URL, whether it serves a static mirror (asked once, at
    /// the first tip check) and the mirror's reader; an s3:// URL is one.
    mirror: std::sync::OnceLock<Option<Mirror>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("url", &self.url)
            .field("branch", &self.branch)
            .finish_non_exhaustive()
    }
}

/// Sets libgit2's process-wide options: its connect and read timeouts, its
/// syncing of what it writes, and no second hash of what it reads. Call once
/// at start.
pub fn set_libgit2_options(connect: Duration, read: Duration) -> Result<(), git2::Error> {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: these set integers in libgit2's global options. They are called
    // at start-up, before any thread uses libgit2, as git2 requires.
    #[allow(unsafe_code)]
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect))?;
        git2::opts::set_server_timeout_in_milliseconds(ms(read))?;
        // Objects, packs and refs synced to the disk as libgit2 writes them
        // (off by default, as in git): a power cut must not leave the clone
        // with a ref to an object that never reached the disk.
        let enable =
            libgit2_sys::git_libgit2_opts(libgit2_sys::GIT_OPT_ENABLE_FSYNC_GITDIR as std::ffi::c_int, 1);
        if enable < 0 {
            return Err(git2::Error::last_error(enable));
        }
    }
    // Every object in the clone was hashed on arrival, by libgit2's indexer
    // (a fetch over any transport, a mirror's packs), which names each object
    // by its content and detects SHA-1 collision attacks. Hashing it again at
    // every read (libgit2's default, unlike git's) guards only against a
    // writer of the state directory, who is root already; for a
    // 10,000-host `release.toml` it was 2 ms of every verify.
    git2::opts::strict_hash_verification(false);
    limits::set_connect_timeout(connect);
    Ok(())
}

impl Source {
    /// Opens or creates the bare clone at `path` for `url`'s `branch`.
    pub fn open(
        path: &Path,
        url: &str,
        branch: &str,
        token_file: Option<&Path>,
    ) -> Result<Self, SourceError> {
        let open_err = |source| SourceError::Open {
            path: path.to_owned(),
            source,
        };
        git_http::install().map_err(open_err)?;
        git_daemon::install().map_err(open_err)?;
        let repo = match Repository::open_bare(path) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(path).map_err(open_err)?,
        };
        Ok(Self {
            repo,
            url: url.to_owned(),
            branch: branch.to_owned(),
            token_file: token_file.map(Path::to_owned),
            s3_credentials_file: None,
            deadlines: (limits::LS_TIMEOUT, PACK_TIMEOUT),
            mirror: std::sync::OnceLock::new(),
        })
    }

    /// The key pair an s3:// source is read with (else found as for
    /// `s3://` caches, or none for a public bucket).
    pub fn with_s3_credentials(mut self, file: Option<&Path>) -> Self {
        self.s3_credentials_file = file.map(Path::to_owned);
        self
    }

    /// Other total deadlines for a tip check and a fetch (tests use short ones).
    pub fn with_deadlines(mut self, tip: Duration, fetch: Duration) -> Self {
        self.deadlines = (tip, fetch);
        self
    }

    /// The repository, for verification.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The token from `source.token_file`, read afresh for each call (so a
    /// rotated credential is picked up), for [`git_http::with_token`].
    fn token(&self) -> Result<Option<Zeroizing<String>>, SourceError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| SourceError::Token {
                path: path.clone(),
                source,
            })?,
        );
        Ok(Some(Zeroizing::new(text.trim().to_owned())))
    }

    /// The mirror reader when `url` serves a static mirror, found out at the
    /// first call that can tell (within `limit`) and kept; `None` for git's
    /// own protocols, and while the server cannot tell yet (a mirror not
    /// written yet answers 404: the smart transport then names the
    /// problem, and the next call asks again).
    fn mirror(&self, limit: Duration) -> Result<Option<&Mirror>, SourceError> {
        if let Some(known) = self.mirror.get() {
            return Ok(known.as_ref());
        }
        if self.url.starts_with("s3://") {
            let location = S3Location::parse(&self.url).map_err(|e| SourceError::Mirror {
                url: self.url.clone(),
                fault: MirrorFault::Bad {
                    file: "source.url".into(),
                    detail: e.problem,
                },
            })?;
            let credentials = self.s3_credentials_file.clone();
            return Ok(self
                .mirror
                .get_or_init(|| Some(Mirror::s3(location, credentials)))
                .as_ref());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Ok(self.mirror.get_or_init(|| None).as_ref());
        }
        let auth = self.mirror_auth()?;
        let is_static = limits::with_deadline(limit, || mirror::is_static(&self.url, auth.as_ref()))
            .map_err(|fault| self.mirror_fault(fault))?;
        Ok(match is_static {
            Some(is_static) => self
                .mirror
                .get_or_init(|| is_static.then(|| Mirror::new(&self.url)))
                .as_ref(),
            None => None,
        })
    }

    /// The `Authorization` a mirror is asked with: the token, as the smart
    /// transport sends it, read afresh.
    fn mirror_auth(&self) -> Result<Option<reqwest::header::HeaderValue>, SourceError> {
        let token = self.token()?;
        Ok(mirror::auth(token.as_deref().map(|t| t.as_str()))?)
    }

    fn mirror_fault(&self, fault: MirrorFault) -> SourceError {
        match fault {
            MirrorFault::NoBranch(branch) => SourceError::NoBranch {
                url: self.url.clone(),
                branch,
            },
            MirrorFault::TooLarge => SourceError::TooLarge {
                url: self.url.clone(),
            },
            fault => SourceError::Mirror {
                url: self.url.clone(),
                fault,
            },
        }
    }

    /// Asks the remote for the branch tip: one ref advertisement (or, from a
    /// static mirror, one conditional GET of `info/refs`), no objects.
    pub fn remote_tip(&self) -> Result<Oid, SourceError> {
        if let Some(mirror) = self.mirror(self.deadlines.0)? {
            let auth = self.mirror_auth()?;
            return limits::with_deadline(self.deadlines.0, || mirror.tip(&self.branch, auth.as_ref()))
                .map_err(|fault| self.mirror_fault(fault));
        }
        let unreachable = |source| SourceError::Unreachable {
            url: self.url.clone(),
            source,
        };
        let token = self.token()?;
        let mut remote = self.repo.remote_anonymous(&self.url)?;
        let wanted = format!("refs/heads/{}", self.branch);
        let tip = limits::with_deadline(self.deadlines.0, || {
            git_http::with_token(token, || -> Result<Option<Oid>, git2::Error> {
                let connection = remote.connect_auth(Direction::Fetch, None, None)?;
                Ok(connection
                    .list()?
                    .iter()
                    .find(|h| h.name() == wanted)
                    .map(|h| h.oid()))
            })
        })
        .map_err(unreachable)?;
        tip.ok_or_else(|| SourceError::NoBranch {
            url: self.url.clone(),
            branch: self.branch.clone(),
        })
    }

    /// Fetches the branch (and only it) so that `expected` is present locally.
    pub fn fetch(&self, expected: Oid) -> Result<(), SourceError> {
        self.fetch_counted(expected).map(drop)
    }

    /// [`Source::fetch`], returning the bytes it received (0 when `expected`
    /// was here already): what a release costs a host's link.
    pub fn fetch_counted(&self, expected: Oid) -> Result<u64, SourceError> {
        if self.repo.find_commit(expected).is_ok() {
            return Ok(0);
        }
        if let Some(mirror) = self.mirror(self.deadlines.0)? {
            let auth = self.mirror_auth()?;
            let received =
                limits::with_deadline(self.deadlines.1, || mirror.fetch(&self.repo, auth.as_ref()))
                    .map_err(|fault| self.mirror_fault(fault))?;
            // A mirror's packs are whatever it serves: the commit, its tree
            // and its whole history must all be here before anything reads
            // them, or the next poll fetches again.
            return match mirror::complete(&self.repo, expected) {
                Ok(()) => Ok(received),
                Err(_) => Err(SourceError::Missing {
                    url: self.url.clone(),
                    commit: expected,
                }),
            };
        }
        let token = self.token()?;
        let received = std::cell::Cell::new(0u64);
        let mut callbacks = RemoteCallbacks::new();
        callbacks.transfer_progress(|p| {
            received.set(p.received_bytes() as u64);
            p.received_bytes() <= MAX_FETCH_BYTES
        });
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .download_tags(git2::AutotagOption::None);
        let mut remote = self.repo.remote_anonymous(&self.url)?;
        let refspec = format!("+refs/heads/{}:{REMOTE_REF}", self.branch);
        if let Err(source) = limits::with_deadline(self.deadlines.1, || {
            git_http::with_token(token, || remote.fetch(&[&refspec], Some(&mut options), None))
        }) {
            return Err(if source.code() == git2::ErrorCode::User {
                SourceError::TooLarge {
                    url: self.url.clone(),
                }
            } else {
                SourceError::Unreachable {
                    url: self.url.clone(),
                    source,
                }
            });
        }
        if self.repo.find_commit(expected).is_err() {
            return Err(SourceError::Missing {
                url: self.url.clone(),
                commit: expected,
            });
        }
        Ok(received.get())
    }

    /// Whether `commit` is `ancestor` or descends from it. False when the
    /// ancestor is not in the clone at all (history was rewritten).
    pub fn descends_from(&self, commit: Oid, ancestor: Oid) -> Result<bool, SourceError> {
        if commit == ancestor {
            return Ok(true);
        }
        if self.repo.find_commit(ancestor).is_err() {
            return Ok(false);
        }
        Ok(self.repo.graph_descendant_of(commit, ancestor)?)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// The deploy repository: https://, http://, git://, file:// or an absolute path.
    pub url: String,
    pub branch: String,
    pub allowed_signers: PathBuf,
    pub poll_interval: Duration,
    pub jitter: Duration,
    /// Token for private https remotes (read at use, never logged).
    pub token_file: Option<PathBuf>,
    /// Key pair for a mirror in a private bucket (AWS shared-credentials
    /// format, read at use, never logged).
    pub s3_credentials_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceFile {
    pub(crate) url: String,
    #[serde(default = "default_branch")]
    pub(crate) branch: String,
    #[serde(default = "default_allowed_signers")]
    pub(crate) allowed_signers: PathBuf,
    #[serde(default = "secs::<60>")]
    pub(crate) poll_interval: HumanDuration,
    #[serde(default = "secs::<10>")]
    pub(crate) jitter: HumanDuration,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) s3_credentials_file: Option<PathBuf>,
}

fn default_branch() -> String {
    "deploy".into()
}

fn default_allowed_signers() -> PathBuf {
    "/etc/ferry/allowed_signers".into()
}
