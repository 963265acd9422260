//! `ferry-signer release`: create, sign and record the next release on the
//! deploy branch, and optionally push it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::{hosts_file, HostEntry, HostName, StorePath};

use super::{open_repo, KeyArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The deploy repository (bare or not); its work tree is never touched.
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The deploy branch to record the release on.
    #[arg(long, default_value = "deploy")]
    branch: String,
    #[command(flatten)]
    key: KeyArgs,
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
}

pub fn run(args: Args) -> Result<()> {
    let mut changes = ReleaseChanges {
        hosts: BTreeMap::new(),
        replace_hosts: args.replace_hosts,
        source: parse_source(args.source.as_deref())?,
        expires_in: expires_in(args.expires_in)?,
    };
    if let Some(file) = &args.hosts_file {
        changes.hosts = hosts_file::read(file).context("--hosts-file")?;
    }
    for spec in &args.hosts {
        let (name, entry) = parse_host_arg(spec)?;
        changes.hosts.insert(name, entry);
    }
    let repository = open_repo(&args.repo)?;
    let signer = args.key.signer()?;
    let published = publish::publish(
        &repository,
        &args.branch,
        signer.as_ref(),
        &changes,
        args.message.as_deref(),
        Utc::now(),
    )?;
    println!("{}", published.commit);
    if let Some(remote) = &args.push {
        push_branch(&args.repo, remote, &args.branch, published.commit)?;
    }
    Ok(())
}

/// `--source`, validated.
pub fn parse_source(source: Option<&str>) -> Result<Option<ferry_signer::CommitId>> {
    source.map(|s| s.parse()).transpose().context("--source")
}

/// `--expires-in`, as the release model takes it.
pub fn expires_in(d: Option<humantime::Duration>) -> Result<Option<chrono::Duration>> {
    d.map(|d| chrono::Duration::from_std(d.into()))
        .transpose()
        .context("--expires-in is too long")
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

/// Pushes the branch with the git CLI, so its credential setup applies.
pub fn push_branch(repo: &Path, remote: &str, branch: &str, commit: git2::Oid) -> Result<()> {
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
