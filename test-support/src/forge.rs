//! A forge on loopback that speaks GitHub's, Gitea/Forgejo's or GitLab's
//! commit status API: the read endpoints with each forge's pagination
//! (GitHub: `per_page`/`page` and a `Link` header; Gitea: `limit`/`page`,
//! `X-Total-Count` and `Link`; GitLab: `per_page`/`page`, `X-Next-Page`,
//! `X-Total-Pages` and `Link`, every status with `all=true`), and the write
//! endpoints. It records each request and can answer with a forced code.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The token the fixture accepts.
pub const TOKEN: &str = "test-forge-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Github,
    Gitea,
    Gitlab,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Github => "github",
            Kind::Gitea => "gitea",
            Kind::Gitlab => "gitlab",
        }
    }
}

/// One status as stored: the forge's own state name.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: u64,
    pub sha: String,
    pub context: String,
    pub state: String,
    pub description: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HashMap<String, String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    statuses: Vec<Stored>,
    requests: Vec<Request>,
    forced: Option<u16>,
    /// Writes refused as a token without write permission is refused.
    read_only: bool,
    /// How many more requests are answered as rate-limited, and the
    /// `retry-after` seconds they ask for.
    limited: Option<(usize, u64)>,
    /// GitHub reads answered 304 Not Modified (an `If-None-Match` naming the
    /// page's `ETag`), which GitHub does not count against the rate limit.
    not_modified: usize,
    /// A primary rate limit: requests left, and when the window resets.
    budget: Option<(u64, chrono::DateTime<chrono::Utc>)>,
    /// Requests answered as over the primary limit.
    over_budget: usize,
}

#[derive(Debug, Clone)]
pub struct Forge {
    pub kind: Kind,
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Forge {
    pub fn start(kind: Kind) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || serve(kind, stream, &shared));
            }
        });
        Self { kind, port, state }
    }

    /// The API base URL, as each forge lays it out.
    pub fn api_url(&self) -> String {
        match self.kind {
            Kind::Github => format!("http://127.0.0.1:{}", self.port),
            Kind::Gitea => format!("http://127.0.0.1:{}/api/v1", self.port),
            Kind::Gitlab => format!("http://127.0.0.1:{}/api/v4", self.port),
        }
    }

    /// The ferry-signer flags that point at this forge.
    pub fn args(&self, token_file: &std::path::Path) -> Vec<String> {
        vec![
            "--forge".into(),
            self.kind.name().into(),
            "--api-url".into(),
            self.api_url(),
            "--repository".into(),
            "ops/deploy".into(),
            "--token-file".into(),
            token_file.display().to_string(),
        ]
    }

    /// Posts a status as an agent would (Ferry's state names: pending,
    /// success, failure, error), translated to the forge's own.
    pub fn post(&self, sha: &str, context: &str, state: &str, description: &str) {
        let state = match (self.kind, state) {
            (Kind::Gitlab, "pending") => "running",
            (Kind::Gitlab, "failure" | "error") => "failed",
            (_, s) => s,
        };
        store(&self.state, sha, context, state, description);
    }

    /// Refuses every write from now on as GitHub refuses a token that may
    /// only read (403), or takes them again.
    pub fn read_only(&self, on: bool) {
        self.state.lock().unwrap().read_only = on;
    }

    /// Answers every request with this code from now on (None: normal).
    pub fn force(&self, code: Option<u16>) {
        self.state.lock().unwrap().forced = code;
    }

    /// Answers the next `requests` requests the way this forge answers a
    /// client over its rate limit, asking it to retry after `secs` seconds:
    /// GitHub a 403 with its secondary-limit message and `retry-after`
    /// (and `x-ratelimit-*` headers), GitLab a 429 with `Retry-After` and
    /// `RateLimit-*` headers and its plain-text body, Gitea/Forgejo (behind
    /// a limiting proxy) a 429 with `Retry-After`.
    /// `limit(0, _)` lifts the limit.
    pub fn limit(&self, requests: usize, secs: u64) {
        self.state.lock().unwrap().limited = (requests > 0).then_some((requests, secs));
    }

    /// Gives the token a primary rate limit, as GitHub (and GitLab, Gitea
    /// when their administrators set one) do: `requests` more in a window
    /// ending in `secs` seconds. Every answer then tells what is left
    /// (`x-ratelimit-*` headers, `RateLimit-*` on GitLab); every request
    /// counts but a GitHub 304; one past the budget is answered as each
    /// forge answers it (GitHub 403 "API rate limit exceeded" with
    /// `x-ratelimit-remaining: 0`, GitLab and Gitea 429).
    pub fn budget(&self, requests: u64, secs: i64) {
        let reset = chrono::Utc::now() + chrono::Duration::seconds(secs);
        self.state.lock().unwrap().budget = Some((requests, reset));
    }

    /// How many requests were answered as over the primary limit.
    pub fn over_budget(&self) -> usize {
        self.state.lock().unwrap().over_budget
    }

    /// How many reads were answered 304 Not Modified.
    pub fn not_modified(&self) -> usize {
        self.state.lock().unwrap().not_modified
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn statuses(&self) -> Vec<Stored> {
        self.state.lock().unwrap().statuses.clone()
    }
}

fn store(state: &Mutex<State>, sha: &str, context: &str, forge_state: &str, description: &str) {
    let mut s = state.lock().unwrap();
    let id = s.statuses.len() as u64 + 1;
    s.statuses.push(Stored {
        id,
        sha: sha.into(),
        context: context.into(),
        state: forge_state.into(),
        description: description.into(),
        at: chrono::Utc::now(),
    });
}

fn serve(kind: Kind, stream: TcpStream, state: &Mutex<State>) {
    let Some(crate::http::Request {
        method,
        target,
        headers,
        body,
    }) = crate::http::read_request(&stream)
    else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), parse_query(q)),
        None => (target.clone(), HashMap::new()),
    };
    let request = Request {
        method,
        path,
        query,
        headers,
        at: std::time::Instant::now(),
    };
    state.lock().unwrap().requests.push(request.clone());
    let (mut code, mut extra, mut body) = match over_budget(kind, state) {
        Some(refusal) => refusal,
        None => answer(kind, &request, &body, state),
    };
    // GitHub tags every read with an ETag and answers an unchanged one 304.
    if kind == Kind::Github && request.method == "GET" && code == 200 {
        use sha2::Digest;
        let etag = format!("\"{:x}\"", sha2::Sha256::digest(body.as_bytes()));
        if request.headers.get("if-none-match") == Some(&etag) {
            state.lock().unwrap().not_modified += 1;
            (code, body) = (304, String::new());
        }
        extra.push(("ETag".to_owned(), etag));
    }
    extra.extend(spend_budget(kind, state, code));
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body.as_bytes());
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

type Answer = (u16, Vec<(String, String)>, String);

fn answer(kind: Kind, r: &Request, body: &[u8], state: &Mutex<State>) -> Answer {
    if let Some(code) = state.lock().unwrap().forced {
        return (code, vec![], r#"{"message":"forced"}"#.into());
    }
    if let Some(secs) = take_limit(state) {
        return limited(kind, secs);
    }
    let authorized = match kind {
        Kind::Github => r.headers.get("authorization") == Some(&format!("Bearer {TOKEN}")),
        Kind::Gitea => r.headers.get("authorization") == Some(&format!("token {TOKEN}")),
        Kind::Gitlab => r.headers.get("private-token").map(String::as_str) == Some(TOKEN),
    };
    if !authorized {
        return (401, vec![], r#"{"message":"Bad credentials"}"#.into());
    }
    if r.method == "POST" && state.lock().unwrap().read_only {
        return (
            403,
            vec![],
            r#"{"message":"Resource not accessible by integration"}"#.into(),
        );
    }
    let segments: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    match (kind, r.method.as_str(), segments.as_slice()) {
        (Kind::Github, "GET", ["repos", _, _, "commits", sha, "status"]) => {
            combined(kind, r, sha, state, "per_page", 30, 100)
        }
        (Kind::Gitea, "GET", ["api", "v1", "repos", _, _, "commits", sha, "status"]) => {
            combined(kind, r, sha, state, "limit", 30, 50)
        }
        (Kind::Gitlab, "GET", ["api", "v4", "projects", _, "repository", "commits", sha, "statuses"]) => {
            gitlab_list(r, sha, state)
        }
        (Kind::Github, "POST", ["repos", _, _, "statuses", sha])
        | (Kind::Gitea, "POST", ["api", "v1", "repos", _, _, "statuses", sha]) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let field = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            store(
                state,
                sha,
                &field("context"),
                &field("state"),
                &field("description"),
            );
            (201, vec![], "{}".into())
        }
        (Kind::Gitlab, "POST", ["api", "v4", "projects", _, "statuses", sha]) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let field = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            store(state, sha, &field("name"), &field("state"), &field("description"));
            (201, vec![], "{}".into())
        }
        _ => (404, vec![], r#"{"message":"Not Found"}"#.into()),
    }
}

/// The answer to a request past the primary limit's budget, if this one is.
fn over_budget(kind: Kind, state: &Mutex<State>) -> Option<Answer> {
    let mut s = state.lock().unwrap();
    let (0, reset) = s.budget? else { return None };
    s.over_budget += 1;
    let h = |k: &str, v: String| (k.to_owned(), v);
    let epoch = reset.timestamp().to_string();
    Some(match kind {
        Kind::Github => (
            403,
            vec![
                h("x-ratelimit-limit", "5000".into()),
                h("x-ratelimit-remaining", "0".into()),
                h("x-ratelimit-reset", epoch),
            ],
            r#"{"message":"API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#.into(),
        ),
        Kind::Gitlab => (
            429,
            vec![
                h("RateLimit-Remaining", "0".into()),
                h("RateLimit-Reset", epoch),
            ],
            "Retry later".into(),
        ),
        Kind::Gitea => (
            429,
            vec![
                h("X-RateLimit-Remaining", "0".into()),
                h("X-RateLimit-Reset", epoch),
            ],
            "".into(),
        ),
    })
}

/// Counts an answered request against the budget (all but a GitHub 304 and
/// a refusal for being over it); the headers telling what is left.
fn spend_budget(kind: Kind, state: &Mutex<State>, code: u16) -> Vec<(String, String)> {
    let mut s = state.lock().unwrap();
    let Some((left, reset)) = s.budget else {
        return vec![];
    };
    if left == 0 {
        return vec![];
    }
    let left = if kind == Kind::Github && code == 304 {
        left
    } else {
        left - 1
    };
    s.budget = Some((left, reset));
    let (remaining, at) = match kind {
        Kind::Gitlab => ("RateLimit-Remaining", "RateLimit-Reset"),
        Kind::Github | Kind::Gitea => ("X-RateLimit-Remaining", "X-RateLimit-Reset"),
    };
    vec![
        (remaining.to_owned(), left.to_string()),
        (at.to_owned(), reset.timestamp().to_string()),
    ]
}

/// The `retry-after` of a request answered as rate-limited, if this one is.
fn take_limit(state: &Mutex<State>) -> Option<u64> {
    let mut s = state.lock().unwrap();
    let (left, secs) = s.limited?;
    s.limited = (left > 1).then_some((left - 1, secs));
    Some(secs)
}

/// A rate-limited answer, as each forge words it.
fn limited(kind: Kind, secs: u64) -> Answer {
    let reset = (chrono::Utc::now().timestamp() + secs as i64).to_string();
    let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    match kind {
        Kind::Github => (
            403,
            vec![
                h("retry-after", &secs.to_string()),
                h("x-ratelimit-limit", "5000"),
                h("x-ratelimit-remaining", "4990"),
                h("x-ratelimit-reset", &reset),
            ],
            r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#.into(),
        ),
        Kind::Gitlab => (
            429,
            vec![
                h("Retry-After", &secs.to_string()),
                h("RateLimit-Limit", "2000"),
                h("RateLimit-Remaining", "0"),
                h("RateLimit-Reset", &reset),
            ],
            "Retry later".into(),
        ),
        Kind::Gitea => (429, vec![h("Retry-After", &secs.to_string())], "".into()),
    }
}

fn page_params(r: &Request, size_key: &str, default: usize, max: usize) -> (usize, usize) {
    let size = r
        .query
        .get(size_key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max);
    let page = r
        .query
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    (page, size)
}

fn link_header(r: &Request, base: &str, page: usize, pages: usize) -> String {
    let url = |p: usize| {
        let mut q: Vec<String> = r
            .query
            .iter()
            .filter(|(k, _)| *k != "page")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        q.sort();
        q.push(format!("page={p}"));
        format!("<{base}{}?{}>", r.path, q.join("&"))
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(pages)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url(1)));
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
    }
    links.join(", ")
}

/// The newest status per context, newest first (as GitHub and Gitea list them).
fn latest(sha: &str, state: &Mutex<State>) -> Vec<Stored> {
    let all = state.lock().unwrap().statuses.clone();
    let mut by_context: HashMap<String, Stored> = HashMap::new();
    for s in all.into_iter().filter(|s| s.sha == sha) {
        by_context.insert(s.context.clone(), s);
    }
    let mut v: Vec<Stored> = by_context.into_values().collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.id));
    v
}

fn combined(
    kind: Kind,
    r: &Request,
    sha: &str,
    state: &Mutex<State>,
    size_key: &str,
    default: usize,
    max: usize,
) -> Answer {
    let latest = latest(sha, state);
    let (page, size) = page_params(r, size_key, default, max);
    let pages = latest.len().div_ceil(size).max(1);
    let items: Vec<serde_json::Value> = latest
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|s| {
            let state_key = if kind == Kind::Gitea { "status" } else { "state" };
            serde_json::json!({
                "url": format!("http://127.0.0.1/repos/ops/deploy/statuses/{sha}"),
                "id": s.id,
                "node_id": format!("SC_{}", s.id),
                state_key: s.state,
                "description": s.description,
                "target_url": null,
                "context": s.context,
                "created_at": timestamp(s),
                "updated_at": timestamp(s),
            })
        })
        .collect();
    let overall = if latest.iter().any(|s| s.state == "failure" || s.state == "error") {
        "failure"
    } else if latest.iter().all(|s| s.state == "success") && !latest.is_empty() {
        "success"
    } else {
        "pending"
    };
    let body = serde_json::json!({
        "state": overall,
        "sha": sha,
        "total_count": latest.len(),
        "statuses": items,
        "repository": {"full_name": "ops/deploy"},
        "commit_url": format!("http://127.0.0.1/repos/ops/deploy/commits/{sha}"),
        "url": format!("http://127.0.0.1/repos/ops/deploy/commits/{sha}/status"),
    });
    let base = format!("http://{}", r.headers.get("host").cloned().unwrap_or_default());
    let mut headers = vec![];
    let link = link_header(r, &base, page, pages);
    if !link.is_empty() {
        headers.push(("Link".to_owned(), link));
    }
    if kind == Kind::Gitea {
        headers.push(("X-Total-Count".to_owned(), latest.len().to_string()));
    }
    (200, headers, body.to_string())
}

fn gitlab_list(r: &Request, sha: &str, state: &Mutex<State>) -> Answer {
    let all = r.query.get("all").map(String::as_str) == Some("true");
    let mut list: Vec<Stored> = if all {
        let statuses = state.lock().unwrap().statuses.clone();
        statuses.into_iter().filter(|s| s.sha == sha).collect()
    } else {
        latest(sha, state)
    };
    list.sort_by_key(|s| std::cmp::Reverse(s.id));
    let (page, size) = page_params(r, "per_page", 20, 100);
    let pages = list.len().div_ceil(size).max(1);
    let items: Vec<serde_json::Value> = list
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "sha": sha,
                "ref": "deploy",
                "status": s.state,
                "name": s.context,
                "target_url": null,
                "description": s.description,
                "created_at": timestamp(s),
                "started_at": null,
                "finished_at": if s.state == "running" || s.state == "pending" { serde_json::Value::Null } else { timestamp(s).into() },
                "allow_failure": false,
                "coverage": null,
                "author": {"id": 1, "username": "ferry", "name": "Ferry"},
            })
        })
        .collect();
    let base = format!("http://{}", r.headers.get("host").cloned().unwrap_or_default());
    let mut headers = vec![
        ("X-Page".to_owned(), page.to_string()),
        ("X-Per-Page".to_owned(), size.to_string()),
        ("X-Total".to_owned(), list.len().to_string()),
        ("X-Total-Pages".to_owned(), pages.to_string()),
        (
            "X-Next-Page".to_owned(),
            if page < pages {
                (page + 1).to_string()
            } else {
                String::new()
            },
        ),
        (
            "X-Prev-Page".to_owned(),
            if page > 1 {
                (page - 1).to_string()
            } else {
                String::new()
            },
        ),
    ];
    let link = link_header(r, &base, page, pages);
    if !link.is_empty() {
        headers.push(("Link".to_owned(), link));
    }
    (200, headers, serde_json::Value::Array(items).to_string())
}

/// When a status was set, as the forges write it.
fn timestamp(s: &Stored) -> String {
    s.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
