//! The agent's configuration (`/etc/ferry/agent.toml`): parsed strictly, so an
//! unknown key or a bad value is refused at start with the key's name and what
//! was expected, and validated into types the rest of the agent trusts.
//!
//! This module only composes. Each section — its raw type as written, its
//! validated type and its validation — belongs to the module that uses it
//! (`[source]` to `io::git::source`, `[cache]` to `io::cache::client`,
//! `[switch]` to `io::systemd::switch`, `[health]` to `io::systemd::health`,
//! `[report]` to `io::forge`, `[reboot]` to `policy::window`, `[approvals]` to
//! `policy::approvals`, `[metrics]` to `metrics`), which names the key it
//! refuses; [`value`] is the leaf they all build on.

pub mod value;

use std::path::{Path, PathBuf};

use ferry_signer::HostName;
use serde::Deserialize;

use self::value::{absolute, Invalid};
use crate::io::cache::client::{self as cache, CacheConfig, CacheFile};
use crate::io::forge::{self, ReportConfig, ReportFile};
use crate::io::git::source::{self, SourceConfig, SourceFile};
use crate::io::systemd::health::{self, HealthConfig, HealthFile};
use crate::io::systemd::switch::{self, SwitchConfig, SwitchFile};
use crate::metrics::{self, MetricsConfig, MetricsFile};
use crate::policy::approvals::{self, ApprovalsConfig, ApprovalsFile};
use crate::policy::window::{self, RebootFile, RebootPolicy, Windows};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/ferry/agent.toml";
/// Configuration files larger than this are refused.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This host's entry in releases.
    pub host: HostName,
    /// Where the agent keeps its repository clone, state and outbox.
    pub state_dir: PathBuf,
    pub source: SourceConfig,
    pub cache: CacheConfig,
    pub switch: SwitchConfig,
    /// The deploy window (`switch.window`): new releases are switched to only
    /// inside it (`None`: any time); `boot` releases are not held back.
    pub deploy_window: Option<Windows>,
    pub health: HealthConfig,
    pub report: ReportConfig,
    /// When the agent reboots into a release that needs it.
    pub reboot: RebootPolicy,
    pub metrics: MetricsConfig,
    pub approvals: ApprovalsConfig,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration {path} is larger than 1 MiB")]
    TooLarge { path: PathBuf },
    #[error("configuration {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration {path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

impl Config {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        if std::fs::metadata(path).map_err(read_err)?.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text, path, system_hostname)
    }

    /// Parses configuration text; `default_host` supplies `host` when absent.
    pub fn parse(
        text: &str,
        path: &Path,
        default_host: impl FnOnce() -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            problem,
        };

        let host_text = match file.host {
            Some(h) => h,
            None => default_host().ok_or_else(|| {
                invalid(
                    "host",
                    "not set and this machine's hostname cannot be read: set host = \"…\"".into(),
                )
            })?,
        };
        let host = host_text
            .parse::<HostName>()
            .map_err(|e| invalid("host", e.to_string()))?;
        let state_dir = absolute(file.state_dir, "state_dir").map_err(|p| invalid("state_dir", p))?;

        let in_file = |e: Invalid| invalid(e.key, e.problem);
        let s3_credentials_file = file.cache.s3_credentials_file.clone();
        let source = source::validate(file.source).map_err(in_file)?;
        let cache = cache::validate(file.cache).map_err(in_file)?;
        let deploy_window = window::validate_deploy_window(&file.switch.window);
        let switch = switch::validate(file.switch).map_err(in_file)?;
        let deploy_window = deploy_window.map_err(in_file)?;
        let health = health::validate(file.health).map_err(in_file)?;
        let report = forge::validate(file.report, s3_credentials_file).map_err(in_file)?;
        let reboot = window::validate_reboot(file.reboot).map_err(in_file)?;
        let metrics = metrics::validate(file.metrics).map_err(in_file)?;
        let approvals = approvals::validate(file.approvals).map_err(in_file)?;

        Ok(Config {
            host,
            state_dir,
            source,
            cache,
            switch,
            deploy_window,
            health,
            report,
            reboot,
            metrics,
            approvals,
        })
    }
}

/// This machine's host name, as the kernel knows it.
pub fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

// ---- the file format -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    host: Option<String>,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    source: SourceFile,
    cache: CacheFile,
    #[serde(default)]
    switch: SwitchFile,
    #[serde(default)]
    health: HealthFile,
    #[serde(default)]
    report: ReportFile,
    #[serde(default)]
    reboot: RebootFile,
    #[serde(default)]
    metrics: MetricsFile,
    #[serde(default)]
    approvals: ApprovalsFile,
}

fn default_state_dir() -> PathBuf {
    "/var/lib/ferry-agent".into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_token_is_never_sent_over_plain_http_off_this_machine() {
        use crate::io::git::source::token_travels_safely;
        assert!(token_travels_safely("https://git.example.com/ops/deploy.git"));
        assert!(token_travels_safely("http://127.0.0.1:8080/deploy.git"));
        assert!(token_travels_safely("http://localhost/deploy.git"));
        assert!(token_travels_safely("http://[::1]:9/deploy.git"));
        assert!(!token_travels_safely("http://git.example.com/deploy.git"));
        assert!(!token_travels_safely("http://127.0.0.1.evil.example/deploy.git"));
        assert!(!token_travels_safely("http://localhost@evil.example/deploy.git"));
        let text = "host = \"web1\"\n[source]\nurl = \"http://git.example.com/d.git\"\ntoken_file = \"/run/t\"\n[cache]\nsubstituters = [\"https://c\"]\ntrusted_public_keys = []\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("source.token_file") && err.contains("use https://"),
            "{err}"
        );
    }

    #[test]
    fn an_s3_source_is_a_mirror_in_a_bucket_read_with_its_own_key_pair() {
        let with = |source: &str| {
            format!("host = \"web1\"\n[source]\n{source}\n[cache]\nsubstituters = [\"https://c\"]\ntrusted_public_keys = [\"{KEY}\"]\n")
        };
        let ok = parse(&with(
            "url = \"s3://deploy/ops/deploy.git?region=eu-central-1\"\ns3_credentials_file = \"/run/credentials/ferry-agent.service/source-s3\"",
        ))
        .unwrap();
        assert_eq!(
            ok.source.s3_credentials_file.as_deref(),
            Some(Path::new("/run/credentials/ferry-agent.service/source-s3"))
        );
        for (source, key, says) in [
            (
                "url = \"s3://deploy/../x?region=eu-central-1\"",
                "source.url",
                "may not hold `.` or `..`",
            ),
            (
                "url = \"s3://deploy/x?region=eu-central-1\"\ntoken_file = \"/run/t\"",
                "source.token_file",
                "use source.s3_credentials_file",
            ),
            (
                "url = \"https://git.example.com/d.git\"\ns3_credentials_file = \"/run/k\"",
                "source.s3_credentials_file",
                "not an s3:// URL",
            ),
            (
                "url = \"s3://deploy/x\"\ns3_credentials_file = \"run/k\"",
                "source.s3_credentials_file",
                "absolute",
            ),
        ] {
            let err = parse(&with(source)).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{source}: {err}");
        }
    }

    use super::*;

    const KEY: &str = "cache.example.com-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn minimal() -> String {
        format!(
            "[source]\nurl = \"https://git.example.com/ops/deploy.git\"\n[cache]\nsubstituters = [\"https://cache.example.com\"]\ntrusted_public_keys = [\"{KEY}\"]\n"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ferry/agent.toml"), || Some("web1".into()))
    }

    fn refusal(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.host.as_str(), "web1");
        assert_eq!(c.state_dir, Path::new("/var/lib/ferry-agent"));
        assert_eq!(c.source.branch, "deploy");
        assert_eq!(c.source.poll_interval, Duration::from_secs(60));
        assert_eq!(c.switch.profile, Path::new("/nix/var/nix/profiles/system"));
        assert_eq!(c.switch.timeout, Duration::from_secs(900));
        assert!(c.switch.rollback);
        assert_eq!(c.report.forge, None);
        assert_eq!(c.report.context_for(&c.host), "ferry/web1");
    }

    #[test]
    fn the_issue_example_parses() {
        let text = format!(
            r#"host = "web1"
state_dir = "/var/lib/ferry-agent"
[source]
url = "https://git.example.com/ops/deploy.git"
branch = "deploy"
allowed_signers = "/etc/ferry/allowed_signers"
poll_interval = "60s"
jitter = "10s"
token_file = "/run/credentials/ferry-agent.service/git-token"
[cache]
substituters = ["https://cache.example.com"]
trusted_public_keys = ["{KEY}"]
[switch]
profile = "/nix/var/nix/profiles/system"
unit = "ferry-switch"
timeout = "15m"
rollback = true
[health]
commands = ["systemctl is-active nginx", {{ command = "curl -fsS http://localhost/", timeout = "5s" }}]
[report]
forge = "gitea"
api_url = "https://git.example.com/api/v1/"
repository = "ops/deploy"
token_file = "/run/credentials/ferry-agent.service/forge-token"
context = "ferry/{{host}}"
"#
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.switch.timeout, Duration::from_secs(900));
        assert_eq!(c.health.commands.len(), 2);
        assert_eq!(c.health.commands[1].timeout, Duration::from_secs(5));
        let target = c.report.forge.as_ref().expect("a forge");
        assert_eq!(target.api_url, "https://git.example.com/api/v1");
        assert_eq!(target.forge, crate::io::forge::Forge::Gitea);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = refusal(&minimal().replace("[cache]", "pol_interval = \"5s\"\n[cache]"));
        assert!(err.contains("unknown field `pol_interval`"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = refusal(&format!("{}[swtich]\nunit = \"x\"\n", minimal()));
        assert!(err.contains("unknown field `swtich`"), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let cases = [
            (
                minimal().replace("[cache]", "poll_interval = \"soon\"\n[cache]"),
                "is not a duration: expected e.g. \"60s\"",
            ),
            (
                minimal().replace("https://git.example.com", "ssh://git.example.com"),
                "`source.url`",
            ),
            (
                minimal().replace("https://cache.example.com", "ftp://cache.example.com"),
                "`cache.substituters`",
            ),
            (
                minimal().replace(KEY, "cache.example.com-1:short"),
                "`cache.trusted_public_keys`",
            ),
            (
                minimal().replace(&format!("\"{KEY}\""), ""),
                "unsigned closures are never deployed",
            ),
            (format!("host = \"web 1\"\n{}", minimal()), "`host`"),
            (
                format!("state_dir = \"var/lib\"\n{}", minimal()),
                "`state_dir`: `var/lib` is not an absolute path",
            ),
            (
                format!("{}[report]\nforge = \"bitbucket\"\n", minimal()),
                "expected github, gitea, forgejo, gitlab or none",
            ),
            (
                format!("{}[report]\nforge = \"gitea\"\n", minimal()),
                "`report.api_url`: required for gitea",
            ),
            (
                format!(
                    "{}[report]\nforge = \"github\"\nrepository = \"o/r\"\n",
                    minimal()
                ),
                "`report.token_file`",
            ),
            (
                format!(
                    "{}[report]\nforge = \"github\"\nrepository = \"o/r\"\ncontext = \"\"\ntoken_file = \"/run/t\"\n",
                    minimal()
                ),
                "`report.context`: is empty",
            ),
            (
                format!("{}[report]\nforge = \"gitlab\"\napi_url = \"ftp://gitlab\"\n", minimal()),
                "`report.api_url`: `ftp://gitlab` is not an http(s) URL",
            ),
            (
                format!("{}[report]\nforge = \"github\"\n", minimal()),
                "`report.repository`: required",
            ),
            (
                format!("{}[report]\nstatuses = \"failures\"\n", minimal()),
                "`report.statuses`: `failures` leaves the forge without this host's successes",
            ),
            (
                format!("{}[report]\nstatuses = \"some\"\n", minimal()),
                "expected all, failures or none",
            ),
            (
                format!("{}[report]\nreceipts = \"s3://fleet/../x\"\n", minimal()),
                "`report.receipts`",
            ),
            (
                format!("{}[switch]\nunit = \"a b\"\n", minimal()),
                "`switch.unit`",
            ),
            (
                format!(
                    "{}[report]\nforge = \"gitea\"\napi_url = \"http://git.example.com/api/v1\"\nrepository = \"o/r\"\ntoken_file = \"/run/t\"\n",
                    minimal()
                ),
                "`report.api_url`: `http://git.example.com/api/v1` is plain HTTP to another machine, so the forge token would cross the network in clear: use https://",
            ),
            (
                minimal().replace("[cache]", "branch = \"a..b\"\n[cache]"),
                "`source.branch`",
            ),
            (
                format!("{}[approvals]\nrequired = 2\n", minimal()),
                "`approvals.required`: 2 approvals are required but no approvers are named",
            ),
            (
                format!(
                    "{}[approvals]\nrequired = 3\napprovers = [\"alice\", \"bob\"]\n",
                    minimal()
                ),
                "only 2 approver(s) are named: the release could never be approved",
            ),
            (
                format!("{}[approvals]\napprovers = [\"alice smith\"]\n", minimal()),
                "`approvals.approvers`: `alice smith` is not a principal",
            ),
            (
                format!("{}[approvals]\nreleasers = [\"ci*\"]\n", minimal()),
                "`approvals.releasers`",
            ),
            (
                format!("{}[approvals]\nallowed_signers = \"approvers\"\n", minimal()),
                "`approvals.allowed_signers`: `approvers` is not an absolute path",
            ),
        ];
        for (text, needle) in cases {
            let err = refusal(&text);
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }
    }

    #[test]
    fn a_forge_over_plain_http_only_on_this_machine() {
        let report = |url: &str| {
            format!(
                "{}[report]\nforge = \"gitea\"\napi_url = \"{url}\"\nrepository = \"o/r\"\ntoken_file = \"/run/t\"\n",
                minimal()
            )
        };
        for url in [
            "http://127.0.0.1:3000/api/v1",
            "http://localhost/api/v1",
            "http://[::1]:3000/api/v1",
        ] {
            assert!(parse(&report(url)).is_ok(), "{url}");
        }
        for url in ["http://10.0.0.1/api/v1", "http://localhost@evil.example/api/v1"] {
            let err = refusal(&report(url));
            assert!(
                err.contains("`report.api_url`") && err.contains("use https://"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_hostname_is_explained() {
        let err = Config::parse(&minimal(), Path::new("/x"), || None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set host ="), "{err}");
    }
}
