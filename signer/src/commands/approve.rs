//! `ferry-signer approve`: a person approves the release at the deploy
//! branch's tip. The release and the approvals already on it are verified
//! first; what it changes is shown (hosts whose toplevel changes, serial,
//! source commit, who released it); a terminal is asked for confirmation
//! (`--yes` for scripts); then an approval commit (the tip's tree, signed
//! with the person's key or through ssh-agent) is recorded and pushed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use ferry_signer::approvals;
use ferry_signer::sshsig::GIT_NAMESPACE;
use ferry_signer::{git, publish, AllowedSigners, Release, VerifiedTip};

use super::release::push_branch;
use super::{open_repo, KeyArgs, PolicyArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The deploy repository (bare or not); its work tree is never touched.
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The deploy branch whose tip is approved.
    #[arg(long, default_value = "deploy")]
    branch: String,
    /// Who may sign releases, in ssh-keygen's allowed_signers format (as hosts pin it).
    #[arg(long, value_name = "FILE")]
    allowed_signers: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Approve without asking (for scripts); without it, a terminal is asked.
    #[arg(long)]
    yes: bool,
    /// Commit message [default: approve release SERIAL].
    #[arg(long)]
    message: Option<String>,
    /// Push the branch to this remote afterwards (with the git CLI, so its credential setup applies).
    #[arg(long, value_name = "REMOTE")]
    push: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let signers = AllowedSigners::load(&args.allowed_signers)?;
    let (policy, approver_signers) = args.policy.load(&signers)?;
    let repository = open_repo(&args.repo)?;
    let Some(tip) = git::branch_tip(&repository, &args.branch)? else {
        bail!(
            "{} has no branch `{}`: nothing to approve",
            args.repo.display(),
            args.branch
        );
    };
    let verified = ferry_signer::verify_tip(&repository, tip, &signers, &approver_signers, Utc::now())
        .context("the tip does not verify, so it cannot be approved")?;
    let previous = previous_release(&repository, &verified)?;
    eprint!("{}", describe(&verified, previous.as_ref(), &policy));

    let key = args.key.signer()?;
    let me = approver_signers
        .authorize(key.public_key().key_data(), GIT_NAMESPACE, Utc::now(), None)
        .map_err(|e| anyhow::anyhow!("hosts would refuse this approval: {e}"))?
        .principal;
    let signed = &verified.release.signer;
    if me == signed.principal
        || key.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string() == signed.fingerprint
    {
        bail!(
            "{me} signed release {} itself: its own approval would not count; another person must approve",
            verified.release.release.serial
        );
    }
    if verified.approvals.iter().any(|a| a.signer.principal == me) {
        bail!(
            "{me} has already approved release {}",
            verified.release.release.serial
        );
    }
    let serial = verified.release.release.serial;
    if !args.yes {
        confirm(&format!("approve release {serial} as {me}? [y/N] "))?;
    }
    let message = args.message.unwrap_or_else(|| {
        format!(
            "approve release {serial}\n\nRelease: {}\nApproved-by: {me}\n",
            verified.release.commit
        )
    });
    let commit = publish::approve(&repository, &args.branch, tip, key.as_ref(), &message)?;
    println!("{commit}");
    if let Some(remote) = &args.push {
        push_branch(&args.repo, remote, &args.branch, commit).map_err(|_| {
            anyhow::anyhow!(
                "approval {commit} was recorded on {} locally, but pushing it to {remote} failed: \
                 if the remote moved on (another approval or a new release), fetch the branch and approve again; \
                 otherwise push again",
                args.branch
            )
        })?;
    }
    Ok(())
}

/// The release before the one approved, if any: what its hosts ran.
fn previous_release(repo: &git2::Repository, verified: &VerifiedTip) -> Result<Option<Release>> {
    let oid = git2::Oid::from_str(verified.release.commit.as_str())?;
    let commit = repo.find_commit(oid)?;
    if commit.parent_count() == 0 {
        return Ok(None);
    }
    let below = approvals::chain(repo, commit.parent_id(0)?)?;
    Ok(git::read_release(repo, below.release).ok())
}

/// What is being approved, in a few lines.
fn describe(v: &VerifiedTip, previous: Option<&Release>, policy: &ferry_signer::ApprovalPolicy) -> String {
    let r = &v.release.release;
    let mut out = format!(
        "release {} ({})\n  released by {} ({} {}) at {}\n",
        r.serial,
        v.release.commit,
        v.release.signer.principal,
        v.release.signer.key_type,
        v.release.signer.fingerprint,
        v.release.committed_at.format("%Y-%m-%d %H:%M UTC"),
    );
    if let Some(source) = &r.source {
        out.push_str(&format!("  source commit {source}\n"));
    }
    let mut changed = 0;
    for (host, entry) in &r.hosts {
        let before = previous.and_then(|p| p.hosts.get(host));
        if before == Some(entry) {
            continue;
        }
        changed += 1;
        let old = before.map_or("(new host)".to_owned(), |b| b.toplevel.to_string());
        out.push_str(&format!(
            "  {host}: {old} → {} ({})\n",
            entry.toplevel, entry.action
        ));
    }
    for host in previous.iter().flat_map(|p| p.hosts.keys()) {
        if !r.hosts.contains_key(host) {
            changed += 1;
            out.push_str(&format!("  {host}: removed\n"));
        }
    }
    if changed == 0 {
        out.push_str("  no host's toplevel changes\n");
    }
    let tally = approvals::tally(policy, &v.release.signer, &v.approvals);
    out.push_str(&approvals_lines(&tally));
    out
}

/// The approvals of a release as `verify` and `approve` print them.
pub fn approvals_lines(tally: &ferry_signer::Tally) -> String {
    let mut out = String::new();
    if !tally.counted.is_empty() {
        out.push_str(&format!("  approved by {}\n", tally.counted.join(", ")));
    }
    for (a, why) in &tally.ignored {
        if tally.required == 0 && *why == approvals::NotCounted::NotAnApprover {
            // No policy given: nobody is an approver, so just list them.
            out.push_str(&format!("  approval {} by {}\n", a.commit, a.signer.principal));
            continue;
        }
        out.push_str(&format!(
            "  approval {} by {} does not count: {}\n",
            a.commit,
            a.signer.principal,
            why.describe()
        ));
    }
    if tally.required > 0 {
        out.push_str(&format!(
            "  {} of {} required approval(s)\n",
            tally.counted.len().min(tally.required),
            tally.required
        ));
    }
    out
}

/// Asks on the terminal; anything but yes refuses.
fn confirm(question: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("not approved: stdin is not a terminal to ask on; read the release above and pass --yes to approve it");
    }
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not approved");
    }
    Ok(())
}
