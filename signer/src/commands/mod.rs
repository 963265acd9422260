//! The commands of `ferry-signer`, one module each, and what they share:
//! opening the deploy repository, the signing key, the forge settings, and
//! the exit codes.

pub mod approve;
pub mod keygen;
pub mod mirror;
pub mod release;
pub mod rollout;
pub mod show;
pub mod status;
pub mod verify;
pub mod wait;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use age::secrecy::SecretString;
use anyhow::{bail, Context, Result};
use ferry_signer::forge::{ForgeClient, ForgeKind, ForgeSettings, ReportSection, Token, DEFAULT_CONTEXT};
use ferry_signer::keys::{FixedPassphrase, KeyError, PassphraseSource, SigningKey, Unlock};
use ferry_signer::ssh_agent::AgentKey;
use ferry_signer::sshsig::GitSigner;

pub const PASSPHRASE_ENV: &str = "FERRY_SIGNER_PASSPHRASE";
/// The forge token, when it is not in a file.
pub const TOKEN_ENV: &str = "FERRY_FORGE_TOKEN";

/// The exit codes, as `wait` and `rollout` document them.
pub const EXIT_CODES: &str = "Exit codes:
  0  done: every selected host reports success (failures within the budget)
  1  error: bad arguments or files, the forge refused the token, and the like
  2  command-line usage error
  3  failed: more hosts failed than --max-failures (or the wave's budget) allows
  4  timed out: hosts were still pending or silent when the time ran out
  5  the forge stayed unreachable (network, HTTP 5xx) until the time ran out";

/// How a command ended, beyond plain success or error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    TimedOut,
    Unreachable,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Done => 0,
            Outcome::Failed => 3,
            Outcome::TimedOut => 4,
            Outcome::Unreachable => 5,
        })
    }
}

/// Prints an error chain, one cause per line when it adds something.
pub fn report_error(err: &anyhow::Error) {
    // Library errors already name their cause in their message.
    let mut shown = err.to_string();
    eprintln!("ferry-signer: {shown}");
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        shown = text;
    }
}

pub fn open_repo(path: &Path) -> Result<git2::Repository> {
    git2::Repository::open(path).with_context(|| format!("{} is not a git repository", path.display()))
}

/// A release in a deploy repository, as `show`, `verify`, `status` and `wait` name it.
#[derive(clap::Args, Debug)]
pub struct RevArgs {
    /// The deploy repository (bare or not).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// The release: a commit, branch or tag (default: the deploy branch's tip).
    #[arg(long, default_value = "deploy")]
    pub rev: String,
}

/// A host's approval policy, as its agent.toml `[approvals]` section pins
/// it, for `verify` and `approve`.
#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// allowed_signers file of the approvers' keys (as hosts pin it in
    /// approvals.allowed_signers) [default: the --allowed-signers file].
    #[arg(long, value_name = "FILE")]
    pub approver_signers: Option<PathBuf>,
    /// How many distinct approvers the release needs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub approvals: usize,
    /// A principal who may approve; repeatable.
    #[arg(long = "approver", value_name = "PRINCIPAL")]
    pub approvers: Vec<String>,
    /// A principal who may release; repeatable [default: anyone allowed_signers accepts].
    #[arg(long = "releaser", value_name = "PRINCIPAL")]
    pub releasers: Vec<String>,
}

impl PolicyArgs {
    /// The policy, and the approvers' allowed_signers (`signers` unless a file is named).
    pub fn load(
        &self,
        signers: &ferry_signer::AllowedSigners,
    ) -> Result<(ferry_signer::ApprovalPolicy, ferry_signer::AllowedSigners)> {
        let principals = |names: &[String], flag: &str| -> Result<Vec<ferry_signer::Principal>> {
            names
                .iter()
                .map(|n| n.parse().with_context(|| flag.to_owned()))
                .collect()
        };
        let policy = ferry_signer::ApprovalPolicy::new(
            self.approvals,
            principals(&self.approvers, "--approver")?,
            principals(&self.releasers, "--releaser")?,
        )
        .context("--approvals")?;
        let approver_signers = match &self.approver_signers {
            Some(path) => ferry_signer::AllowedSigners::load(path).context("--approver-signers")?,
            None => signers.clone(),
        };
        Ok((policy, approver_signers))
    }
}

/// The hosts of a release a command looks at.
#[derive(clap::Args, Debug)]
pub struct HostArgs {
    /// Only hosts matching this name or glob pattern (`web*`); repeatable.
    /// Default: every host of the release.
    #[arg(long = "host", value_name = "PATTERN")]
    pub hosts: Vec<String>,
}

/// The signing key, as `release` and `rollout` take it.
#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    /// Signing key: from `ferry-signer keygen`, or a plain `ssh-keygen -t ed25519` key.
    /// With --ssh-agent: the public key (KEY.pub) of the agent key to sign with.
    #[arg(long, value_name = "KEY", required_unless_present = "ssh_agent")]
    pub key: Option<PathBuf>,
    /// Sign with a key held by ssh-agent (SSH_AUTH_SOCK), e.g. a hardware key:
    /// the one named by --key, or the agent's only key.
    #[arg(long)]
    pub ssh_agent: bool,
    /// age identity file that decrypts KEY; repeatable.
    #[arg(
        long = "identity",
        value_name = "AGE_IDENTITY_FILE",
        conflicts_with = "ssh_agent"
    )]
    pub identities: Vec<PathBuf>,
}

impl KeyArgs {
    /// Unlocks (or finds) the key; done before anything is written.
    pub fn signer(self) -> Result<Box<dyn GitSigner>> {
        Ok(match (self.ssh_agent, self.key) {
            (true, key) => Box::new(AgentKey::from_env(key.as_deref())?),
            (false, Some(key)) => Box::new(SigningKey::load(&key, &unlock(self.identities))?),
            (false, None) => bail!("name the signing key with --key KEY, or use --ssh-agent"),
        })
    }
}

/// The passphrase comes from FERRY_SIGNER_PASSPHRASE, else from the terminal.
#[derive(Debug)]
struct EnvOrTerminal;

impl PassphraseSource for EnvOrTerminal {
    fn passphrase(&self) -> Result<SecretString, KeyError> {
        if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
            return FixedPassphrase(p.into()).passphrase();
        }
        rpassword::prompt_password("key passphrase: ")
            .map(SecretString::from)
            .map_err(|_| KeyError::NoPassphrase)
    }
}

fn unlock(identity_files: Vec<PathBuf>) -> Unlock {
    Unlock {
        identity_files,
        passphrase: Some(Box::new(EnvOrTerminal)),
    }
}

/// Where hosts report: the same settings as the `[report]` section of the
/// agents' agent.toml, given as flags, environment variables, or read from
/// such a file with --agent-config. Flags win over the file.
#[derive(clap::Args, Debug, Clone)]
pub struct ForgeArgs {
    /// Read forge, api_url, repository, token_file and context from the
    /// `[report]` section of this agent.toml (the agents' own settings).
    #[arg(long, value_name = "FILE")]
    pub agent_config: Option<PathBuf>,
    /// The forge: github, gitea, forgejo or gitlab.
    #[arg(long, value_name = "KIND", env = "FERRY_FORGE", hide_env_values = true)]
    pub forge: Option<String>,
    /// API base URL (default for github: https://api.github.com, gitlab:
    /// https://gitlab.com/api/v4; required for gitea/forgejo, e.g. https://git.example.com/api/v1).
    #[arg(long, value_name = "URL", env = "FERRY_FORGE_API_URL", hide_env_values = true)]
    pub api_url: Option<String>,
    /// The deploy repository on the forge: owner/repo, or a GitLab project id or path.
    #[arg(
        long,
        value_name = "REPO",
        env = "FERRY_FORGE_REPOSITORY",
        hide_env_values = true
    )]
    pub repository: Option<String>,
    /// File holding the forge token; without it the token is read from FERRY_FORGE_TOKEN.
    /// Never printed; never sent over plain HTTP except to this machine.
    #[arg(
        long,
        value_name = "FILE",
        env = "FERRY_FORGE_TOKEN_FILE",
        hide_env_values = true
    )]
    pub token_file: Option<PathBuf>,
    /// Status context hosts post; {host} is the host's name [default: ferry/{host}].
    #[arg(
        long,
        value_name = "TEMPLATE",
        env = "FERRY_STATUS_CONTEXT",
        hide_env_values = true
    )]
    pub context: Option<String>,
}

/// An agent.toml, of which only the `[report]` section is read (with the
/// agent's own definition of it); the rest of the file is the agent's.
#[derive(serde::Deserialize, Default)]
struct AgentToml {
    #[serde(default)]
    report: ReportSection,
}

impl ForgeArgs {
    /// The `[report]` section of --agent-config, if given.
    fn agent_report(&self) -> Result<Option<ReportSection>> {
        let Some(path) = &self.agent_config else {
            return Ok(None);
        };
        let cannot = || format!("cannot read --agent-config {}", path.display());
        if std::fs::metadata(path).with_context(cannot)?.len() > 1 << 20 {
            bail!("--agent-config {} is larger than 1 MiB", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(cannot)?;
        Ok(Some(
            toml::from_str::<AgentToml>(&text)
                .with_context(|| format!("--agent-config {}: not an agent.toml", path.display()))?
                .report,
        ))
    }

    /// A forge client from these settings; errors say which setting is missing.
    pub fn client(&self) -> Result<ForgeClient> {
        let file = self.agent_report()?;
        let kind = match (self.forge.as_deref(), &file) {
            (Some("none"), _) => None,
            (Some(kind), _) => Some(kind.parse::<ForgeKind>()?),
            (None, Some(file)) => file.forge.0,
            (None, None) => {
                bail!("which forge do hosts report to? Give --forge github|gitea|forgejo|gitlab (or --agent-config)")
            }
        };
        let Some(kind) = kind else {
            bail!("the agents' forge is `none`: they post no statuses, so there is nothing to read");
        };
        // Flags win over the file; the file's defaults are the agent's.
        let repository = self
            .repository
            .as_deref()
            .or(file.as_ref().map(|f| f.repository.as_str()))
            .unwrap_or_default();
        let context = self
            .context
            .as_deref()
            .or(file.as_ref().map(|f| f.context.as_str()))
            .unwrap_or(DEFAULT_CONTEXT);
        let api_url = self
            .api_url
            .as_deref()
            .or(file.as_ref().and_then(|f| f.api_url.as_deref()));
        let settings = ForgeSettings::new(kind, api_url, repository, context)?;
        let file_token = file.as_ref().and_then(|f| f.token_file.as_ref());
        let token = match self.token_file.as_ref().or(file_token) {
            Some(path) => Token::from_file(path)?,
            None => match std::env::var(TOKEN_ENV) {
                Ok(t) => Token::new(&t).context(TOKEN_ENV)?,
                Err(_) => bail!(
                    "no forge token: give --token-file FILE or set {TOKEN_ENV} (a token that may read commit statuses)"
                ),
            },
        };
        Ok(ForgeClient::new(settings, token)?)
    }
}

/// Where hosts write their signed receipts, and the host keys that verify
/// them, for `status`, `wait` and `rollout`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReceiptArgs {
    /// Read the hosts' signed receipts from this bucket too, as the agents'
    /// report.receipts names it: s3://bucket/prefix?region=…&endpoint=…&profile=…
    /// [default: report.receipts of --agent-config]. Credentials from the
    /// AWS_* variables or the shared credentials file (profile=).
    #[arg(long, value_name = "S3_URL", env = "FERRY_RECEIPTS", hide_env_values = true)]
    pub receipts: Option<String>,
    /// The SSH host keys receipts are verified against: `<host> <key type>
    /// <base64 key>` lines, as ssh-keyscan prints them, one or more per host
    /// (required with receipts).
    #[arg(long, value_name = "FILE")]
    pub host_keys: Option<std::path::PathBuf>,
}

/// A bucket of receipts and the keys pinned for each host.
#[derive(Debug)]
pub struct ReceiptSource {
    pub reader: ferry_signer::receipt_bucket::Reader,
    pub keys: ferry_signer::receipt::HostKeys,
}

impl ReceiptArgs {
    /// The receipts to read, if any: from --receipts or the agents'
    /// report.receipts, with the host keys of --host-keys.
    pub fn source(&self, forge: &ForgeArgs) -> Result<Option<ReceiptSource>> {
        let from_file = match &self.receipts {
            Some(_) => None,
            None => forge.agent_report()?.and_then(|r| r.receipts),
        };
        let Some(url) = self.receipts.clone().or(from_file) else {
            if self.host_keys.is_some() {
                bail!("--host-keys verifies receipts, but no bucket is named: give --receipts s3://bucket/prefix?… (or an --agent-config with report.receipts)");
            }
            return Ok(None);
        };
        let Some(path) = &self.host_keys else {
            bail!(
                "receipts are read from {}, but no host keys verify them: give --host-keys FILE \
                 (`<host> <key type> <base64 key>` lines, e.g. from ssh-keyscan -t ed25519 HOST)",
                url.split('?').next().unwrap_or(&url)
            );
        };
        let keys = ferry_signer::receipt::HostKeys::load(path)?;
        let env = |k: &str| std::env::var(k).ok();
        let reader = ferry_signer::receipt_bucket::Reader::open(&url, &env)?;
        Ok(Some(ReceiptSource { reader, keys }))
    }
}

/// The context of the one status `wait` and `rollout` post for many hosts
/// with receipts on.
pub const FLEET_CONTEXT: &str = "ferry/fleet";

/// The fleet's aggregated status (`ferry/fleet`) on a release and its
/// source commit, posted when its state changes — pending, then success or
/// failure — so a release costs the forge a handful of writes whatever the
/// fleet's size. Posting never stops a wait or a rollout: a forge that
/// fails is asked again at the next change or read, and one that refuses
/// the token is told once and not asked again.
#[derive(Debug, Default)]
pub struct FleetStatus {
    posted: Option<(ferry_signer::CommitId, ferry_signer::forge::StatusState)>,
    refused: bool,
}

impl FleetStatus {
    /// Posts `(state, text)` on `release` and `source` unless this state
    /// was posted on `release` already.
    pub fn post(
        &mut self,
        client: &ForgeClient,
        release: &ferry_signer::CommitId,
        source: Option<&ferry_signer::CommitId>,
        (state, text): (ferry_signer::forge::StatusState, String),
    ) -> Result<()> {
        if self.refused || self.posted.as_ref() == Some(&(release.clone(), state)) {
            return Ok(());
        }
        for commit in std::iter::once(release).chain(source) {
            let status = ferry_signer::forge::NewStatus::new(commit.clone(), state, FLEET_CONTEXT, &text);
            match client.post(&status) {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    println!("cannot post {FLEET_CONTEXT} on {commit}: {e}; posted with the next read");
                    return Ok(());
                }
                Err(e) => {
                    println!(
                        "cannot post {FLEET_CONTEXT} on {commit}: {e}; not posted again by this run \
                         (give the token permission to write commit statuses)"
                    );
                    self.refused = true;
                    return Ok(());
                }
            }
        }
        self.posted = Some((release.clone(), state));
        Ok(())
    }
}

/// How long to leave a forge alone that rate-limits us until `until`: what
/// it asked, with jitter so that many runs do not come back in step.
pub fn rate_limit_pause(until: chrono::DateTime<chrono::Utc>) -> std::time::Duration {
    use rand_core::RngCore;
    let now = chrono::Utc::now();
    let until = ferry_signer::forge::with_jitter(until, now, rand_core::OsRng.next_u64());
    (until - now).to_std().unwrap_or_default()
}
