//! `ferry-signer`: make, verify and inspect Ferry releases. A thin layer over
//! the `ferry_signer` library: parse arguments, call the library, print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use age::secrecy::SecretString;
use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::{Parser, Subcommand};
use ferry_signer::keys::{self, FixedPassphrase, KeyError, PassphraseSource, Protection, SigningKey, Unlock};
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::ssh_agent::AgentKey;
use ferry_signer::sshsig::GitSigner;
use ferry_signer::{git, AllowedSigners, HostEntry, HostName, Release, StorePath};

const PASSPHRASE_ENV: &str = "FERRY_SIGNER_PASSPHRASE";

#[derive(Parser)]
#[command(
    name = "ferry-signer",
    version,
    about = "Make, verify and inspect signed Ferry releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a release signing key (ed25519), encrypted with age.
    Keygen {
        /// Where to write the encrypted private key; the public key goes to OUT.pub.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        /// Comment stored in the key.
        #[arg(long, default_value = "ferry-release")]
        comment: String,
        /// Encrypt to this age recipient (age1…); repeatable. Without it the key
        /// is encrypted under a passphrase from FERRY_SIGNER_PASSPHRASE or the terminal.
        #[arg(long = "recipient", value_name = "AGE_RECIPIENT")]
        recipients: Vec<String>,
        /// Principal for the printed allowed_signers line.
        #[arg(long, default_value = "ferry-release")]
        principal: String,
    },
    /// Create, sign and record the next release on the deploy branch.
    Release {
        /// The deploy repository (bare or not); its work tree is never touched.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The deploy branch to record the release on.
        #[arg(long, default_value = "deploy")]
        branch: String,
        /// Signing key: from `ferry-signer keygen`, or a plain `ssh-keygen -t ed25519` key.
        /// With --ssh-agent: the public key (KEY.pub) of the agent key to sign with.
        #[arg(long, value_name = "KEY", required_unless_present = "ssh_agent")]
        key: Option<PathBuf>,
        /// Sign with a key held by ssh-agent (SSH_AUTH_SOCK), e.g. a hardware key:
        /// the one named by --key, or the agent's only key.
        #[arg(long)]
        ssh_agent: bool,
        /// age identity file that decrypts KEY; repeatable.
        #[arg(
            long = "identity",
            value_name = "AGE_IDENTITY_FILE",
            conflicts_with = "ssh_agent"
        )]
        identities: Vec<PathBuf>,
        /// A host and the toplevel it should run; repeatable.
        #[arg(long = "host", value_name = "NAME=TOPLEVEL")]
        hosts: Vec<String>,
        /// JSON object of hosts, as `nix eval --json` prints it:
        /// {"web1": "/nix/store/…"} or {"web1": {"toplevel": "/nix/store/…", "action": "boot"}}.
        #[arg(long, value_name = "FILE.json")]
        hosts_file: Option<PathBuf>,
        /// Drop hosts of the previous release that are not named here.
        #[arg(long)]
        replace_hosts: bool,
        /// The main-branch commit these systems were built from.
        #[arg(long, value_name = "SHA")]
        source: Option<String>,
        /// Agents refuse the release after this long, e.g. 30d (freeze protection).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<humantime::Duration>,
        /// Commit message (default: a summary of what changed).
        #[arg(long)]
        message: Option<String>,
        /// Push the branch to this remote afterwards (with the git CLI, so its credential setup applies).
        #[arg(long, value_name = "REMOTE")]
        push: Option<String>,
    },
    /// Verify a release: signature, signer in allowed_signers, release.toml, expiry.
    Verify {
        /// The deploy repository (bare or not).
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Commit, branch or tag to verify.
        #[arg(long, default_value = "deploy")]
        rev: String,
        /// Who may sign, in ssh-keygen's allowed_signers format (as hosts pin it).
        #[arg(long, value_name = "FILE")]
        allowed_signers: PathBuf,
        /// Check only the commit signature, with the outcome of
        /// `git -c gpg.ssh.allowedSignersFile=FILE verify-commit REV`; prints the principal.
        #[arg(long)]
        signature_only: bool,
    },
    /// Print a release (without verifying it).
    Show {
        /// The deploy repository (bare or not).
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// Commit, branch or tag to show.
        #[arg(long, default_value = "deploy")]
        rev: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Library errors already name their cause in their message; print
            // a cause on its own line only when it adds something.
            let mut shown = err.to_string();
            eprintln!("ferry-signer: {shown}");
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen {
            out,
            comment,
            recipients,
            principal,
        } => keygen(&out, &comment, &recipients, &principal),
        Command::Release {
            repo,
            branch,
            key,
            ssh_agent,
            identities,
            hosts,
            hosts_file,
            replace_hosts,
            source,
            expires_in,
            message,
            push,
        } => {
            let mut changes = ReleaseChanges {
                hosts: BTreeMap::new(),
                replace_hosts,
                source: source.map(|s| s.parse()).transpose().context("--source")?,
                expires_in: expires_in
                    .map(|d| chrono::Duration::from_std(d.into()))
                    .transpose()
                    .context("--expires-in is too long")?,
            };
            if let Some(file) = hosts_file {
                changes.hosts = read_hosts_file(&file)?;
            }
            for spec in &hosts {
                let (name, entry) = parse_host_arg(spec)?;
                changes.hosts.insert(name, entry);
            }
            let repository = open_repo(&repo)?;
            // Unlock (or find) the key before anything is written.
            let signer: Box<dyn GitSigner> = match (ssh_agent, key) {
                (true, key) => Box::new(AgentKey::from_env(key.as_deref())?),
                (false, Some(key)) => Box::new(SigningKey::load(&key, &unlock(identities))?),
                (false, None) => bail!("name the signing key with --key KEY, or use --ssh-agent"),
            };
            let published = publish::publish(
                &repository,
                &branch,
                signer.as_ref(),
                &changes,
                message.as_deref(),
                Utc::now(),
            )?;
            println!("{}", published.commit);
            if let Some(remote) = push {
                push_branch(&repo, &remote, &branch, published.commit)?;
            }
            Ok(())
        }
        Command::Verify {
            repo,
            rev,
            allowed_signers,
            signature_only,
        } => {
            let signers = AllowedSigners::load(&allowed_signers)?;
            let repository = open_repo(&repo)?;
            if signature_only {
                let commit = git::resolve_commit(&repository, &rev)?;
                let (signer, _) = ferry_signer::verify_commit_signature(&repository, commit, &signers)?;
                // The principal alone on stdout, for scripts; the rest as git words it.
                println!("{}", signer.principal);
                eprintln!(
                    "Good \"git\" signature for {} with {} key {} on commit {commit}",
                    signer.principal, signer.key_type, signer.fingerprint
                );
                return Ok(());
            }
            let v = ferry_signer::verify_release(&repository, &rev, &signers, Utc::now())?;
            let names: Vec<&str> = v.release.hosts.keys().map(HostName::as_str).collect();
            let shown = if names.len() > 10 {
                format!("{} …", names[..10].join(" "))
            } else {
                names.join(" ")
            };
            println!(
                "ok {} serial {} signed by {} ({} {}), {} host(s): {}",
                v.commit,
                v.release.serial,
                v.signer.principal,
                v.signer.key_type,
                v.signer.fingerprint,
                names.len(),
                shown
            );
            Ok(())
        }
        Command::Show { repo, rev, json } => {
            let repository = open_repo(&repo)?;
            let commit = git::resolve_commit(&repository, &rev)?;
            let release = git::read_release(&repository, commit)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ReleaseJson::new(&commit.to_string(), &release))?
                );
            } else {
                println!("commit {commit}");
                print!("{}", release.to_toml());
            }
            Ok(())
        }
    }
}

fn open_repo(path: &Path) -> Result<git2::Repository> {
    git2::Repository::open(path).with_context(|| format!("{} is not a git repository", path.display()))
}

fn keygen(out: &Path, comment: &str, recipients: &[String], principal: &str) -> Result<()> {
    let protection = if recipients.is_empty() {
        Protection::Passphrase(new_passphrase()?)
    } else {
        Protection::Recipients(
            recipients
                .iter()
                .map(|r| keys::parse_recipient(r))
                .collect::<Result<_, _>>()?,
        )
    };
    let key = SigningKey::generate(comment)?;
    let pub_path = key.write_new(out, &protection)?;
    eprintln!(
        "wrote {} (age-encrypted) and {}",
        out.display(),
        pub_path.display()
    );
    eprintln!("allowed_signers line for your hosts:");
    println!("{}", key.allowed_signers_line(principal));
    Ok(())
}

fn new_passphrase() -> Result<SecretString> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        if p.is_empty() {
            bail!("{PASSPHRASE_ENV} is empty");
        }
        return Ok(p.into());
    }
    let first =
        rpassword::prompt_password("passphrase for the new key: ").map_err(|_| KeyError::NoPassphrase)?;
    let second = rpassword::prompt_password("again: ").map_err(|_| KeyError::NoPassphrase)?;
    if first != second {
        bail!("the passphrases differ; nothing was written");
    }
    if first.is_empty() {
        bail!("an empty passphrase protects nothing; nothing was written");
    }
    Ok(first.into())
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

fn parse_host_arg(spec: &str) -> Result<(HostName, HostEntry)> {
    let (name, toplevel) = spec
        .split_once('=')
        .with_context(|| format!("--host `{spec}`: expected NAME=TOPLEVEL"))?;
    let name: HostName = name.parse().with_context(|| format!("--host `{spec}`"))?;
    let toplevel: StorePath = toplevel.parse().with_context(|| format!("--host `{spec}`"))?;
    Ok((
        name,
        HostEntry {
            toplevel,
            action: Default::default(),
        },
    ))
}

/// One host in `--hosts-file`: a bare toplevel, or an object with an action.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum HostJson {
    Toplevel(String),
    Entry {
        toplevel: String,
        #[serde(default)]
        action: Option<String>,
    },
}

fn read_hosts_file(path: &Path) -> Result<BTreeMap<HostName, HostEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --hosts-file {}", path.display()))?;
    let raw: BTreeMap<String, HostJson> = serde_json::from_str(&text).with_context(|| {
        format!(
            "--hosts-file {}: expected a JSON object like {{\"web1\": \"/nix/store/…\"}}",
            path.display()
        )
    })?;
    // Collected rather than inserted one by one: the names arrive sorted, so
    // the map is built in one pass.
    raw.into_iter()
        .map(|(name, value)| {
            let ctx = || format!("--hosts-file {}: host `{name}`", path.display());
            let host: HostName = name.parse().with_context(ctx)?;
            let (toplevel, action) = match value {
                HostJson::Toplevel(t) => (t, None),
                HostJson::Entry { toplevel, action } => (toplevel, action),
            };
            let entry = HostEntry {
                toplevel: toplevel.parse().with_context(ctx)?,
                action: action
                    .map(|a| a.parse())
                    .transpose()
                    .with_context(ctx)?
                    .unwrap_or_default(),
            };
            Ok((host, entry))
        })
        .collect()
}

fn push_branch(repo: &Path, remote: &str, branch: &str, commit: git2::Oid) -> Result<()> {
    let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["push", "--quiet", remote, &refspec])
        .status()
        .context("cannot run git to push")?;
    if !status.success() {
        bail!(
            "release {commit} was recorded on {branch} locally, but `git push {remote} {refspec}` failed: \
             if the remote moved on, fetch it and make the release again; otherwise push again"
        );
    }
    Ok(())
}

/// `show --json` output; a wire format of its own, not the domain type.
#[derive(serde::Serialize)]
struct ReleaseJson {
    commit: String,
    format: u32,
    serial: u64,
    created: String,
    expires: Option<String>,
    source: Option<String>,
    hosts: BTreeMap<String, HostOutJson>,
}

#[derive(serde::Serialize)]
struct HostOutJson {
    toplevel: String,
    action: &'static str,
}

impl ReleaseJson {
    fn new(commit: &str, r: &Release) -> Self {
        Self {
            commit: commit.to_owned(),
            format: ferry_signer::release::FORMAT,
            serial: r.serial,
            created: r.created.to_rfc3339(),
            expires: r.expires.map(|e| e.to_rfc3339()),
            source: r.source.as_ref().map(|s| s.to_string()),
            hosts: r
                .hosts
                .iter()
                .map(|(n, e)| {
                    (
                        n.to_string(),
                        HostOutJson {
                            toplevel: e.toplevel.to_string(),
                            action: e.action.as_str(),
                        },
                    )
                })
                .collect(),
        }
    }
}
