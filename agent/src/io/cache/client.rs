//! The binary caches this host trusts, as an HTTP (or file://) client: fetching
//! narinfos for a whole closure in parallel, checking every signature against
//! the pinned keys, and summing what a deploy will download and unpack — the
//! preflight that must pass before the store is touched.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_signer::StorePath;
use tokio::task::JoinSet;

use serde::Deserialize;
use std::path::PathBuf;

use crate::config::value::Invalid;
use crate::io::body::read_bounded;
use crate::io::cache::credentials::{CacheCredentials, CredentialError, Loaded};
use crate::io::cache::narinfo::{CachePublicKey, NarInfo, NarInfoError, TrustError, MAX_NARINFO_BYTES};
use ferry_signer::s3::{S3Cache, S3ErrorBody};

/// narinfo requests in flight at once.
const PARALLEL_FETCHES: usize = 32;
/// A narinfo request, its body included, must finish within this (a server
/// dripping the body is cut off, and the cache counted unreachable).
pub const NARINFO_DEADLINE: Duration = Duration::from_secs(30);
/// Closures larger than this are refused (endless-data defence).
pub const MAX_CLOSURE_PATHS: usize = 200_000;

/// The most narinfo bytes a walk keeps for the relay to answer with (about
/// 100,000 paths); past it, the relay asks the cache for the rest.
const MAX_KEPT_NARINFO_BYTES: usize = 64 << 20;

/// A NAR this small (by its narinfo's `FileSize`, else `NarSize`) is one the
/// relay may fetch before Nix asks for it (see [`ClosureObjects::small_nars`]).
pub const MAX_PREFETCH_NAR_BYTES: u64 = 256 << 10;
/// The `[cache]` section of the configuration, validated.
pub(crate) fn validate(cache: CacheFile) -> Result<CacheConfig, Invalid> {
    if cache.substituters.is_empty() {
        return Err(Invalid::new(
            "cache.substituters",
            "list at least one binary cache URL",
        ));
    }
    for s in &cache.substituters {
        check_cache_url(s).map_err(|p| Invalid::new("cache.substituters", p))?;
    }
    if cache.trusted_public_keys.is_empty() {
        return Err(Invalid::new(
            "cache.trusted_public_keys",
            "list at least one key (name:base64, as in nix.conf); unsigned closures are never deployed",
        ));
    }
    let trusted_public_keys = cache
        .trusted_public_keys
        .iter()
        .map(|k| k.parse::<CachePublicKey>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Invalid::new("cache.trusted_public_keys", e.to_string()))?;
    if let Some(path) = &cache.netrc_file {
        if !path.is_absolute() {
            return Err(Invalid::new("cache.netrc_file", "use an absolute path"));
        }
    }
    if let Some(path) = &cache.s3_credentials_file {
        if !path.is_absolute() {
            return Err(Invalid::new("cache.s3_credentials_file", "use an absolute path"));
        }
    }
    for (host, path) in &cache.bearer_token_files {
        if host.is_empty() || host.contains(['/', ':', ' ', '@']) {
            return Err(Invalid::new(
                "cache.bearer_token_files",
                format!(
                    "`{host}` is not a host name: name the cache's host alone, e.g. \"cache.example.com\""
                ),
            ));
        }
        if !path.is_absolute() {
            return Err(Invalid::new(
                "cache.bearer_token_files",
                format!("the token file for `{host}` must be an absolute path"),
            ));
        }
    }
    Ok(CacheConfig {
        substituters: cache.substituters,
        trusted_public_keys,
        credentials: CacheCredentials {
            netrc_file: cache.netrc_file,
            bearer_token_files: cache.bearer_token_files,
            s3_credentials_file: cache.s3_credentials_file,
        },
    })
}

fn check_cache_url(url: &str) -> Result<(), String> {
    if url.starts_with("s3://") {
        return S3Cache::parse(url).map(drop).map_err(|e| e.to_string());
    }
    if ["https://", "http://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not a binary cache URL: use https://, http://, s3:// or file://"
        ))
    }
}

/// Free space kept in reserve beyond what the closure needs.
const DISK_RESERVE_BYTES: u64 = 512 << 20;

/// What the preflight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// Store paths in the closure.
    pub paths: usize,
    /// Of those, how many are not yet in the local store.
    pub missing: usize,
    /// Compressed bytes to download for the missing paths (FileSize).
    pub download_bytes: u64,
    /// Bytes the missing paths take once unpacked (NarSize).
    pub unpacked_bytes: u64,
    /// Names of the cache keys that vouched for the missing paths.
    pub signers: BTreeSet<String>,
    /// The paths found in the store directory and so not fetched: present
    /// only if Nix's database holds them valid, which the caller asks
    /// (`ports::checked_preflight`).
    pub on_disk: Vec<StorePath>,
}

/// What a relay serves for one closure: the cache objects (narinfos and
/// NARs, relative to the cache) of its missing paths, and the narinfos as
/// the walk read and checked them, by substituter, so that Nix is answered
/// with those very bytes and the cache is not asked for them twice.
#[derive(Debug, Clone, Default)]
pub struct ClosureObjects {
    names: BTreeSet<String>,
    narinfos: HashMap<(usize, String), Arc<[u8]>>,
    kept_bytes: usize,
    small_nars: Vec<(usize, String)>,
}

impl ClosureObjects {
    /// Objects to serve by name alone, every one asked of the cache.
    pub fn named(names: impl IntoIterator<Item = String>) -> Self {
        ClosureObjects {
            names: names.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Whether `name` (`<hash>.narinfo`, `nar/…`) is one of the closure's.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The narinfo `name` as the walk read it from substituter `cache`, if
    /// it was found there and kept.
    pub fn narinfo(&self, cache: usize, name: &str) -> Option<&[u8]> {
        self.narinfos.get(&(cache, name.to_owned())).map(|body| &body[..])
    }

    /// How many narinfos are kept.
    pub fn kept(&self) -> usize {
        self.narinfos.len()
    }

    /// The NARs of at most [`MAX_PREFETCH_NAR_BYTES`] (by what their
    /// narinfos say), with the substituter each is read from: those a relay
    /// fetches ahead of Nix, which (before 2.16, with `max-jobs` at most 1)
    /// asks for one NAR at a time.
    pub fn small_nars(&self) -> &[(usize, String)] {
        &self.small_nars
    }

    fn keep_narinfo(&mut self, cache: usize, name: String, body: Vec<u8>) {
        if self.kept_bytes + body.len() <= MAX_KEPT_NARINFO_BYTES {
            self.kept_bytes += body.len();
            self.narinfos.insert((cache, name), body.into());
        }
    }
}

/// A narinfo found and read, its signatures not yet checked: what it says,
/// the substituter that served it, and its bytes.
struct Fetched {
    info: NarInfo,
    cache: usize,
    body: Vec<u8>,
}

/// How many narinfos a walk hands to one signature check at once: enough
/// that handing over costs nothing beside the checks (about 30 µs each).
const CHECK_BATCH: usize = 128;

/// The signature checks of a walk's narinfos, made in batches of
/// [`CHECK_BATCH`] on tokio's blocking pool while the walk's requests go on.
struct SignatureChecks {
    trusted: Arc<[CachePublicKey]>,
    unchecked: Vec<NarInfo>,
    running: VecDeque<tokio::task::JoinHandle<Result<BTreeSet<String>, TrustError>>>,
}

impl SignatureChecks {
    fn new(trusted: Arc<[CachePublicKey]>) -> Self {
        Self {
            trusted,
            unchecked: Vec::new(),
            running: VecDeque::new(),
        }
    }

    /// Adds `info` to be checked; starts a batch when there are enough.
    fn push(&mut self, info: NarInfo) {
        self.unchecked.push(info);
        if self.unchecked.len() >= CHECK_BATCH {
            self.start();
        }
    }

    fn start(&mut self) {
        if self.unchecked.is_empty() {
            return;
        }
        let (infos, trusted) = (std::mem::take(&mut self.unchecked), self.trusted.clone());
        self.running.push_back(tokio::task::spawn_blocking(move || {
            infos
                .iter()
                .map(|info| Ok(info.check_trust(&trusted)?.name.clone()))
                .collect()
        }));
    }

    /// The names of the keys that vouched for the batches finished so far
    /// (without waiting for the others); the first untrusted narinfo.
    async fn finished(&mut self) -> Result<BTreeSet<String>, CacheError> {
        let mut signers = BTreeSet::new();
        while self.running.front().is_some_and(|c| c.is_finished()) {
            let done = self.running.pop_front().expect("a finished check");
            signers.extend(done.await.expect("signature checks do not panic")?);
        }
        Ok(signers)
    }

    /// Checks the rest and waits for every batch: the names of the keys
    /// that vouched for them; the first untrusted narinfo.
    async fn all(&mut self) -> Result<BTreeSet<String>, CacheError> {
        self.start();
        let mut signers = BTreeSet::new();
        while let Some(check) = self.running.pop_front() {
            signers.extend(check.await.expect("signature checks do not panic")?);
        }
        Ok(signers)
    }
}

/// Why a closure cannot be deployed from the caches.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path} is in none of the binary caches ({caches})")]
    NotFound { path: String, caches: String },
    #[error("{0}")]
    Untrusted(#[from] TrustError),
    #[error("{url}: {source}")]
    Narinfo { url: String, source: NarInfoError },
    #[error("{url} answered with the narinfo of {got} when asked for {wanted}")]
    Mismatch {
        url: String,
        wanted: String,
        got: String,
    },
    #[error("binary cache unreachable: {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// A NAR body came slower than [`NarProgress`] allows (a stall or a drip).
    #[error("binary cache {cache} stalled sending {object}: less than {min_bytes} bytes in {}s; cut off", .window.as_secs())]
    Stalled {
        cache: String,
        object: String,
        window: Duration,
        min_bytes: u64,
    },
    #[error("{url}: HTTP {status}: {advice}")]
    Denied {
        url: String,
        status: u16,
        advice: String,
    },
    #[error("{0}")]
    Credentials(#[from] CredentialError),
    #[error("the closure has more than {MAX_CLOSURE_PATHS} paths")]
    TooLarge,
    #[error("not enough disk space in {store}: the closure needs {need} bytes unpacked (plus a reserve), {available} available")]
    DiskFull {
        store: String,
        need: u64,
        available: u64,
    },
    #[error("cannot check free space of {store}: {detail}")]
    Disk { store: String, detail: String },
}

impl CacheError {
    /// Plain words for a commit status.
    pub fn summary(&self) -> String {
        match self {
            CacheError::NotFound { path, .. } => {
                format!("refused: {} missing from the binary cache", short(path))
            }
            CacheError::Untrusted(TrustError::Unsigned { path }) => {
                format!("refused: {} is not signed", short(path))
            }
            CacheError::Untrusted(TrustError::UntrustedKeys { path, .. }) => {
                format!("refused: {} is signed by an unpinned key", short(path))
            }
            CacheError::Untrusted(TrustError::BadSignature { path, .. }) => {
                format!("refused: {} has a bad cache signature", short(path))
            }
            CacheError::Narinfo { .. } | CacheError::Mismatch { .. } => {
                "refused: the binary cache served bad metadata".into()
            }
            CacheError::Unreachable { url, .. } => {
                format!("error: binary cache unreachable: {}", cache_host(url))
            }
            CacheError::Stalled { cache, .. } => format!("error: binary cache {cache} stalled mid-download"),
            CacheError::Denied { url, status, .. } => format!(
                "error: binary cache {} refused this host's credentials (HTTP {status})",
                cache_host(url)
            ),
            CacheError::Credentials(CredentialError::S3 { cache, .. }) => {
                format!("error: no S3 credentials for {}", short(cache))
            }
            CacheError::Credentials(_) => "error: cache credentials cannot be used (see the journal)".into(),
            CacheError::TooLarge => "refused: closure too large".into(),
            // Words that do not change while the free space does (the
            // status is posted once while the fault lasts), and the same as
            // a store found full while realising.
            CacheError::DiskFull { .. } => STORE_FULL.into(),
            CacheError::Disk { .. } => "error: cannot check free disk space".into(),
        }
    }
}

/// The host (and port) of a cache URL, for status lines: which cache, in
/// few words (no path, no credentials).
fn cache_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => short(url),
        },
        Err(_) => short(url),
    }
}

/// The words of a status when the store has no room for the closure,
/// whether the preflight finds it so or Nix runs out of space realising it.
pub const STORE_FULL: &str =
    "error: not enough space in /nix/store for the closure; free some (nix-collect-garbage)";

/// `/nix/store/<hash>-<name>` → `<hash>-<name>`, cut for status lines.
fn short(path: &str) -> String {
    let base = path.strip_prefix("/nix/store/").unwrap_or(path);
    base.chars().take(60).collect()
}

/// A set of substituters and the keys that must sign what they serve.
#[derive(Debug, Clone)]
pub struct BinaryCaches {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    substituters: Vec<String>,
    trusted: Arc<[CachePublicKey]>,
    credentials: CacheCredentials,
    /// For each substituter, its S3 form if it is an `s3://` one.
    s3: Vec<Option<S3Cache>>,
    /// [`NARINFO_DEADLINE`], shorter in tests.
    narinfo_deadline: Duration,
    /// [`NAR_PROGRESS`], shorter in tests.
    nar_progress: NarProgress,
    /// The last preflight's walk, for the realise that follows it.
    walked: std::sync::Mutex<Option<Walked>>,
}

/// How long a preflight's walk may stand in for the realise's own: the
/// realise follows its preflight within the same reconcile, seconds later.
const WALK_KEPT_FOR: Duration = Duration::from_secs(300);

/// A preflight's walk of a closure, kept for the realise that follows it:
/// the paths it found on disk (present only while Nix holds them valid),
/// what the relay serves, and the credentials it read.
#[derive(Debug)]
pub struct Walked {
    pub on_disk: Vec<StorePath>,
    pub objects: ClosureObjects,
    pub credentials: Arc<Loaded>,
    toplevel: StorePath,
    at: std::time::Instant,
}

/// The least a NAR body must bring while the relay passes it to Nix:
/// `min_bytes` in every `window`. A cache that sends part of a NAR and then
/// nothing, or drips it, is cut off within one window, named, and the
/// realise is retried (a cache fault is transient); a whole NAR that comes
/// before the window ends never counts as slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarProgress {
    pub window: Duration,
    pub min_bytes: u64,
}

/// 64 KiB in every 30 seconds (about 2 KiB/s): far below any link a host
/// deploys over, far above a stall or a drip.
pub const NAR_PROGRESS: NarProgress = NarProgress {
    window: Duration::from_secs(30),
    min_bytes: 64 << 10,
};

impl NarProgress {
    /// Whether a window that ended with `received` bytes (and the body not
    /// yet at its end) was too slow.
    pub fn stalled(&self, received: u64) -> bool {
        received < self.min_bytes
    }
}

impl BinaryCaches {
    pub fn new(substituters: &[String], trusted: &[CachePublicKey]) -> Self {
        Self::with_credentials(substituters, trusted, CacheCredentials::default())
    }

    /// The caches of `config`, with their credentials.
    pub fn for_config(config: &CacheConfig) -> Self {
        Self::with_credentials(
            &config.substituters,
            &config.trusted_public_keys,
            config.credentials.clone(),
        )
    }

    /// Caches whose requests carry `credentials` (read at each preflight
    /// and realise).
    pub fn with_credentials(
        substituters: &[String],
        trusted: &[CachePublicKey],
        credentials: CacheCredentials,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(NARINFO_DEADLINE)
            .user_agent(concat!("ferry-agent/", env!("CARGO_PKG_VERSION")))
            // Caches redirect NARs to CDNs and object stores: other hosts are
            // followed, and reqwest drops the Authorization header when the
            // host or port changes; a downgrade to plain HTTP is never taken.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let downgrade = attempt.url().scheme() == "http"
                    && attempt.previous().iter().any(|u| u.scheme() == "https");
                if attempt.previous().len() > 5 {
                    attempt.error("too many redirects")
                } else if downgrade {
                    attempt.error("redirected from https to plain http")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .expect("the TLS backend initialises");
        Self {
            inner: Arc::new(Inner {
                client,
                substituters: substituters
                    .iter()
                    .map(|s| s.trim_end_matches('/').to_owned())
                    .collect(),
                // Validated with the configuration; an unparsable one (only
                // from a caller that skipped validation) is read as HTTP.
                s3: substituters.iter().map(|s| S3Cache::parse(s).ok()).collect(),
                trusted: trusted.into(),
                credentials,
                narinfo_deadline: NARINFO_DEADLINE,
                nar_progress: NAR_PROGRESS,
                walked: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The same caches with another deadline per narinfo request (tests
    /// use a short one). Call before cloning.
    pub fn with_narinfo_deadline(mut self, deadline: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.narinfo_deadline = deadline;
        }
        self
    }

    /// The same caches with another least progress of a NAR body (tests use
    /// a short window). Call before cloning.
    pub fn with_nar_progress(mut self, progress: NarProgress) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.nar_progress = progress;
        }
        self
    }

    /// The least progress of a NAR body the relay accepts.
    pub fn nar_progress(&self) -> NarProgress {
        self.inner.nar_progress
    }

    /// Fetches and checks the narinfo of `path` from the first cache that has it.
    pub async fn narinfo(&self, path: &str) -> Result<NarInfo, CacheError> {
        let auth = Arc::new(self.inner.credentials.load()?);
        let info = self.inner.fetch_narinfo(path, &auth).await?.info;
        info.check_trust(&self.inner.trusted)?;
        Ok(info)
    }

    /// The substituter URLs, in order.
    pub fn substituters(&self) -> &[String] {
        &self.inner.substituters
    }

    /// Reads the credential files (once per preflight or realise).
    pub fn load_credentials(&self) -> Result<Arc<Loaded>, CacheError> {
        let mut loaded = self.inner.credentials.load()?;
        let env = |k: &str| std::env::var(k).ok();
        for (index, s3) in self.inner.s3.iter().enumerate() {
            let Some(s3) = s3 else { continue };
            let file = self.inner.credentials.s3_credentials_file.as_deref();
            match ferry_signer::s3::find_credentials(file, s3.profile.as_deref(), &env) {
                Ok(c) => loaded.set_s3(index, c),
                // Nothing configured anywhere: read anonymously (a public bucket).
                Err(ferry_signer::s3::AwsCredentialsError::Read { .. })
                    if file.is_none()
                        && s3.profile.is_none()
                        && env("AWS_SHARED_CREDENTIALS_FILE").is_none() => {}
                Err(source) => {
                    return Err(CredentialError::S3 {
                        cache: self.inner.substituters[index].clone(),
                        source,
                    }
                    .into())
                }
            }
        }
        Ok(Arc::new(loaded))
    }

    /// GETs (or, with `head`, asks for) `rest` under substituter `index` with
    /// its credentials, for the loopback endpoint: the answer to relay.
    pub async fn relay(
        &self,
        index: usize,
        rest: &str,
        head: bool,
        auth: &Loaded,
    ) -> Result<Option<reqwest::Response>, CacheError> {
        let cache = self
            .inner
            .substituters
            .get(index)
            .ok_or_else(|| CacheError::Unreachable {
                url: format!("substituter #{index}"),
                detail: "no such substituter".into(),
            })?;
        let url = self.inner.url_of(index, cache, rest);
        let method = if head {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        // A NAR may take long; the realise timeout bounds the whole step.
        self.inner
            .send(index, method, &url, auth, Some(Duration::from_secs(6 * 3600)))
            .await
    }

    /// Walks the closure of `toplevel` through the caches, skipping paths
    /// already in the local store (`store_dir`), verifying each narinfo's
    /// signature, and checks there is room for what will be unpacked.
    pub async fn preflight(&self, toplevel: &StorePath, store_dir: &Path) -> Result<Preflight, CacheError> {
        self.preflight_except(toplevel, store_dir, &BTreeSet::new()).await
    }

    /// [`BinaryCaches::preflight`], fetching the paths of `invalid` even
    /// where they exist in the store directory (Nix holds them invalid).
    pub async fn preflight_except(
        &self,
        toplevel: &StorePath,
        store_dir: &Path,
        invalid: &BTreeSet<StorePath>,
    ) -> Result<Preflight, CacheError> {
        let auth = self.load_credentials()?;
        let (preflight, objects) = self.walk(toplevel, store_dir, &auth, invalid).await?;
        *self.walked() = Some(Walked {
            on_disk: preflight.on_disk.clone(),
            objects,
            credentials: auth,
            toplevel: toplevel.clone(),
            at: std::time::Instant::now(),
        });
        Ok(preflight)
    }

    /// The walk of `toplevel`'s closure the last preflight made, if it was
    /// that closure's and recent; taken, so a retried realise walks afresh.
    /// Shared by every clone of these caches.
    pub fn take_walk(&self, toplevel: &StorePath) -> Option<Walked> {
        self.walked()
            .take()
            .filter(|w| &w.toplevel == toplevel && w.at.elapsed() < WALK_KEPT_FOR)
    }

    fn walked(&self) -> std::sync::MutexGuard<'_, Option<Walked>> {
        self.inner.walked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`BinaryCaches::preflight`] with the given credentials, also giving
    /// the cache objects of the missing paths: all that the relay serves for
    /// this closure, with the narinfos as read and checked here.
    pub async fn walk(
        &self,
        toplevel: &StorePath,
        store_dir: &Path,
        auth: &Arc<Loaded>,
        invalid: &BTreeSet<StorePath>,
    ) -> Result<(Preflight, ClosureObjects), CacheError> {
        let mut objects = ClosureObjects::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut queue: VecDeque<String> = VecDeque::new();
        let mut tasks: JoinSet<Result<Fetched, CacheError>> = JoinSet::new();
        let mut result = Preflight {
            paths: 0,
            missing: 0,
            download_bytes: 0,
            unpacked_bytes: 0,
            signers: BTreeSet::new(),
            on_disk: Vec::new(),
        };
        let invalid: HashSet<&str> = invalid.iter().map(StorePath::base_name).collect();
        let enqueue = |base: String,
                       seen: &mut HashSet<String>,
                       queue: &mut VecDeque<String>,
                       result: &mut Preflight| {
            if seen.insert(base.clone()) {
                result.paths += 1;
                // Paths already in the store are trusted (they are this
                // host's) once Nix confirms them valid.
                let on_disk = !invalid.contains(base.as_str()) && store_dir.join(&base).exists();
                match format!("{}/{base}", ferry_signer::names::STORE_DIR).parse::<StorePath>() {
                    Ok(path) if on_disk => result.on_disk.push(path),
                    _ => queue.push_back(base),
                }
            }
        };
        enqueue(
            toplevel.base_name().to_owned(),
            &mut seen,
            &mut queue,
            &mut result,
        );
        // Signatures are checked in batches beside the requests (they are
        // most of the walk's CPU time). A batch that fails ends the walk as
        // soon as it is seen, and before any error of a later request: a
        // path's referrers are always read before it, so an untrusted
        // referrer is what is reported, not the paths it made up.
        let mut signatures = SignatureChecks::new(self.inner.trusted.clone());
        loop {
            while tasks.len() < PARALLEL_FETCHES {
                let Some(base) = queue.pop_front() else { break };
                let inner = self.inner.clone();
                let auth = auth.clone();
                tasks.spawn(async move { inner.fetch_narinfo(&format!("/nix/store/{base}"), &auth).await });
            }
            result.signers.extend(signatures.finished().await?);
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let Fetched { info, cache, body } = match joined.expect("narinfo tasks do not panic") {
                Ok(fetched) => fetched,
                Err(e) => {
                    signatures.all().await?;
                    return Err(e);
                }
            };
            let download = info.file_size.unwrap_or(info.nar_size);
            result.missing += 1;
            result.download_bytes += download;
            result.unpacked_bytes += info.nar_size;
            let base = info.store_path.base_name();
            let name = format!("{}.narinfo", base.get(..32).unwrap_or(base));
            // Nix reads a file:// substituter itself, not through the relay.
            if !self.inner.substituters[cache].starts_with("file://") {
                objects.keep_narinfo(cache, name.clone(), body);
                if download <= MAX_PREFETCH_NAR_BYTES {
                    objects.small_nars.push((cache, info.url.clone()));
                }
            }
            objects.names.insert(name);
            objects.names.insert(info.url.clone());
            for r in &info.references {
                enqueue(r.clone(), &mut seen, &mut queue, &mut result);
            }
            if seen.len() > MAX_CLOSURE_PATHS {
                return Err(CacheError::TooLarge);
            }
            signatures.push(info);
        }
        result.signers.extend(signatures.all().await?);
        check_disk(store_dir, result.unpacked_bytes)?;
        Ok((result, objects))
    }
}

impl Inner {
    /// The narinfo of `path`, from the first substituter that has it, read
    /// and matched to `path`; its signatures are for the caller to check.
    async fn fetch_narinfo(&self, path: &str, auth: &Loaded) -> Result<Fetched, CacheError> {
        let hash = path
            .strip_prefix("/nix/store/")
            .and_then(|b| b.get(..32))
            .unwrap_or(path);
        let mut unreachable = None;
        for (index, cache) in self.substituters.iter().enumerate() {
            let url = self.url_of(index, cache, &format!("{hash}.narinfo"));
            let body = match self.get(index, &url, auth).await {
                Ok(Some(body)) => body,
                Ok(None) => continue,
                Err(e @ (CacheError::Denied { .. } | CacheError::Credentials(_))) => return Err(e),
                Err(e) => {
                    unreachable.get_or_insert(e);
                    continue;
                }
            };
            let info = NarInfo::parse(&body).map_err(|source| CacheError::Narinfo {
                url: url.clone(),
                source,
            })?;
            if info.store_path.as_str() != path {
                return Err(CacheError::Mismatch {
                    url,
                    wanted: path.into(),
                    got: info.store_path.to_string(),
                });
            }
            return Ok(Fetched {
                info,
                cache: index,
                body,
            });
        }
        Err(unreachable.unwrap_or_else(|| CacheError::NotFound {
            path: path.into(),
            caches: self.substituters.join(", "),
        }))
    }

    /// GETs a URL (http(s) or file), `None` for "not there".
    async fn get(&self, index: usize, url: &str, auth: &Loaded) -> Result<Option<Vec<u8>>, CacheError> {
        let unreachable = |detail: String| CacheError::Unreachable {
            url: url.to_owned(),
            detail,
        };
        // Permanent, not "unreachable": the same cache serves the same bytes
        // at the next poll, so it is refused once with the reason.
        let too_large = || CacheError::Narinfo {
            url: url.to_owned(),
            source: NarInfoError::TooLarge,
        };
        if let Some(file) = url.strip_prefix("file://") {
            return match tokio::fs::read(file).await {
                Ok(b) if b.len() > MAX_NARINFO_BYTES => Err(too_large()),
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(unreachable(e.to_string())),
            };
        }
        let deadline = Some(self.narinfo_deadline);
        let Some(mut response) = self
            .send(index, reqwest::Method::GET, url, auth, deadline)
            .await?
        else {
            return Ok(None);
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(error_chain(&e)))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_NARINFO_BYTES {
                return Err(too_large());
            }
        }
        Ok(Some(body))
    }
}

impl Inner {
    /// The URL of `rest` in substituter `index` (whose URL is `cache`).
    fn url_of(&self, index: usize, cache: &str, rest: &str) -> String {
        match self.s3.get(index) {
            Some(Some(s3)) => s3.object_url(rest),
            _ => format!("{cache}/{rest}"),
        }
    }

    /// Sends one request with the credentials for its host: `None` for "not
    /// there" (404, or 403 without credentials as public S3 buckets answer),
    /// the response for a 2xx, an error naming the cache and the credential
    /// file for a refusal.
    async fn send(
        &self,
        index: usize,
        method: reqwest::Method,
        url: &str,
        auth: &Loaded,
        timeout: Option<Duration>,
    ) -> Result<Option<reqwest::Response>, CacheError> {
        let unreachable = |detail: String| CacheError::Unreachable {
            url: url.to_owned(),
            detail,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| unreachable(e.to_string()))?;
        if let Some(Some(s3)) = self.s3.get(index) {
            return self.send_s3(s3, auth.s3(index), method, parsed, timeout).await;
        }
        let authorization = auth.for_url(&parsed)?;
        let mut request = self.client.request(method, parsed);
        if let Some(a) = &authorization {
            request = request.header(reqwest::header::AUTHORIZATION, a.header());
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        match (status, &authorization) {
            (200..=299, _) => Ok(Some(response)),
            (404, _) | (403, None) => Ok(None),
            (401 | 403, Some(a)) => Err(CacheError::Denied {
                url: url.to_owned(),
                status,
                advice: format!(
                    "the cache refused the credentials from {}; check them (and that they allow reading)",
                    a.source.display()
                ),
            }),
            (401, None) => Err(CacheError::Denied {
                url: url.to_owned(),
                status,
                advice: "the cache needs credentials: add its host to cache.netrc_file or cache.bearer_token_files".into(),
            }),
            (code, _) => Err(unreachable(format!("HTTP {code}"))),
        }
    }
}

impl Inner {
    /// [`Inner::send`] for an `s3://` substituter: signed with SigV4 when it
    /// has credentials, S3's error answers read into what to do.
    async fn send_s3(
        &self,
        s3: &S3Cache,
        credentials: Option<&ferry_signer::s3::AwsCredentials>,
        method: reqwest::Method,
        url: reqwest::Url,
        timeout: Option<Duration>,
    ) -> Result<Option<reqwest::Response>, CacheError> {
        let shown = url.to_string();
        let cache = format!("s3://{}", s3.bucket);
        let mut request = self.client.request(method.clone(), url.clone());
        if let Some(c) = credentials {
            if !ferry_signer::forge::secret_may_travel_to(&url) {
                return Err(CredentialError::PlainHttp {
                    host: url.host_str().unwrap_or("").to_owned(),
                    path: c.source.clone().into(),
                }
                .into());
            }
            let signed =
                ferry_signer::s3::sign(method.as_str(), &url, &s3.region, "s3", c, chrono::Utc::now());
            for (name, value) in signed {
                let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                    CacheError::Credentials(CredentialError::NotAHeader {
                        path: c.source.clone().into(),
                    })
                })?;
                value.set_sensitive(true);
                request = request.header(name, value);
            }
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(|e| CacheError::Unreachable {
            url: shown.clone(),
            detail: error_chain(&e),
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Some(response));
        }
        let header_region = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_bounded(response, ferry_signer::s3::MAX_ERROR_BYTES).await;
        let mut error = ferry_signer::s3::parse_error(&body);
        error.region = error.region.or(header_region);
        s3_answer(
            &cache,
            &shown,
            status,
            &error,
            credentials.map(|c| c.source.as_str()),
        )
    }
}

/// What an S3 error answer means: `None` for a missing object, else an
/// error saying what to change. Pure.
pub fn s3_answer(
    cache: &str,
    url: &str,
    status: u16,
    error: &S3ErrorBody,
    credentials: Option<&str>,
) -> Result<Option<reqwest::Response>, CacheError> {
    let code = error.code.as_deref().unwrap_or("");
    let said = match (&error.code, &error.message) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        _ => String::new(),
    };
    let denied = |advice: String| {
        Err(CacheError::Denied {
            url: url.to_owned(),
            status,
            advice,
        })
    };
    let wrong_region = matches!(
        code,
        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"
    ) || status == 301;
    match (status, code) {
        (404, "NoSuchBucket") => denied(format!(
            "{cache} does not exist at this endpoint{said}: check the bucket name, endpoint= and region="
        )),
        (404, _) => Ok(None),
        _ if wrong_region => denied(match &error.region {
            Some(r) => format!("the bucket is in region {r}: add region={r} to the substituter URL{said}"),
            None => format!("the bucket is in another region: set region= in the substituter URL{said}"),
        }),
        (401 | 403, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken") => {
            denied(format!(
                "{cache} refused the key from {}{said}: check the key pair",
                credentials.unwrap_or("nowhere (no credentials were found)")
            ))
        }
        (401 | 403, _) => match credentials {
            Some(from) => denied(format!(
                "access denied to {cache} for the key from {from}{said}: it needs s3:GetObject (and s3:ListBucket, without which a missing object is answered this way too)"
            )),
            None => denied(format!(
                "{cache} needs credentials{said}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or cache.s3_credentials_file"
            )),
        },
        _ => Err(CacheError::Unreachable {
            url: url.to_owned(),
            detail: format!("HTTP {status}{said}"),
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Refuses when the store's file system lacks room for `need` bytes plus a reserve.
fn check_disk(store_dir: &Path, need: u64) -> Result<(), CacheError> {
    let stat = rustix::fs::statvfs(store_dir).map_err(|e| CacheError::Disk {
        store: store_dir.display().to_string(),
        detail: e.to_string(),
    })?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if need.saturating_add(DISK_RESERVE_BYTES) > available {
        return Err(CacheError::DiskFull {
            store: store_dir.display().to_string(),
            need,
            available,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Binary cache URLs, tried in order.
    pub substituters: Vec<String>,
    /// Keys narinfo signatures must verify against.
    pub trusted_public_keys: Vec<CachePublicKey>,
    /// Where the caches' credentials are read from.
    pub credentials: crate::io::cache::credentials::CacheCredentials,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheFile {
    pub(crate) substituters: Vec<String>,
    pub(crate) trusted_public_keys: Vec<String>,
    pub(crate) netrc_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) bearer_token_files: std::collections::BTreeMap<String, PathBuf>,
    pub(crate) s3_credentials_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept narinfos are found by substituter and name, and no more than
    /// `MAX_KEPT_NARINFO_BYTES` of them are kept: past it, names only (the
    /// relay then asks the cache).
    #[test]
    fn closure_objects_keep_narinfos_by_substituter_up_to_a_cap() {
        let mut objects = ClosureObjects::default();
        objects.keep_narinfo(1, "a.narinfo".into(), b"StorePath: a".to_vec());
        assert_eq!(objects.narinfo(1, "a.narinfo"), Some(&b"StorePath: a"[..]));
        assert_eq!(objects.narinfo(0, "a.narinfo"), None, "another substituter's");
        assert_eq!(objects.narinfo(1, "b.narinfo"), None);

        let mib = vec![b'x'; 1 << 20];
        let mut n = 0;
        while objects.kept_bytes + mib.len() <= MAX_KEPT_NARINFO_BYTES {
            objects.keep_narinfo(0, format!("{n}.narinfo"), mib.clone());
            n += 1;
        }
        let kept = objects.kept();
        objects.keep_narinfo(0, "over.narinfo".into(), mib.clone());
        assert_eq!(objects.kept(), kept, "past the cap, nothing more is kept");
        assert_eq!(objects.narinfo(0, "over.narinfo"), None);
        assert!(objects.kept_bytes <= MAX_KEPT_NARINFO_BYTES);
    }

    fn answer(status: u16, body: &str, creds: Option<&str>) -> String {
        match s3_answer(
            "s3://b",
            "https://b.s3.amazonaws.com/x",
            status,
            &ferry_signer::s3::parse_error(body.as_bytes()),
            creds,
        ) {
            Ok(None) => "missing".into(),
            Ok(Some(_)) => unreachable!("errors only"),
            Err(e) => e.to_string(),
        }
    }

    /// The answers AWS gives, as documented in its error-code list.
    #[test]
    fn s3_answers_say_what_to_change() {
        assert_eq!(
            answer(404, "<Error><Code>NoSuchKey</Code></Error>", Some("f")),
            "missing"
        );
        assert!(answer(404, "<Error><Code>NoSuchBucket</Code></Error>", Some("f")).contains("does not exist"));
        let region = answer(
            400,
            "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>",
            Some("f"),
        );
        assert!(region.contains("add region=eu-west-1"), "{region}");
        let moved = answer(301, "<Error><Code>PermanentRedirect</Code></Error>", Some("f"));
        assert!(moved.contains("another region"), "{moved}");
        let key = answer(
            403,
            "<Error><Code>InvalidAccessKeyId</Code></Error>",
            Some("/run/aws"),
        );
        assert!(key.contains("refused the key from /run/aws"), "{key}");
        let denied = answer(403, "<Error><Code>AccessDenied</Code></Error>", Some("/run/aws"));
        assert!(denied.contains("s3:GetObject"), "{denied}");
        let anonymous = answer(403, "<Error><Code>AccessDenied</Code></Error>", None);
        assert!(anonymous.contains("needs credentials"), "{anonymous}");
        assert!(answer(500, "", None).contains("HTTP 500"));
    }
}
