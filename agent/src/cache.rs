//! The binary caches this host trusts, as an HTTP (or file://) client: fetching
//! narinfos for a whole closure in parallel, checking every signature against
//! the pinned keys, and summing what a deploy will download and unpack — the
//! preflight that must pass before the store is touched.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_signer::StorePath;
use tokio::task::JoinSet;

use crate::config::{CacheConfig, CacheFile, Invalid};
use crate::credentials::{CacheCredentials, CredentialError, Loaded};
use crate::narinfo::{CachePublicKey, NarInfo, NarInfoError, TrustError, MAX_NARINFO_BYTES};

/// narinfo requests in flight at once.
const PARALLEL_FETCHES: usize = 32;
/// Closures larger than this are refused (endless-data defence).
pub const MAX_CLOSURE_PATHS: usize = 200_000;
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
        },
    })
}

fn check_cache_url(url: &str) -> Result<(), String> {
    if ["https://", "http://", "file://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not a binary cache URL: use https://, http:// or file://"
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
    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        // Credentials are fixed on the host, not by a new release: retried.
        matches!(
            self,
            CacheError::Unreachable { .. } | CacheError::Denied { .. } | CacheError::Credentials(_)
        )
    }

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
            CacheError::Unreachable { .. } => "error: binary cache unreachable".into(),
            CacheError::Denied { .. } => "error: the binary cache refused access (credentials)".into(),
            CacheError::Credentials(_) => "error: cache credentials cannot be used".into(),
            CacheError::TooLarge => "refused: closure too large".into(),
            CacheError::DiskFull { need, available, .. } => {
                format!(
                    "refused: not enough disk ({} MiB needed, {} MiB free)",
                    need >> 20,
                    available >> 20
                )
            }
            CacheError::Disk { .. } => "error: cannot check free disk space".into(),
        }
    }
}

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
    trusted: Vec<CachePublicKey>,
    credentials: CacheCredentials,
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
            .timeout(Duration::from_secs(30))
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
                trusted: trusted.to_vec(),
                credentials,
            }),
        }
    }

    /// Fetches and checks the narinfo of `path` from the first cache that has it.
    pub async fn narinfo(&self, path: &str) -> Result<NarInfo, CacheError> {
        let auth = Arc::new(self.inner.credentials.load()?);
        Ok(self.inner.narinfo(path, &auth).await?.0)
    }

    /// The substituter URLs, in order.
    pub fn substituters(&self) -> &[String] {
        &self.inner.substituters
    }

    /// Reads the credential files (once per preflight or realise).
    pub fn load_credentials(&self) -> Result<Arc<Loaded>, CacheError> {
        Ok(Arc::new(self.inner.credentials.load()?))
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
        let url = format!("{cache}/{rest}");
        let method = if head {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        // A NAR may take long; the realise timeout bounds the whole step.
        self.inner
            .send(method, &url, auth, Some(Duration::from_secs(6 * 3600)))
            .await
    }

    /// Walks the closure of `toplevel` through the caches, skipping paths
    /// already in the local store (`store_dir`), verifying each narinfo's
    /// signature, and checks there is room for what will be unpacked.
    pub async fn preflight(&self, toplevel: &StorePath, store_dir: &Path) -> Result<Preflight, CacheError> {
        let auth = self.load_credentials()?;
        let mut seen: HashSet<String> = HashSet::new();
        let mut queue: VecDeque<String> = VecDeque::new();
        let mut tasks: JoinSet<Result<(NarInfo, String), CacheError>> = JoinSet::new();
        let mut result = Preflight {
            paths: 0,
            missing: 0,
            download_bytes: 0,
            unpacked_bytes: 0,
            signers: BTreeSet::new(),
        };
        let enqueue = |base: String,
                       seen: &mut HashSet<String>,
                       queue: &mut VecDeque<String>,
                       result: &mut Preflight| {
            if seen.insert(base.clone()) {
                result.paths += 1;
                // Paths already in the store are trusted: they are this host's.
                if !store_dir.join(&base).exists() {
                    queue.push_back(base);
                }
            }
        };
        enqueue(
            toplevel.base_name().to_owned(),
            &mut seen,
            &mut queue,
            &mut result,
        );
        loop {
            while tasks.len() < PARALLEL_FETCHES {
                let Some(base) = queue.pop_front() else { break };
                let inner = self.inner.clone();
                let auth = auth.clone();
                tasks.spawn(async move { inner.narinfo(&format!("/nix/store/{base}"), &auth).await });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (info, signer) = joined.expect("narinfo tasks do not panic")?;
            result.missing += 1;
            result.download_bytes += info.file_size.unwrap_or(info.nar_size);
            result.unpacked_bytes += info.nar_size;
            result.signers.insert(signer);
            for r in info.references {
                enqueue(r, &mut seen, &mut queue, &mut result);
            }
            if seen.len() > MAX_CLOSURE_PATHS {
                return Err(CacheError::TooLarge);
            }
        }
        check_disk(store_dir, result.unpacked_bytes)?;
        Ok(result)
    }
}

impl Inner {
    /// The checked narinfo of `path` and the name of the key that vouched for it.
    async fn narinfo(&self, path: &str, auth: &Loaded) -> Result<(NarInfo, String), CacheError> {
        let hash = path
            .strip_prefix("/nix/store/")
            .and_then(|b| b.get(..32))
            .unwrap_or(path);
        let mut unreachable = None;
        for cache in &self.substituters {
            let url = format!("{cache}/{hash}.narinfo");
            let body = match self.get(&url, auth).await {
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
            let signer = info.check_trust(&self.trusted)?.name.clone();
            return Ok((info, signer));
        }
        Err(unreachable.unwrap_or_else(|| CacheError::NotFound {
            path: path.into(),
            caches: self.substituters.join(", "),
        }))
    }

    /// GETs a URL (http(s) or file), `None` for "not there".
    async fn get(&self, url: &str, auth: &Loaded) -> Result<Option<Vec<u8>>, CacheError> {
        let unreachable = |detail: String| CacheError::Unreachable {
            url: url.to_owned(),
            detail,
        };
        if let Some(file) = url.strip_prefix("file://") {
            return match tokio::fs::read(file).await {
                Ok(b) if b.len() > MAX_NARINFO_BYTES => Err(unreachable("narinfo larger than 1 MiB".into())),
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(unreachable(e.to_string())),
            };
        }
        let Some(mut response) = self.send(reqwest::Method::GET, url, auth, None).await? else {
            return Ok(None);
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(error_chain(&e)))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_NARINFO_BYTES {
                return Err(unreachable("narinfo larger than 1 MiB".into()));
            }
        }
        Ok(Some(body))
    }
}

impl Inner {
    /// Sends one request with the credentials for its host: `None` for "not
    /// there" (404, or 403 without credentials as public S3 buckets answer),
    /// the response for a 2xx, an error naming the cache and the credential
    /// file for a refusal.
    async fn send(
        &self,
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
