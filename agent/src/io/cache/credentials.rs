//! Credentials for private binary caches: Nix's own `netrc` format (what
//! nix.conf's `netrc-file` points at; HTTP Basic, matched by host) and bearer
//! tokens per host (Attic, Cachix). Files are read when a preflight or a
//! realise starts, values live in zeroized memory, never reach `Debug`, logs
//! or error messages, and are only attached to HTTPS requests (or plain HTTP
//! to a loopback address).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use reqwest::header::HeaderValue;
use zeroize::Zeroizing;

/// Credential files larger than this are refused.
const MAX_CREDENTIAL_BYTES: u64 = 1 << 20;

/// Where a cache's credentials come from (the `[cache]` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheCredentials {
    /// `cache.netrc_file`: Nix's netrc (`machine HOST login USER password PASS`).
    pub netrc_file: Option<PathBuf>,
    /// `cache.bearer_token_files`: host → file holding a bearer token.
    pub bearer_token_files: BTreeMap<String, PathBuf>,
    /// `cache.s3_credentials_file`: AWS shared-credentials format, for `s3://` caches.
    pub s3_credentials_file: Option<PathBuf>,
}

/// Why credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the credential file {path}: {detail} (check cache.netrc_file / cache.bearer_token_files and the service's credentials)")]
    Read { path: PathBuf, detail: String },
    #[error("{path}, line {line}: {problem}")]
    Netrc {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("the credential in {path} cannot be sent in an HTTP header (control characters?)")]
    NotAHeader { path: PathBuf },
    #[error("no credentials for {cache}: {source} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in the shared credentials file, or cache.s3_credentials_file)")]
    S3 {
        cache: String,
        source: ferry_signer::s3::AwsCredentialsError,
    },
    #[error("refusing to send the credentials for {host} from {path} over plain HTTP: use https:// for this cache")]
    PlainHttp { host: String, path: PathBuf },
}

/// One netrc entry (`machine` or `default`), secrets redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct NetrcEntry {
    /// `None` for `default`.
    pub machine: Option<String>,
    pub login: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for NetrcEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetrcEntry")
            .field("machine", &self.machine)
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A parsed netrc file, in curl's (and so Nix's) reading: whitespace-separated
/// tokens, `machine NAME` or `default` starting an entry, `login`, `password`,
/// `account` (ignored) and `macdef` (skipped to the next empty line); `#`
/// starts a comment. The first entry naming a host wins; `default` applies to
/// hosts no entry names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netrc {
    pub entries: Vec<NetrcEntry>,
}

/// A netrc problem: the line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetrcError {
    pub line: usize,
    pub problem: String,
}

impl Netrc {
    pub fn parse(text: &str) -> Result<Netrc, NetrcError> {
        let mut tokens: Vec<(usize, &str)> = Vec::new();
        let mut in_macdef = false;
        for (n, line) in text.lines().enumerate() {
            if in_macdef {
                in_macdef = !line.trim().is_empty();
                continue;
            }
            let line_tokens: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
            if line_tokens.first() == Some(&"macdef") {
                in_macdef = true;
                continue;
            }
            tokens.extend(line_tokens.into_iter().map(|t| (n + 1, t)));
        }
        let mut entries: Vec<NetrcEntry> = Vec::new();
        let mut it = tokens.into_iter();
        let err = |line: usize, problem: &str| NetrcError {
            line,
            problem: problem.to_owned(),
        };
        while let Some((line, token)) = it.next() {
            let mut value = |what: &str| {
                it.next()
                    .map(|(_, v)| v.to_owned())
                    .ok_or_else(|| err(line, &format!("`{what}` without a value")))
            };
            match token {
                "machine" => entries.push(NetrcEntry {
                    machine: Some(value("machine")?.to_ascii_lowercase()),
                    login: String::new(),
                    password: Zeroizing::new(String::new()),
                }),
                "default" => entries.push(NetrcEntry {
                    machine: None,
                    login: String::new(),
                    password: Zeroizing::new(String::new()),
                }),
                "login" | "password" | "account" => {
                    let v = value(token)?;
                    let Some(entry) = entries.last_mut() else {
                        return Err(err(line, &format!("`{token}` before any `machine` or `default`")));
                    };
                    match token {
                        "login" => entry.login = v,
                        "password" => entry.password = Zeroizing::new(v),
                        _ => {}
                    }
                }
                other => {
                    return Err(err(
                        line,
                        &format!(
                        "unknown word `{}` (expected machine, default, login, password, account or macdef)",
                        other.chars().take(40).collect::<String>()
                    ),
                    ))
                }
            }
        }
        Ok(Netrc { entries })
    }

    /// The entry for `host`: the first naming it, else `default`.
    pub fn lookup(&self, host: &str) -> Option<&NetrcEntry> {
        let host = host.to_ascii_lowercase();
        self.entries
            .iter()
            .find(|e| e.machine.as_deref() == Some(host.as_str()))
            .or_else(|| self.entries.iter().find(|e| e.machine.is_none()))
    }
}

/// What a request to one host carries.
#[derive(Clone)]
pub struct Authorization {
    header: HeaderValue,
    /// The file it came from, for messages.
    pub source: PathBuf,
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorization")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Authorization {
    /// The `Authorization` header value, marked sensitive.
    pub fn header(&self) -> HeaderValue {
        self.header.clone()
    }
}

/// Credentials read from their files for one preflight or realise.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    netrc: Option<(PathBuf, Netrc)>,
    bearer: BTreeMap<String, (PathBuf, Zeroizing<String>)>,
    /// Substituter index → its S3 key pair.
    s3: BTreeMap<usize, ferry_signer::s3::AwsCredentials>,
}

impl CacheCredentials {
    /// Reads the files now.
    pub fn load(&self) -> Result<Loaded, CredentialError> {
        let netrc = match &self.netrc_file {
            Some(path) => {
                let text = read(path)?;
                let netrc = Netrc::parse(&text).map_err(|e| CredentialError::Netrc {
                    path: path.clone(),
                    line: e.line,
                    problem: e.problem,
                })?;
                Some((path.clone(), netrc))
            }
            None => None,
        };
        let mut bearer = BTreeMap::new();
        for (host, path) in &self.bearer_token_files {
            let token = Zeroizing::new(read(path)?.trim().to_owned());
            bearer.insert(host.to_ascii_lowercase(), (path.clone(), token));
        }
        Ok(Loaded {
            netrc,
            bearer,
            s3: BTreeMap::new(),
        })
    }
}

fn read(path: &Path) -> Result<Zeroizing<String>, CredentialError> {
    let failed = |detail: String| CredentialError::Read {
        path: path.to_owned(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| failed(e.to_string()))?;
    if meta.len() > MAX_CREDENTIAL_BYTES {
        return Err(failed("larger than 1 MiB".into()));
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| failed(e.to_string()))
}

// Credentials travel only over HTTPS or to a loopback address: the signer's
// rule (`secret_may_travel_to`), one copy for both binaries and every secret.
use ferry_signer::forge::secret_may_travel_to;

impl Loaded {
    /// Adds the key pair of `s3://` substituter `index`.
    pub fn set_s3(&mut self, index: usize, credentials: ferry_signer::s3::AwsCredentials) {
        self.s3.insert(index, credentials);
    }

    /// The key pair of `s3://` substituter `index`, if any.
    pub fn s3(&self, index: usize) -> Option<&ferry_signer::s3::AwsCredentials> {
        self.s3.get(&index)
    }

    /// The authorization for a request to `url`: a bearer token named for its
    /// host, else its netrc entry; `None` when nothing is configured for it.
    /// Refuses when credentials exist for the host but `url` is plain HTTP
    /// off loopback.
    pub fn for_url(&self, url: &reqwest::Url) -> Result<Option<Authorization>, CredentialError> {
        let Some(host) = url.host_str() else {
            return Ok(None);
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let found: Option<(PathBuf, Zeroizing<String>)> = if let Some((path, token)) = self.bearer.get(&host)
        {
            Some((path.clone(), Zeroizing::new(format!("Bearer {}", token.as_str()))))
        } else if let Some((path, entry)) = self
            .netrc
            .as_ref()
            .and_then(|(path, n)| n.lookup(&host).map(|e| (path, e)))
        {
            let userpass = Zeroizing::new(format!("{}:{}", entry.login, entry.password.as_str()));
            let encoded =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(userpass.as_bytes()));
            Some((
                path.clone(),
                Zeroizing::new(format!("Basic {}", encoded.as_str())),
            ))
        } else {
            None
        };
        let Some((source, value)) = found else {
            return Ok(None);
        };
        if !secret_may_travel_to(url) {
            return Err(CredentialError::PlainHttp { host, path: source });
        }
        let mut header = HeaderValue::from_str(&value)
            .map_err(|_| CredentialError::NotAHeader { path: source.clone() })?;
        header.set_sensitive(true);
        Ok(Some(Authorization { header, source }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn netrc_in_nix_and_curl_reading() {
        let n = Netrc::parse(
            "# Attic\nmachine attic.example.com\n  password tok1\n\
             machine Cache.Example.com login ci password s3cret account x\n\
             macdef init\nsome macro words\nmachine not-an-entry\n\n\
             default login anon password anon\n",
        )
        .unwrap();
        assert_eq!(n.entries.len(), 3);
        let attic = n.lookup("ATTIC.example.com").unwrap();
        assert_eq!((attic.login.as_str(), attic.password.as_str()), ("", "tok1"));
        assert_eq!(n.lookup("cache.example.com").unwrap().login, "ci");
        assert_eq!(n.lookup("elsewhere.example.org").unwrap().login, "anon");
        assert!(n.lookup("not-an-entry").unwrap().machine.is_none());
        // One line or many: the same entries.
        let one = Netrc::parse("machine a login u password p").unwrap();
        assert_eq!(one.lookup("a").unwrap().password.as_str(), "p");
        assert!(Netrc::parse("").unwrap().lookup("a").is_none());
    }

    #[test]
    fn netrc_errors_name_the_line() {
        let e = Netrc::parse("machine a\nlogin").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("`login` without a value"), "{}", e.problem);
        let e = Netrc::parse("password p").unwrap_err();
        assert!(e.problem.contains("before any `machine`"), "{}", e.problem);
        let e = Netrc::parse("machine a\nusername u").unwrap_err();
        assert!(e.problem.contains("unknown word `username`"), "{}", e.problem);
    }

    #[test]
    fn secrets_never_reach_debug() {
        let n = Netrc::parse("machine a login u password hunter2").unwrap();
        assert!(!format!("{n:?}").contains("hunter2"));
        let loaded = Loaded {
            netrc: Some(("/run/netrc".into(), n)),
            bearer: BTreeMap::from([("b".into(), ("/run/t".into(), Zeroizing::new("tok9".into())))]),
            s3: BTreeMap::new(),
        };
        assert!(!format!("{loaded:?}").contains("hunter2"));
        assert!(!format!("{loaded:?}").contains("tok9"));
        let auth = loaded.for_url(&url("https://a/x")).unwrap().unwrap();
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(auth.header().is_sensitive());
    }

    #[test]
    fn bearer_wins_over_netrc_and_plain_http_is_refused_off_loopback() {
        let loaded = Loaded {
            netrc: Some((
                "/run/netrc".into(),
                Netrc::parse("machine a login u password p\nmachine 127.0.0.1 login l password q").unwrap(),
            )),
            bearer: BTreeMap::from([("a".into(), ("/run/t".into(), Zeroizing::new("tok".into())))]),
            s3: BTreeMap::new(),
        };
        let a = loaded.for_url(&url("https://a/nix-cache-info")).unwrap().unwrap();
        assert_eq!(a.header().to_str().unwrap(), "Bearer tok");
        assert_eq!(a.source, Path::new("/run/t"));
        let local = loaded.for_url(&url("http://127.0.0.1:8080/x")).unwrap().unwrap();
        assert_eq!(local.header().to_str().unwrap(), "Basic bDpx");
        assert!(loaded.for_url(&url("https://nobody/x")).unwrap().is_none());
        let err = loaded.for_url(&url("http://a/x")).unwrap_err();
        assert!(err.to_string().contains("over plain HTTP"), "{err}");
        assert!(!err.to_string().contains("tok"), "{err}");
    }

    #[test]
    fn credentials_travel_over_https_or_loopback_only() {
        assert!(secret_may_travel_to(&url("https://cache.example.com")));
        assert!(secret_may_travel_to(&url("http://127.0.0.1:5000")));
        assert!(secret_may_travel_to(&url("http://[::1]:5000")));
        assert!(secret_may_travel_to(&url("http://localhost:5000")));
        assert!(!secret_may_travel_to(&url("http://cache.example.com")));
        assert!(!secret_may_travel_to(&url("http://10.0.0.1")));
    }
}
