//! Commit statuses on the forge, from the release side: the forge settings
//! (the same keys as the agents' `[report]` section), the exact requests
//! GitHub, Gitea/Forgejo and GitLab expect, parsing their answers (bounded
//! and paginated), and [`ForgeClient`], a small blocking client. Building
//! requests and parsing answers are pure; only the client does I/O.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::names::{CommitId, HostName};

/// The default status context agents post: `{host}` is the host's name.
pub const DEFAULT_CONTEXT: &str = "ferry/{host}";
/// Answers larger than this (one page) are refused unread.
pub const MAX_PAGE_BYTES: u64 = 16 << 20;
/// A commit's statuses are read in at most this many pages.
pub const MAX_PAGES: u32 = 1000;
/// GitHub refuses longer descriptions; every forge is held to it.
pub const MAX_DESCRIPTION_CHARS: usize = 140;

/// The default of `report.error_after`: how long a transient fault may keep
/// a release from progressing before the release shows an `error` status.
/// Long enough that a cache or forge restarting, a deploy of the cache
/// itself or a short network partition (the backoff retries at 5 s, 10 s, …
/// up to the poll interval) passes unreported; short enough that whoever
/// watches a rollout learns within a quarter of an hour that it is stuck,
/// and why, rather than watching `pending` for ever.
pub const DEFAULT_ERROR_AFTER: Duration = Duration::from_secs(15 * 60);

/// The `[report]` section of an agent.toml, as written: the one definition
/// the agent's configuration and `ferry-signer --agent-config` both read, so
/// a key the agent accepts is never refused by the signer. The agent
/// validates it (`ferry_agent::io::forge`); the signer takes the forge
/// settings from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// The forge, or `none` (no statuses are posted).
    pub forge: ForgeSetting,
    pub api_url: Option<String>,
    pub repository: String,
    pub token_file: Option<PathBuf>,
    pub context: String,
    pub error_after: HumanDuration,
    /// Where the host writes its signed receipts (`s3://bucket/prefix?…`),
    /// if anywhere.
    pub receipts: Option<String>,
    /// The SSH host key receipts are signed with.
    pub host_key: Option<PathBuf>,
    /// Which per-host statuses reach the forge (with receipts on).
    pub statuses: Option<Statuses>,
}

impl Default for ReportSection {
    fn default() -> Self {
        Self {
            forge: ForgeSetting(None),
            api_url: None,
            repository: String::new(),
            token_file: None,
            context: DEFAULT_CONTEXT.into(),
            error_after: HumanDuration(DEFAULT_ERROR_AFTER),
            receipts: None,
            host_key: None,
            statuses: None,
        }
    }
}

/// The host key receipts are signed with unless `report.host_key` names another.
pub const DEFAULT_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// `report.statuses`: which of a host's own commit statuses reach the forge
/// when its receipts say everything (`all` without receipts: today's way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statuses {
    /// Every status, as without receipts.
    All,
    /// Failures and errors, and whatever follows one on the same commit
    /// (so a host that recovers does not stay red): the default with receipts.
    Failures,
    /// None: receipts and the fleet's aggregated statuses say it all.
    None,
}

impl Statuses {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Failures => "failures",
            Self::None => "none",
        }
    }
}

impl<'de> Deserialize<'de> for Statuses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "all" => Ok(Self::All),
            "failures" => Ok(Self::Failures),
            "none" => Ok(Self::None),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a choice of statuses: expected all, failures or none"
            ))),
        }
    }
}

/// `report.forge` as written: a forge, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgeSetting(pub Option<ForgeKind>);

impl<'de> Deserialize<'de> for ForgeSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(ForgeSetting(None)),
            other => other.parse().map(|f| ForgeSetting(Some(f))).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{other}` is not a forge: expected github, gitea, forgejo, gitlab or none"
                ))
            }),
        }
    }
}

/// A duration written as `"60s"`, `"15m"`, `"1h 30m"` (humantime's format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(HumanDuration).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration: expected e.g. \"60s\", \"15m\" or \"1h 30m\""
            ))
        })
    }
}

/// Which forge API the statuses live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeKind {
    Github,
    /// Gitea and Forgejo share one API.
    Gitea,
    Gitlab,
}

impl FromStr for ForgeKind {
    type Err = ForgeError;

    fn from_str(s: &str) -> Result<Self, ForgeError> {
        match s {
            "github" => Ok(Self::Github),
            "gitea" | "forgejo" => Ok(Self::Gitea),
            "gitlab" => Ok(Self::Gitlab),
            other => Err(ForgeError::UnknownKind(other.to_owned())),
        }
    }
}

impl ForgeKind {
    /// The public instance's API, where there is one.
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            Self::Github => Some("https://api.github.com"),
            Self::Gitlab => Some("https://gitlab.com/api/v4"),
            Self::Gitea => None,
        }
    }

    /// Statuses per page: each forge's maximum (Gitea's default cap is 50).
    pub fn page_size(self) -> u32 {
        match self {
            Self::Github | Self::Gitlab => 100,
            Self::Gitea => 50,
        }
    }
}

/// A commit status state, in Ferry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl StatusState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }

    /// Ferry's own names (`pending`, `success`, `failure`, `error`).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Success, Self::Failure, Self::Error]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// A state as `kind` names it in answers. Unknown names count as errors:
    /// never as success.
    pub fn from_forge(kind: ForgeKind, s: &str) -> Self {
        match (kind, s) {
            (_, "success") => Self::Success,
            (ForgeKind::Gitlab, "failed") => Self::Failure,
            (ForgeKind::Gitlab, "canceled" | "skipped") => Self::Error,
            (
                ForgeKind::Gitlab,
                "created"
                | "waiting_for_resource"
                | "preparing"
                | "pending"
                | "running"
                | "scheduled"
                | "manual",
            ) => Self::Pending,
            (ForgeKind::Gitlab, _) => Self::Error,
            (_, "pending") => Self::Pending,
            (_, "failure" | "warning") => Self::Failure,
            _ => Self::Error,
        }
    }

    /// GitLab's names for posting: pending, running, success, failed, canceled.
    fn gitlab(self) -> &'static str {
        match self {
            Self::Pending => "running",
            Self::Success => "success",
            Self::Failure | Self::Error => "failed",
        }
    }
}

/// Where the statuses are and which context each host posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeSettings {
    pub kind: ForgeKind,
    /// API base without a trailing slash, e.g. `https://git.example.com/api/v1`.
    pub api_url: String,
    /// `owner/repo` (GitHub, Gitea) or a project id or path (GitLab).
    pub repository: String,
    /// Status context; `{host}` is replaced by the host name.
    pub context: String,
}

impl ForgeSettings {
    /// Validated settings; the API URL defaults to the public instance.
    pub fn new(
        kind: ForgeKind,
        api_url: Option<&str>,
        repository: &str,
        context: &str,
    ) -> Result<Self, ForgeError> {
        let api_url = match api_url.or(kind.default_api_url()) {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => return Err(ForgeError::NoApiUrl),
        };
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(ForgeError::BadUrl(api_url));
        }
        if repository.is_empty() {
            return Err(ForgeError::NoRepository);
        }
        if context.is_empty() {
            return Err(ForgeError::NoContext);
        }
        Ok(Self {
            kind,
            api_url,
            repository: repository.to_owned(),
            context: context.to_owned(),
        })
    }

    /// The status context `host` posts.
    pub fn context_for(&self, host: &HostName) -> String {
        self.context.replace("{host}", host.as_str())
    }

    /// The URL of one page of `commit`'s latest statuses.
    pub fn statuses_url(&self, commit: &CommitId, page: u32) -> String {
        let (api, repo, sha, n) = (
            &self.api_url,
            &self.repository,
            commit.as_str(),
            self.kind.page_size(),
        );
        match self.kind {
            ForgeKind::Github => format!("{api}/repos/{repo}/commits/{sha}/status?per_page={n}&page={page}"),
            ForgeKind::Gitea => format!("{api}/repos/{repo}/commits/{sha}/status?limit={n}&page={page}"),
            ForgeKind::Gitlab => format!(
                "{api}/projects/{}/repository/commits/{sha}/statuses?all=true&per_page={n}&page={page}",
                encode_project(repo)
            ),
        }
    }

    /// The request that posts a status (URL, headers, JSON body). The token is
    /// only placed in a header; callers must never log the headers.
    pub fn status_request(&self, token: &Token, status: &NewStatus) -> StatusRequest {
        status_request(self.kind, &self.api_url, &self.repository, token, status)
    }

    /// Authentication and API headers for every request (the client sets
    /// the User-Agent, which GitHub requires).
    pub fn auth_headers(&self, token: &Token) -> Vec<(&'static str, String)> {
        auth_headers(self.kind, token)
    }
}

/// The request `kind` expects to post `status` on `repository` (URL, headers,
/// JSON body): the one copy both the agents and the signer send. `api_url`
/// may end in `/`. The token is only placed in a header; callers must never
/// log the headers, and add their own User-Agent.
pub fn status_request(
    kind: ForgeKind,
    api_url: &str,
    repository: &str,
    token: &Token,
    status: &NewStatus,
) -> StatusRequest {
    let (api, repo, sha) = (api_url.trim_end_matches('/'), repository, status.commit.as_str());
    match kind {
        ForgeKind::Github | ForgeKind::Gitea => StatusRequest {
            url: format!("{api}/repos/{repo}/statuses/{sha}"),
            headers: auth_headers(kind, token),
            body: serde_json::json!({
                "state": status.state.as_str(),
                "description": status.description,
                "context": status.context,
            }),
        },
        ForgeKind::Gitlab => StatusRequest {
            url: format!("{api}/projects/{}/statuses/{sha}", encode_project(repo)),
            headers: auth_headers(kind, token),
            body: serde_json::json!({
                "state": status.state.gitlab(),
                "name": status.context,
                "description": status.description,
            }),
        },
    }
}

/// Authentication and API headers `kind` expects on every request.
pub fn auth_headers(kind: ForgeKind, token: &Token) -> Vec<(&'static str, String)> {
    match kind {
        ForgeKind::Github => vec![
            ("Authorization", format!("Bearer {}", token.0)),
            ("Accept", "application/vnd.github+json".into()),
            ("X-GitHub-Api-Version", "2022-11-28".into()),
        ],
        ForgeKind::Gitea => vec![("Authorization", format!("token {}", token.0))],
        ForgeKind::Gitlab => vec![("PRIVATE-TOKEN", token.0.clone())],
    }
}

/// GitLab takes a numeric id or the URL-encoded path (`group%2Fproject`).
fn encode_project(repository: &str) -> String {
    repository
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A forge token: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token given as text (from the environment).
    pub fn new(text: &str) -> Result<Self, ForgeError> {
        let t = text.trim();
        if t.is_empty() || t.contains(['\r', '\n']) {
            return Err(ForgeError::EmptyToken);
        }
        Ok(Self(t.to_owned()))
    }

    /// A token from a file (a CI secret or a systemd credential).
    pub fn from_file(path: &Path) -> Result<Self, ForgeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ForgeError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text)
    }
}

/// Whether a secret (a forge or git token, a cache's credentials) may be sent
/// to `url`: over HTTPS, or over plain HTTP to this machine itself
/// (`localhost` or a loopback address), where nothing crosses a network.
/// Any other URL is refused. The one copy of this rule, for both binaries.
pub fn secret_may_travel_to(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// [`secret_may_travel_to`] for a URL as written in a setting; one that
/// does not parse is refused.
pub fn token_travels_safely(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| secret_may_travel_to(&u))
}

/// A status to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStatus {
    pub commit: CommitId,
    pub state: StatusState,
    pub context: String,
    pub description: String,
}

impl NewStatus {
    /// A status whose description is cut to the forge limit.
    pub fn new(commit: CommitId, state: StatusState, context: &str, description: &str) -> Self {
        let description = if description.chars().count() > MAX_DESCRIPTION_CHARS {
            let mut d: String = description.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
            d.push('…');
            d
        } else {
            description.to_owned()
        };
        Self {
            commit,
            state,
            context: context.to_owned(),
            description,
        }
    }
}

/// An HTTP POST, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: serde_json::Value,
}

/// One status as the forge reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedStatus {
    /// The forge's id: higher is newer (GitLab lists every status).
    pub id: u64,
    pub context: String,
    pub state: StatusState,
    pub description: String,
    /// When it was last set, if the forge says.
    pub at: Option<DateTime<Utc>>,
}

/// The pagination headers of one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageHeaders {
    /// `Link` (GitHub, Gitea, GitLab).
    pub link: Option<String>,
    /// `X-Total-Count` (Gitea).
    pub total_count: Option<String>,
    /// `X-Next-Page` (GitLab; empty on the last page).
    pub next_page: Option<String>,
}

/// The page after `page`, if the forge says there is one. `items` is how many
/// statuses `page` held.
pub fn next_page(kind: ForgeKind, page: u32, items: usize, headers: &PageHeaders) -> Option<u32> {
    if items == 0 {
        return None;
    }
    let link_next = headers
        .link
        .as_deref()
        .is_some_and(|l| l.split(',').any(|part| part.contains("rel=\"next\"")));
    let more = match kind {
        ForgeKind::Github => link_next,
        ForgeKind::Gitea => match headers
            .total_count
            .as_deref()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            Some(total) => u64::from(page) * u64::from(kind.page_size()) < total,
            None => link_next,
        },
        ForgeKind::Gitlab => match headers.next_page.as_deref().map(str::trim) {
            Some("") => false,
            Some(n) => n.parse::<u32>().is_ok_and(|n| n == page + 1),
            None => link_next,
        },
    };
    more.then_some(page + 1)
}

#[derive(Deserialize)]
struct CombinedJson<S> {
    // Gitea answers `null` for a commit without statuses.
    statuses: Option<Vec<S>>,
}

/// One status in a combined answer: GitHub names its state `state`, Gitea
/// and Forgejo name it `status`; each forge's own name is required.
#[derive(Deserialize)]
struct CombinedStatusJson {
    #[serde(default)]
    id: u64,
    state: Option<String>,
    status: Option<String>,
    description: Option<String>,
    context: String,
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct GitlabStatusJson {
    id: u64,
    status: String,
    name: String,
    description: Option<String>,
    created_at: Option<String>,
    finished_at: Option<String>,
}

fn timestamp(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Parses one page of statuses as `kind` sends it.
pub fn parse_page(kind: ForgeKind, body: &[u8]) -> Result<Vec<ReportedStatus>, ForgeError> {
    let bad = |e: serde_json::Error| ForgeError::BadAnswer {
        kind,
        detail: e.to_string(),
    };
    Ok(match kind {
        ForgeKind::Github | ForgeKind::Gitea => {
            serde_json::from_slice::<CombinedJson<CombinedStatusJson>>(body)
                .map_err(bad)?
                .statuses
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    let state = match kind {
                        ForgeKind::Github => s.state,
                        _ => s.status,
                    };
                    Ok(ReportedStatus {
                        id: s.id,
                        state: StatusState::from_forge(
                            kind,
                            &state.ok_or_else(|| ForgeError::BadAnswer {
                                kind,
                                detail: format!("status of context `{}` has no state", s.context),
                            })?,
                        ),
                        context: s.context,
                        description: s.description.unwrap_or_default(),
                        at: timestamp(s.updated_at.as_deref()),
                    })
                })
                .collect::<Result<_, ForgeError>>()?
        }
        ForgeKind::Gitlab => serde_json::from_slice::<Vec<GitlabStatusJson>>(body)
            .map_err(bad)?
            .into_iter()
            .map(|s| ReportedStatus {
                id: s.id,
                state: StatusState::from_forge(kind, &s.status),
                context: s.name,
                description: s.description.unwrap_or_default(),
                at: timestamp(s.finished_at.as_deref().or(s.created_at.as_deref())),
            })
            .collect(),
    })
}

/// The newest status per context (GitLab lists every status ever posted;
/// the highest id wins, as in GitLab's own view).
pub fn latest_per_context(statuses: Vec<ReportedStatus>) -> HashMap<String, ReportedStatus> {
    let mut latest: HashMap<String, ReportedStatus> = HashMap::with_capacity(statuses.len());
    for s in statuses {
        match latest.get(&s.context) {
            Some(seen) if (seen.id, seen.at) >= (s.id, s.at) => {}
            _ => {
                latest.insert(s.context.clone(), s);
            }
        }
    }
    latest
}

/// Why the forge could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("`{0}` is not a forge: expected github, gitea, forgejo or gitlab")]
    UnknownKind(String),
    #[error("the forge API URL is required for gitea/forgejo, e.g. https://git.example.com/api/v1")]
    NoApiUrl,
    #[error("the forge API URL `{0}` is not an http(s) URL")]
    BadUrl(String),
    #[error("the forge repository is required: owner/repo (or a GitLab project id or path)")]
    NoRepository,
    #[error("the status context is empty: the agents' default is `ferry/{{host}}`")]
    NoContext,
    #[error("no forge token: give a token file, or set the token's environment variable")]
    NoToken,
    #[error("the forge token is empty or spans several lines")]
    EmptyToken,
    #[error("cannot read the forge token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error(
        "{0} is plain HTTP and not this machine, so the token would cross the network in clear: use https://"
    )]
    PlainHttp(String),
    #[error("cannot reach the forge at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the forge at {url} answered HTTP {code} (busy or failing); trying again later may help")]
    Busy { url: String, code: u16 },
    /// The forge limits the rate of requests (HTTP 403 or 429 with its rate
    /// limit's signs): nothing is wrong with the settings; wait until then.
    #[error("the forge limits the rate of requests until {} (HTTP {code}); waiting", until.format("%H:%M:%S UTC"))]
    RateLimited { until: DateTime<Utc>, code: u16 },
    #[error("the forge refused the token (HTTP {code}) for repository {repository}: check the token and its permission to read and write commit statuses")]
    Refused { code: u16, repository: String },
    #[error("repository {repository} or commit {commit} not found at {api_url} (HTTP 404): check the repository setting and the token's access to it")]
    NotFound {
        repository: String,
        commit: String,
        api_url: String,
    },
    #[error("the forge rejected the request (HTTP {code})")]
    Rejected { code: u16 },
    #[error("the forge's answer is not what {kind:?} sends: {detail}")]
    BadAnswer { kind: ForgeKind, detail: String },
    #[error("the forge's answer is larger than {MAX_PAGE_BYTES} bytes: refused")]
    TooLarge,
    #[error("the forge still had more statuses after {MAX_PAGES} pages: refused")]
    TooManyPages,
}

impl ForgeError {
    /// Whether trying again later may help (network trouble, 5xx, a rate
    /// limit).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Busy { .. } | Self::RateLimited { .. }
        )
    }

    /// Until when the forge asked to be left alone, for a rate limit.
    pub fn rate_limited_until(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::RateLimited { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// A commit's statuses, newest per context, and what reading them cost.
#[derive(Debug, Clone, Default)]
pub struct CommitStatuses {
    pub by_context: HashMap<String, ReportedStatus>,
    pub cost: ReadCost,
}

/// What one read of a commit's statuses cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadCost {
    /// HTTP requests made (pages read).
    pub requests: u32,
    /// Those the forge counts against the token: all of them, but for a
    /// GitHub page answered 304 Not Modified, which GitHub does not count.
    pub counted: u32,
    /// The rate-limit headers of the last answer: what the forge says is
    /// left (see `pace::Budget`).
    pub limit: LimitHeaders,
}

/// A blocking client for one repository's commit statuses.
#[derive(Debug)]
pub struct ForgeClient {
    http: reqwest::blocking::Client,
    settings: ForgeSettings,
    token: Token,
    /// The pages of the commit last read that came with an `ETag`, asked for
    /// again with `If-None-Match`: an unchanged page is a 304, which GitHub
    /// does not count against the rate limit. Only one commit's pages are
    /// kept.
    pages: std::sync::Mutex<PageCache>,
}

/// Pages by number, of one commit.
#[derive(Debug, Default)]
struct PageCache {
    commit: Option<CommitId>,
    pages: HashMap<u32, CachedPage>,
}

/// A page as last read: its `ETag`, its statuses and its pagination headers.
#[derive(Debug, Clone)]
struct CachedPage {
    etag: String,
    statuses: Vec<ReportedStatus>,
    headers: PageHeaders,
}

/// How long a forge that says "rate limited" without saying until when is
/// left alone: GitHub asks for at least a minute after a secondary limit.
pub const RATE_LIMIT_DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait taken from a forge's answer: every forge's window resets
/// within an hour, and a bad header must not silence a host for days.
pub const RATE_LIMIT_MAX_WAIT: Duration = Duration::from_secs(3600);
/// How many bytes of an answer's body are read to recognise a rate limit.
pub const RATE_LIMIT_BODY_BYTES: u64 = 64 << 10;

/// The headers a rate limit is told by (lower-case names, as received).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitHeaders {
    /// `retry-after`: seconds, or an HTTP date (every forge).
    pub retry_after: Option<String>,
    /// `x-ratelimit-remaining` (GitHub, Gitea) or `ratelimit-remaining` (GitLab).
    pub remaining: Option<String>,
    /// `x-ratelimit-reset` (GitHub: epoch seconds) or `ratelimit-reset`
    /// (GitLab: epoch seconds).
    pub reset: Option<String>,
}

impl LimitHeaders {
    /// Reads them from an answer's headers.
    pub fn from_map(headers: &reqwest::header::HeaderMap) -> Self {
        let get = |name: &str| header_value(headers, name);
        Self {
            retry_after: get("retry-after"),
            remaining: get("x-ratelimit-remaining").or_else(|| get("ratelimit-remaining")),
            reset: get("x-ratelimit-reset").or_else(|| get("ratelimit-reset")),
        }
    }
}

/// The value of header `name`, when it is text.
pub fn header_value(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Whether an answer says this token is rate-limited, and until when: the
/// way each forge says it. A 429 from any forge; a 403 from GitHub that
/// carries `retry-after`, `x-ratelimit-remaining: 0` or a "rate limit"
/// message (its primary and secondary limits). Until: `retry-after`
/// (seconds or a date), else the reset time, else
/// [`RATE_LIMIT_DEFAULT_WAIT`]; never more than [`RATE_LIMIT_MAX_WAIT`]
/// from `now`, never less than a second. A 403 without any of these is a
/// token problem, and `None` here. Pure.
pub fn rate_limit(
    code: u16,
    headers: &LimitHeaders,
    body: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let says_limited = || {
        headers.retry_after.is_some()
            || headers.remaining.as_deref().map(str::trim) == Some("0")
            || body.to_ascii_lowercase().contains("rate limit")
    };
    if !(code == 429 || (code == 403 && says_limited())) {
        return None;
    }
    let after_secs = |s: &str| {
        s.trim()
            .parse::<u64>()
            .ok()
            .map(|n| now + chrono::Duration::seconds(n.min(1 << 32) as i64))
    };
    let at_date = |s: &str| {
        DateTime::parse_from_rfc2822(s.trim())
            .ok()
            .map(|d| d.with_timezone(&Utc))
    };
    let at_epoch = |s: &str| {
        s.trim()
            .parse::<i64>()
            .ok()
            .and_then(|n| DateTime::from_timestamp(n, 0))
    };
    let asked = headers
        .retry_after
        .as_deref()
        .and_then(|s| after_secs(s).or_else(|| at_date(s)))
        .or_else(|| headers.reset.as_deref().and_then(at_epoch));
    let default = now + chrono::Duration::from_std(RATE_LIMIT_DEFAULT_WAIT).expect("a minute");
    let max = now + chrono::Duration::from_std(RATE_LIMIT_MAX_WAIT).expect("an hour");
    let min = now + chrono::Duration::seconds(1);
    Some(asked.unwrap_or(default).clamp(min, max))
}

/// `until`, moved later by up to a tenth of the wait (at least a second, at
/// most a minute) as `random` picks, so a fleet limited at once does not
/// come back in step.
pub fn with_jitter(until: DateTime<Utc>, now: DateTime<Utc>, random: u64) -> DateTime<Utc> {
    let wait = (until - now).num_milliseconds().max(0) as u64;
    let spread = (wait / 10).clamp(1_000, 60_000);
    until + chrono::Duration::milliseconds((random % spread) as i64)
}

impl ForgeClient {
    /// A client; refuses to send `token` in clear to another machine.
    pub fn new(settings: ForgeSettings, token: Token) -> Result<Self, ForgeError> {
        if !token_travels_safely(&settings.api_url) {
            return Err(ForgeError::PlainHttp(settings.api_url));
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("ferry-signer/", env!("CARGO_PKG_VERSION")))
            // Redirects could carry the token elsewhere: none are followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForgeError::Unreachable {
                url: settings.api_url.clone(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            http,
            settings,
            token,
            pages: Default::default(),
        })
    }

    pub fn settings(&self) -> &ForgeSettings {
        &self.settings
    }

    /// The newest status per context on `commit`, every page read (a page
    /// read before and unchanged since comes back as a 304, and is taken
    /// from the last answer).
    pub fn statuses(&self, commit: &CommitId) -> Result<CommitStatuses, ForgeError> {
        let mut cache = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if cache.commit.as_ref() != Some(commit) {
            *cache = PageCache {
                commit: Some(commit.clone()),
                pages: HashMap::new(),
            };
        }
        let mut all = Vec::new();
        let mut page = 1;
        let mut cost = ReadCost::default();
        loop {
            if page > MAX_PAGES {
                return Err(ForgeError::TooManyPages);
            }
            let url = self.settings.statuses_url(commit, page);
            let mut builder = self.http.get(&url);
            for (name, value) in self.settings.auth_headers(&self.token) {
                builder = builder.header(name, value);
            }
            let cached = cache.pages.get(&page).cloned();
            if let Some(c) = &cached {
                builder = builder.header("if-none-match", &c.etag);
            }
            let response = builder.send().map_err(|e| self.unreachable(&e))?;
            cost.requests += 1;
            cost.limit = LimitHeaders::from_map(response.headers());
            let (statuses, headers) = match (response.status().as_u16(), cached) {
                // GitHub does not count a 304 against the token's limit.
                (304, Some(c)) => {
                    if self.settings.kind != ForgeKind::Github {
                        cost.counted += 1;
                    }
                    (c.statuses, c.headers)
                }
                _ => {
                    cost.counted += 1;
                    self.read_page(response, commit, page, &mut cache)?
                }
            };
            let next = next_page(self.settings.kind, page, statuses.len(), &headers);
            all.extend(statuses);
            match next {
                Some(n) => page = n,
                None => break,
            }
        }
        Ok(CommitStatuses {
            by_context: latest_per_context(all),
            cost,
        })
    }

    /// Page `page` of `commit`'s statuses from `response`, bounded and
    /// parsed; kept in `cache` when the forge tagged it with an `ETag`.
    fn read_page(
        &self,
        response: reqwest::blocking::Response,
        commit: &CommitId,
        page: u32,
        cache: &mut PageCache,
    ) -> Result<(Vec<ReportedStatus>, PageHeaders), ForgeError> {
        let response = self.answered(response, commit)?;
        let header = |name: &str| header_value(response.headers(), name);
        let etag = header("etag");
        let headers = PageHeaders {
            link: header("link"),
            total_count: header("x-total-count"),
            next_page: header("x-next-page"),
        };
        let mut body = Vec::new();
        response
            .take(MAX_PAGE_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| ForgeError::Unreachable {
                url: self.settings.api_url.clone(),
                detail: e.to_string(),
            })?;
        if body.len() as u64 > MAX_PAGE_BYTES {
            return Err(ForgeError::TooLarge);
        }
        let statuses = parse_page(self.settings.kind, &body)?;
        match etag {
            Some(etag) => {
                let read = CachedPage {
                    etag,
                    statuses: statuses.clone(),
                    headers: headers.clone(),
                };
                cache.pages.insert(page, read);
            }
            None => {
                cache.pages.remove(&page);
            }
        }
        Ok((statuses, headers))
    }

    /// Posts one status.
    pub fn post(&self, status: &NewStatus) -> Result<(), ForgeError> {
        let request = self.settings.status_request(&self.token, status);
        let mut builder = self.http.post(&request.url).json(&request.body);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let response = builder.send().map_err(|e| self.unreachable(&e))?;
        self.answered(response, &status.commit).map(drop)
    }

    /// `response` if it is a success; else what it means, a rate limit
    /// told apart from a refused token by [`rate_limit`].
    fn answered(
        &self,
        response: reqwest::blocking::Response,
        commit: &CommitId,
    ) -> Result<reqwest::blocking::Response, ForgeError> {
        let code = response.status().as_u16();
        if code == 403 || code == 429 {
            let headers = LimitHeaders::from_map(response.headers());
            let mut body = Vec::new();
            // A body that cannot be read says nothing: the headers decide.
            let _ = response.take(RATE_LIMIT_BODY_BYTES).read_to_end(&mut body);
            if let Some(until) = rate_limit(code, &headers, &String::from_utf8_lossy(&body), Utc::now()) {
                return Err(ForgeError::RateLimited { until, code });
            }
            return Err(self
                .failure(code, commit)
                .unwrap_or(ForgeError::Rejected { code }));
        }
        match self.failure(code, commit) {
            Some(e) => Err(e),
            None => Ok(response),
        }
    }

    /// What an answer with status `code` means, if not a success.
    fn failure(&self, code: u16, commit: &CommitId) -> Option<ForgeError> {
        Some(match code {
            200..=299 => return None,
            401 | 403 => ForgeError::Refused {
                code,
                repository: self.settings.repository.clone(),
            },
            404 => ForgeError::NotFound {
                repository: self.settings.repository.clone(),
                commit: commit.to_string(),
                api_url: self.settings.api_url.clone(),
            },
            408 | 429 | 500..=599 => ForgeError::Busy {
                url: self.settings.api_url.clone(),
                code,
            },
            _ => ForgeError::Rejected { code },
        })
    }

    fn unreachable(&self, e: &reqwest::Error) -> ForgeError {
        let detail = without_url(e);
        ForgeError::Unreachable {
            url: self.settings.api_url.clone(),
            detail,
        }
    }
}

/// reqwest's error chain, one cause after another, without the URL (the
/// caller names the forge itself; a URL may carry a query).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut detail = e.to_string();
    if let Some(url) = e.url() {
        detail = detail.replace(&format!(" ({url})"), "");
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        detail.push_str(": ");
        detail.push_str(&c.to_string());
        cause = c.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

    fn settings(kind: ForgeKind, api: &str, repo: &str) -> ForgeSettings {
        ForgeSettings::new(kind, Some(api), repo, DEFAULT_CONTEXT).unwrap()
    }

    #[test]
    fn read_urls_follow_each_forge() {
        let c: CommitId = SHA.parse().unwrap();
        assert_eq!(
            settings(ForgeKind::Github, "https://api.github.com/", "ops/deploy").statuses_url(&c, 3),
            format!("https://api.github.com/repos/ops/deploy/commits/{SHA}/status?per_page=100&page=3")
        );
        assert_eq!(
            settings(ForgeKind::Gitea, "https://git.example.com/api/v1", "ops/deploy").statuses_url(&c, 1),
            format!("https://git.example.com/api/v1/repos/ops/deploy/commits/{SHA}/status?limit=50&page=1")
        );
        assert_eq!(
            settings(ForgeKind::Gitlab, "https://gitlab.com/api/v4", "ops/deploy").statuses_url(&c, 2),
            format!("https://gitlab.com/api/v4/projects/ops%2Fdeploy/repository/commits/{SHA}/statuses?all=true&per_page=100&page=2")
        );
    }

    #[test]
    fn write_requests_match_what_agents_send() {
        let token = Token::new("T0K\n").unwrap();
        let status = NewStatus::new(
            SHA.parse().unwrap(),
            StatusState::Pending,
            "ferry/rollout",
            "wave 1",
        );
        let gh = settings(ForgeKind::Github, "https://api.github.com", "o/r").status_request(&token, &status);
        assert_eq!(gh.url, format!("https://api.github.com/repos/o/r/statuses/{SHA}"));
        assert!(gh.headers.contains(&("Authorization", "Bearer T0K".into())));
        assert_eq!(
            gh.body,
            serde_json::json!({"state": "pending", "description": "wave 1", "context": "ferry/rollout"})
        );
        let gl =
            settings(ForgeKind::Gitlab, "https://gitlab.com/api/v4", "42").status_request(&token, &status);
        assert_eq!(
            gl.url,
            format!("https://gitlab.com/api/v4/projects/42/statuses/{SHA}")
        );
        assert!(gl.headers.contains(&("PRIVATE-TOKEN", "T0K".into())));
        assert_eq!(gl.body["state"], "running");
        assert_eq!(gl.body["name"], "ferry/rollout");
        let gt = settings(ForgeKind::Gitea, "https://g/api/v1", "o/r").status_request(&token, &status);
        assert!(gt.headers.contains(&("Authorization", "token T0K".into())));
    }

    #[test]
    fn settings_are_checked() {
        assert!(matches!(
            ForgeSettings::new(ForgeKind::Gitea, None, "o/r", DEFAULT_CONTEXT),
            Err(ForgeError::NoApiUrl)
        ));
        assert!(matches!(
            ForgeSettings::new(ForgeKind::Github, Some("ftp://x"), "o/r", DEFAULT_CONTEXT),
            Err(ForgeError::BadUrl(_))
        ));
        assert!(matches!(
            ForgeSettings::new(ForgeKind::Github, None, "", DEFAULT_CONTEXT),
            Err(ForgeError::NoRepository)
        ));
        let s = ForgeSettings::new(ForgeKind::Github, None, "o/r", "deploy/{host}").unwrap();
        assert_eq!(s.api_url, "https://api.github.com");
        assert_eq!(s.context_for(&"web1".parse().unwrap()), "deploy/web1");
        assert!(matches!(
            "bitbucket".parse::<ForgeKind>(),
            Err(ForgeError::UnknownKind(_))
        ));
        assert_eq!("forgejo".parse::<ForgeKind>().unwrap(), ForgeKind::Gitea);
    }

    #[test]
    fn tokens_stay_secret_and_off_plain_http() {
        let t = Token::new("s3cret").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(Token::new(" \n").is_err());
        assert!(Token::new("a\nb").is_err());
        assert!(token_travels_safely("https://git.example.com/api/v1"));
        assert!(token_travels_safely("http://127.0.0.1:8080/api/v1"));
        assert!(token_travels_safely("http://[::1]:9/api"));
        assert!(!token_travels_safely("http://git.example.com/api/v1"));
        assert!(!token_travels_safely("http://127.0.0.1.evil.example/api"));
        assert!(!token_travels_safely("http://localhost@evil.example/api"));
        assert!(token_travels_safely("http://localhost:3000/api"));
        assert!(
            token_travels_safely("http://127.0.0.2/api"),
            "all of 127/8 is loopback"
        );
        assert!(
            !token_travels_safely("HTTP://git.example.com/api"),
            "the scheme in capitals"
        );
        assert!(!token_travels_safely("http://[::ffff:10.0.0.1]/api"));
        assert!(!token_travels_safely("http://10.0.0.1/api"));
        assert!(!token_travels_safely("ftp://git.example.com/api"));
        assert!(!token_travels_safely("not a url"));
        let plain = settings(ForgeKind::Gitea, "http://git.example.com/api/v1", "o/r");
        assert!(matches!(
            ForgeClient::new(plain, t),
            Err(ForgeError::PlainHttp(_))
        ));
    }

    #[test]
    fn pages_parse_for_each_forge() {
        let gh = br#"{"state":"pending","sha":"x","total_count":2,"statuses":[
            {"id":7,"state":"success","description":"web1 runs release 4","context":"ferry/web1","updated_at":"2026-01-02T03:04:05Z"},
            {"id":8,"state":"pending","description":null,"context":"ferry/web2","updated_at":null}]}"#;
        let s = parse_page(ForgeKind::Github, gh).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].state, StatusState::Success);
        assert_eq!(s[0].at.unwrap().to_rfc3339(), "2026-01-02T03:04:05+00:00");
        assert_eq!(s[1].description, "");
        let gt = br#"{"state":"failure","statuses":[{"id":1,"status":"warning","context":"ferry/db1","description":"x"}]}"#;
        assert_eq!(
            parse_page(ForgeKind::Gitea, gt).unwrap()[0].state,
            StatusState::Failure
        );
        assert!(parse_page(ForgeKind::Gitea, br#"{"statuses":null}"#)
            .unwrap()
            .is_empty());
        let gl = br#"[{"id":3,"status":"running","name":"ferry/web1","description":"deploying","created_at":"2026-01-02T03:04:05.123Z","finished_at":null},
                      {"id":4,"status":"canceled","name":"ferry/web2","description":null}]"#;
        let s = parse_page(ForgeKind::Gitlab, gl).unwrap();
        assert_eq!(s[0].state, StatusState::Pending);
        assert_eq!(s[0].context, "ferry/web1");
        assert_eq!(s[1].state, StatusState::Error);
        // Wrong shapes are refused, not guessed at.
        assert!(matches!(
            parse_page(ForgeKind::Gitlab, gh),
            Err(ForgeError::BadAnswer { .. })
        ));
        assert!(parse_page(ForgeKind::Github, br#"[]"#).is_err());
        assert!(parse_page(ForgeKind::Github, br#"{"statuses":[{"state":"success"}]}"#).is_err());
    }

    #[test]
    fn ferry_state_names_round_trip() {
        for s in [
            StatusState::Pending,
            StatusState::Success,
            StatusState::Failure,
            StatusState::Error,
        ] {
            assert_eq!(StatusState::parse(s.as_str()), Some(s));
        }
        assert_eq!(StatusState::parse("running"), None);
    }

    #[test]
    fn unknown_states_never_count_as_success() {
        for kind in [ForgeKind::Github, ForgeKind::Gitea, ForgeKind::Gitlab] {
            assert_eq!(StatusState::from_forge(kind, "SUCCESS"), StatusState::Error);
            assert_eq!(StatusState::from_forge(kind, "bogus"), StatusState::Error);
            assert_eq!(StatusState::from_forge(kind, "success"), StatusState::Success);
        }
        assert_eq!(
            StatusState::from_forge(ForgeKind::Github, "failure"),
            StatusState::Failure
        );
        assert_eq!(
            StatusState::from_forge(ForgeKind::Gitlab, "failed"),
            StatusState::Failure
        );
        assert_eq!(
            StatusState::from_forge(ForgeKind::Gitlab, "failure"),
            StatusState::Error
        );
    }

    #[test]
    fn the_newest_status_per_context_wins() {
        let s = |id, context: &str, state| ReportedStatus {
            id,
            context: context.into(),
            state,
            description: String::new(),
            at: None,
        };
        let latest = latest_per_context(vec![
            s(5, "ferry/web1", StatusState::Success),
            s(2, "ferry/web1", StatusState::Pending),
            s(9, "ferry/web2", StatusState::Pending),
            s(11, "ferry/web2", StatusState::Failure),
        ]);
        assert_eq!(latest.len(), 2);
        assert_eq!(latest["ferry/web1"].state, StatusState::Success);
        assert_eq!(latest["ferry/web2"].state, StatusState::Failure);
    }

    #[test]
    fn pagination_follows_each_forges_headers() {
        let link = |l: &str| PageHeaders {
            link: Some(l.into()),
            ..Default::default()
        };
        let next =
            r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        let last = r#"<https://api.github.com/x?page=1>; rel="first", <https://api.github.com/x?page=4>; rel="prev""#;
        assert_eq!(next_page(ForgeKind::Github, 1, 100, &link(next)), Some(2));
        assert_eq!(next_page(ForgeKind::Github, 5, 100, &link(last)), None);
        assert_eq!(
            next_page(ForgeKind::Github, 1, 100, &PageHeaders::default()),
            None
        );
        assert_eq!(next_page(ForgeKind::Github, 1, 0, &link(next)), None);
        let total = |t: &str| PageHeaders {
            total_count: Some(t.into()),
            ..Default::default()
        };
        assert_eq!(next_page(ForgeKind::Gitea, 1, 50, &total("120")), Some(2));
        assert_eq!(next_page(ForgeKind::Gitea, 3, 20, &total("120")), None);
        assert_eq!(next_page(ForgeKind::Gitea, 2, 50, &total("100")), None);
        let gl = |n: &str| PageHeaders {
            next_page: Some(n.into()),
            ..Default::default()
        };
        assert_eq!(next_page(ForgeKind::Gitlab, 1, 100, &gl("2")), Some(2));
        assert_eq!(next_page(ForgeKind::Gitlab, 2, 100, &gl("")), None);
        // A next page that does not follow is not believed.
        assert_eq!(next_page(ForgeKind::Gitlab, 2, 100, &gl("1")), None);
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn limit_headers(
        retry_after: Option<&str>,
        remaining: Option<&str>,
        reset: Option<&str>,
    ) -> LimitHeaders {
        LimitHeaders {
            retry_after: retry_after.map(str::to_owned),
            remaining: remaining.map(str::to_owned),
            reset: reset.map(str::to_owned),
        }
    }

    /// Each forge's way of saying "rate limited", from their documentation.
    #[test]
    fn rate_limits_are_told_apart_from_refused_tokens() {
        let now = at("2026-12-06T10:40:00Z");
        let none = LimitHeaders::default();
        // GitHub's secondary limit: 403, retry-after, its message.
        let secondary = "{\"message\":\"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.\",\"documentation_url\":\"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api\"}";
        assert_eq!(
            rate_limit(403, &limit_headers(Some("20"), None, None), secondary, now),
            Some(at("2026-12-06T10:40:20Z"))
        );
        // The same message without a header: at least a minute.
        assert_eq!(
            rate_limit(403, &none, secondary, now),
            Some(at("2026-12-06T10:41:00Z"))
        );
        // GitHub's primary limit: 403 (or 429), remaining 0, reset in epoch seconds.
        let reset = at("2026-12-06T10:42:00Z").timestamp().to_string();
        assert_eq!(
            rate_limit(403, &limit_headers(None, Some("0"), Some(&reset)), "{}", now),
            Some(at("2026-12-06T10:42:00Z"))
        );
        // GitLab: 429 with Retry-After (and RateLimit-Reset); Gitea: a bare 429.
        assert_eq!(
            rate_limit(
                429,
                &limit_headers(Some("60"), Some("0"), Some(&reset)),
                "Retry later",
                now
            ),
            Some(at("2026-12-06T10:41:00Z")),
            "retry-after wins"
        );
        assert_eq!(rate_limit(429, &none, "", now), Some(at("2026-12-06T10:41:00Z")));
        // retry-after as an HTTP date.
        assert_eq!(
            rate_limit(
                429,
                &limit_headers(Some("Sun, 06 Dec 2026 10:45:00 GMT"), None, None),
                "",
                now
            ),
            Some(at("2026-12-06T10:45:00Z"))
        );
        // A 403 with none of the signs is the token's problem.
        let refused = "{\"message\":\"Resource not accessible by integration\"}";
        assert_eq!(rate_limit(403, &none, refused, now), None);
        assert_eq!(
            rate_limit(
                403,
                &limit_headers(None, Some("4999"), Some(&reset)),
                refused,
                now
            ),
            None
        );
        assert_eq!(
            rate_limit(401, &limit_headers(Some("20"), None, None), secondary, now),
            None
        );
        assert_eq!(
            rate_limit(503, &limit_headers(Some("20"), None, None), "", now),
            None
        );
        // Bounded: never past an hour, never in the past.
        assert_eq!(
            rate_limit(429, &limit_headers(Some("999999999"), None, None), "", now),
            Some(at("2026-12-06T11:40:00Z"))
        );
        assert_eq!(
            rate_limit(429, &limit_headers(None, None, Some("1")), "", now),
            Some(at("2026-12-06T10:40:01Z"))
        );
    }

    #[test]
    fn jitter_spreads_a_fleet_over_a_tenth_of_the_wait() {
        let now = at("2026-12-06T10:40:00Z");
        let until = at("2026-12-06T10:50:00Z");
        let spread: Vec<_> = (0..1000u64).map(|r| with_jitter(until, now, r * 7919)).collect();
        assert!(spread
            .iter()
            .all(|t| *t >= until && *t < until + chrono::Duration::seconds(60)));
        assert!(
            spread.iter().collect::<std::collections::BTreeSet<_>>().len() > 500,
            "spread, not in step"
        );
        // A short wait still gets a second of spread; a long one at most a minute.
        let soon = at("2026-12-06T10:40:05Z");
        assert!((0..100).all(|r| with_jitter(soon, now, r) < soon + chrono::Duration::seconds(1)));
        let later = at("2026-12-06T11:40:00Z");
        assert!(
            (0..100).all(|r| with_jitter(later, now, r * 999_983) < later + chrono::Duration::seconds(60))
        );
    }
}
