//! The agent's configuration (`/etc/ferry/agent.toml`): parsed strictly, so an
//! unknown key or a bad value is refused at start with the key's name and what
//! was expected, and validated into types the rest of the agent trusts. The
//! file's format is here; each section is validated by the module that owns
//! it (`source::validate`, `cache::validate`, `switch::validate`,
//! `health::validate`, `report::validate`, `metrics::validate`), which names
//! the key it refuses; `[approvals]` is validated here, into `ferry_signer`'s
//! `ApprovalPolicy`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_signer::HostName;
use serde::Deserialize;

use crate::narinfo::CachePublicKey;

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
    pub health: HealthConfig,
    pub report: ReportConfig,
    /// When the agent reboots into a release that needs it.
    pub reboot: crate::window::RebootPolicy,
    pub metrics: crate::metrics::MetricsConfig,
    pub approvals: ApprovalsConfig,
}

/// The two-person rule on this host: how many distinct people must approve
/// a release before it is deployed here, who they are, and who may release.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApprovalsConfig {
    pub policy: ferry_signer::ApprovalPolicy,
    /// The approvers' keys, when not in `source.allowed_signers`.
    pub allowed_signers: Option<PathBuf>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Binary cache URLs, tried in order.
    pub substituters: Vec<String>,
    /// Keys narinfo signatures must verify against.
    pub trusted_public_keys: Vec<CachePublicKey>,
    /// Where the caches' credentials are read from.
    pub credentials: crate::credentials::CacheCredentials,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwitchConfig {
    /// The system profile (`/nix/var/nix/profiles/system`).
    pub profile: PathBuf,
    /// Name of the transient unit running switch-to-configuration (also a lock).
    pub unit: String,
    /// How long switch-to-configuration may run before it is stopped.
    pub timeout: Duration,
    /// Roll back automatically when the switch or a health check fails.
    pub rollback: bool,
    /// The deploy window: releases are switched to only inside it (`None`:
    /// any time). `boot` releases and refusals are not held back.
    pub window: Option<crate::window::Windows>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// How long to let units settle after a switch before looking for failures.
    pub settle: Duration,
    pub commands: Vec<HealthCommand>,
}

/// An extra health check: a shell command that must exit 0 within its timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCommand {
    pub command: String,
    pub timeout: Duration,
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

impl ReportConfig {
    /// The status context for `host`.
    pub fn context_for(&self, host: &HostName) -> String {
        self.context.replace("{host}", host.as_str())
    }
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
        let source = crate::source::validate(file.source).map_err(in_file)?;
        let cache = crate::cache::validate(file.cache).map_err(in_file)?;
        let switch = crate::switch::validate(file.switch).map_err(in_file)?;
        let health = crate::health::validate(file.health);
        let report = crate::report::validate(file.report).map_err(in_file)?;
        let reboot = crate::window::validate_reboot(file.reboot).map_err(in_file)?;
        let metrics = crate::metrics::validate(file.metrics).map_err(in_file)?;
        let approvals = validate_approvals(file.approvals).map_err(in_file)?;

        Ok(Config {
            host,
            state_dir,
            source,
            cache,
            switch,
            health,
            report,
            reboot,
            metrics,
            approvals,
        })
    }
}

/// The `[approvals]` section, validated: principals are plain names, and a
/// threshold that no set of approvers could meet is refused.
fn validate_approvals(file: ApprovalsFile) -> Result<ApprovalsConfig, Invalid> {
    let principals = |names: Vec<String>, key: &'static str| {
        names
            .iter()
            .map(|n| n.parse::<ferry_signer::Principal>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Invalid::new(key, e.to_string()))
    };
    let approvers = principals(file.approvers, "approvals.approvers")?;
    let releasers = principals(file.releasers, "approvals.releasers")?;
    let policy = ferry_signer::ApprovalPolicy::new(file.required, approvers, releasers)
        .map_err(|e| Invalid::new("approvals.required", e.to_string()))?;
    let allowed_signers = file
        .allowed_signers
        .map(|p| absolute(p, "allowed_signers"))
        .transpose()
        .map_err(|p| Invalid::new("approvals.allowed_signers", p))?;
    Ok(ApprovalsConfig {
        policy,
        allowed_signers,
    })
}

/// A value of a section that cannot be used: the full key and why. The
/// module owning the section says so; [`Config::parse`] adds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub key: &'static str,
    pub problem: String,
}

impl Invalid {
    pub(crate) fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
        }
    }
}

/// `p`, if absolute; else why not (`what` names the key).
pub(crate) fn absolute(p: PathBuf, what: &str) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!(
            "`{}` is not an absolute path ({what} must be absolute)",
            p.display()
        ))
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
    reboot: crate::window::RebootFile,
    #[serde(default)]
    metrics: crate::metrics::MetricsFile,
    #[serde(default)]
    approvals: ApprovalsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ApprovalsFile {
    required: usize,
    approvers: Vec<String>,
    releasers: Vec<String>,
    allowed_signers: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    "/var/lib/ferry-agent".into()
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
}

fn default_branch() -> String {
    "deploy".into()
}

fn default_allowed_signers() -> PathBuf {
    "/etc/ferry/allowed_signers".into()
}

fn secs<const N: u64>() -> HumanDuration {
    HumanDuration(Duration::from_secs(N))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SwitchFile {
    pub(crate) profile: PathBuf,
    pub(crate) unit: String,
    pub(crate) timeout: HumanDuration,
    pub(crate) rollback: bool,
    pub(crate) window: Vec<String>,
}

impl Default for SwitchFile {
    fn default() -> Self {
        Self {
            profile: "/nix/var/nix/profiles/system".into(),
            unit: "ferry-switch".into(),
            timeout: secs::<900>(),
            rollback: true,
            window: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthFile {
    pub(crate) settle: HumanDuration,
    pub(crate) commands: Vec<HealthCommandFile>,
}

impl Default for HealthFile {
    fn default() -> Self {
        Self {
            settle: secs::<10>(),
            commands: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum HealthCommandFile {
    Shell(String),
    Table { command: String, timeout: HumanDuration },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReportFile {
    pub(crate) forge: ForgeSetting,
    pub(crate) api_url: Option<String>,
    pub(crate) repository: String,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) context: String,
    pub(crate) error_after: HumanDuration,
}

impl Default for ReportFile {
    fn default() -> Self {
        Self {
            forge: ForgeSetting(None),
            api_url: None,
            repository: String::new(),
            token_file: None,
            context: "ferry/{host}".into(),
            error_after: HumanDuration(crate::decide::DEFAULT_ERROR_AFTER),
        }
    }
}

/// `report.forge` as written: a forge, or `none`.
pub(crate) struct ForgeSetting(pub(crate) Option<Forge>);

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

/// A duration written as `"60s"`, `"15m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

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

#[cfg(test)]
mod tests {

    #[test]
    fn a_token_is_never_sent_over_plain_http_off_this_machine() {
        use crate::source::token_travels_safely;
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
        assert_eq!(target.forge, Forge::Gitea);
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
