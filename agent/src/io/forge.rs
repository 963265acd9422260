//! The forge, as the agent talks to it: the `[report]` section (validated
//! with the signer's `ForgeSettings`, so both sides accept the same
//! settings), the request each forge expects (`ferry_signer::forge`'s, with
//! the agent's User-Agent added), and [`ForgeClient::send`], which posts one
//! status and classifies the answer: 401/403/404 are configuration problems,
//! reported with the repository and token file; 408, 429 and 5xx are
//! retried; other 4xx drop the one status. The token is read from its file
//! for each send and only ever placed in a header.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_signer::forge::{
    rate_limit, status_request, without_url, ForgeError, ForgeSettings, LimitHeaders, Token,
    RATE_LIMIT_BODY_BYTES,
};
use ferry_signer::HostName;

use crate::config::value::{absolute, Invalid};
use crate::io::body::read_bounded;
use crate::io::receipts::{self, ReceiptsTarget};

/// Which of a host's statuses reach the forge (`report.statuses`).
pub use ferry_signer::forge::Statuses;

/// The forge's answer to one status, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Network trouble or 5xx: keep it, retry later.
    Retry(String),
    /// Credentials or repository wrong: keep it, tell the operator.
    Misconfigured(String),
    /// The forge limits the rate of requests (its own way of saying so, see
    /// `ferry_signer::forge::rate_limit`): keep it, send nothing until then.
    RateLimited {
        until: DateTime<Utc>,
    },
    /// The forge will never accept this status: drop it.
    Rejected(String),
}

/// A forge client for one repository.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    client: reqwest::Client,
    forge: Forge,
    api_url: String,
    repository: String,
    token_file: PathBuf,
}

impl ForgeClient {
    pub fn new(config: &ForgeTarget) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("the TLS backend initialises");
        Self {
            client,
            forge: config.forge,
            api_url: config.api_url.clone(),
            repository: config.repository.clone(),
            token_file: config.token_file.clone(),
        }
    }

    /// Posts one status. The token is read from its file for each send, so a
    /// rotated credential is picked up, and it is never logged.
    pub async fn send(&self, status: &CommitStatus) -> Delivery {
        let path = &self.token_file;
        let token = match std::fs::read_to_string(path) {
            Ok(t) => match Token::new(&t) {
                Ok(token) => token,
                Err(_) => {
                    return Delivery::Misconfigured(format!(
                        "token file {} is empty or holds more than one line",
                        path.display()
                    ))
                }
            },
            Err(e) => {
                return Delivery::Misconfigured(format!("cannot read token file {}: {e}", path.display()))
            }
        };
        let request = request_for(self.forge, &self.api_url, &self.repository, &token, status);
        let mut builder = self.client.post(&request.url).json(&request.body);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Delivery::Retry(format!("cannot reach {}: {}", self.api_url, without_url(&e))),
        };
        let code = response.status().as_u16();
        if code == 403 || code == 429 {
            let headers = LimitHeaders::from_map(response.headers());
            let body = read_bounded(response, RATE_LIMIT_BODY_BYTES as usize).await;
            if let Some(until) = rate_limit(code, &headers, &String::from_utf8_lossy(&body), Utc::now()) {
                return Delivery::RateLimited { until };
            }
        }
        let token_file = self.token_file.display();
        match code {
            200..=299 => Delivery::Delivered,
            401 | 403 => Delivery::Misconfigured(format!(
                "the forge refused the token (HTTP {code}) for repository {}: check the token in {token_file} and its permission to write commit statuses",
                self.repository
            )),
            404 => Delivery::Misconfigured(format!(
                "repository {} or commit {} not found at {} (HTTP 404): check report.repository and the token in {token_file}",
                self.repository, status.commit, self.api_url
            )),
            408 | 429 | 500..=599 => Delivery::Retry(format!("the forge answered HTTP {code}")),
            _ => Delivery::Rejected(format!("the forge rejected the status (HTTP {code})")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// Where commit statuses are posted; absent with `forge = "none"`.
    pub forge: Option<ForgeTarget>,
    /// Status context; `{host}` is replaced by the host name.
    pub context: String,
    /// How long a transient fault may keep a release from progressing
    /// before it is reported as an `error` status.
    pub error_after: Duration,
    /// Where this host writes its signed receipts, if anywhere.
    pub receipts: Option<ReceiptsTarget>,
    /// Which of this host's statuses reach the forge: `All` without
    /// receipts, as configured (default `Failures`) with them.
    pub statuses: Statuses,
}

/// A forge repository that commit statuses are posted to.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgeTarget {
    pub forge: Forge,
    /// API base, e.g. `https://git.example.com/api/v1` (Gitea) or `https://api.github.com`.
    pub api_url: String,
    /// `owner/repo` (GitHub, Gitea) or a project id or path (GitLab).
    pub repository: String,
    pub token_file: PathBuf,
}

/// Which forge API statuses are posted to: the signer's, so both sides name
/// the forges alike.
pub use ferry_signer::forge::ForgeKind as Forge;

impl ReportConfig {
    /// The status context for `host`.
    pub fn context_for(&self, host: &HostName) -> String {
        self.context.replace("{host}", host.as_str())
    }
}

/// One status to post on one commit; `CommitStatus::new` cuts the
/// description to [`MAX_DESCRIPTION_CHARS`].
pub use ferry_signer::forge::NewStatus as CommitStatus;

/// An HTTP request, ready to send: method is always POST.
pub use ferry_signer::forge::StatusRequest;

/// A commit status state, in Ferry's terms.
pub use ferry_signer::forge::StatusState;

/// GitHub refuses longer descriptions; we hold every forge to it.
pub use ferry_signer::forge::MAX_DESCRIPTION_CHARS;

/// The `[report]` section as written: the signer's definition, which
/// `ferry-signer --agent-config` reads too.
pub(crate) use ferry_signer::forge::ReportSection as ReportFile;

/// The `[report]` section of the configuration, validated: with a forge,
/// where and how to post (API URL defaulted per forge, repository and token
/// file required); `forge = "none"` is no forge at all.
pub(crate) fn validate(r: ReportFile, s3_credentials_file: Option<PathBuf>) -> Result<ReportConfig, Invalid> {
    let receipts = receipts::validate(r.receipts.as_deref(), r.host_key.clone(), s3_credentials_file)?;
    let statuses = match (r.statuses, &receipts) {
        (None, None) => Statuses::All,
        (None, Some(_)) => Statuses::Failures,
        (Some(Statuses::All), _) => Statuses::All,
        (Some(s), Some(_)) => s,
        (Some(s), None) => {
            return Err(Invalid::new(
                "report.statuses",
                format!(
                    "`{}` leaves the forge without this host's successes, and without report.receipts nothing else says them: set report.receipts, or statuses = \"all\"",
                    s.as_str()
                ),
            ))
        }
    };
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
            // The signer's rules, so both sides accept the same settings.
            let settings = ForgeSettings::new(forge, r.api_url.as_deref(), &r.repository, &r.context)
                .map_err(|e| match e {
                    ForgeError::NoApiUrl => Invalid::new(
                        "report.api_url",
                        "required for gitea, e.g. https://git.example.com/api/v1",
                    ),
                    ForgeError::BadUrl(url) => {
                        Invalid::new("report.api_url", format!("`{url}` is not an http(s) URL"))
                    }
                    ForgeError::NoRepository => Invalid::new(
                        "report.repository",
                        "required: owner/repo (or a GitLab project id)",
                    ),
                    ForgeError::NoContext => {
                        Invalid::new("report.context", "is empty: the default is `ferry/{host}`")
                    }
                    other => Invalid::new("report", other.to_string()),
                })?;
            let api_url = settings.api_url;
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
        receipts,
        statuses,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn status(state: StatusState) -> CommitStatus {
        CommitStatus::new(
            "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            state,
            "ferry/web1",
            "deployed",
        )
    }

    /// A token rotated while the client runs (written beside and renamed
    /// over, as sops-nix and agenix replace a secret) is used from the next
    /// status on, with no restart.
    #[tokio::test]
    async fn a_rotated_token_is_used_from_the_next_status_on() {
        let forge = ferry_test_support::forge_recorder::Recorder::start();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("forge-token");
        std::fs::write(&token_file, "first-token\n").unwrap();
        let client = ForgeClient::new(&ForgeTarget {
            forge: Forge::Gitea,
            api_url: forge.url(),
            repository: "ops/deploy".into(),
            token_file: token_file.clone(),
        });
        assert!(matches!(
            client.send(&status(StatusState::Pending)).await,
            Delivery::Delivered
        ));

        let rotated = dir.path().join("forge-token.new");
        std::fs::write(&rotated, "second-token\n").unwrap();
        std::fs::rename(&rotated, &token_file).unwrap();
        assert!(matches!(
            client.send(&status(StatusState::Success)).await,
            Delivery::Delivered
        ));

        let sent: Vec<String> = forge
            .requests()
            .iter()
            .map(|r| r.headers["authorization"].clone())
            .collect();
        assert_eq!(sent, ["token first-token", "token second-token"]);
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
}
