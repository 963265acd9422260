//! `ferry-signer verify`: the check an agent runs, from the command line.

use std::path::PathBuf;

use anyhow::Result;
use chrono::Utc;
use ferry_signer::{git, AllowedSigners, HostName};

use super::approve::approvals_lines;
use super::{open_repo, PolicyArgs, RevArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    release: RevArgs,
    /// Who may sign, in ssh-keygen's allowed_signers format (as hosts pin it).
    #[arg(long, value_name = "FILE")]
    allowed_signers: PathBuf,
    /// Check only the commit signature, with the outcome of
    /// `git -c gpg.ssh.allowedSignersFile=FILE verify-commit REV`; prints the principal.
    #[arg(long)]
    signature_only: bool,
    #[command(flatten)]
    policy: PolicyArgs,
}

pub fn run(args: Args) -> Result<()> {
    let signers = AllowedSigners::load(&args.allowed_signers)?;
    let repository = open_repo(&args.release.repo)?;
    if args.signature_only {
        let commit = git::resolve_commit(&repository, &args.release.rev)?;
        let (signer, _) = ferry_signer::verify_commit_signature(&repository, commit, &signers)?;
        // The principal alone on stdout, for scripts; the rest as git words it.
        println!("{}", signer.principal);
        eprintln!(
            "Good \"git\" signature for {} with {} key {} on commit {commit}",
            signer.principal, signer.key_type, signer.fingerprint
        );
        return Ok(());
    }
    let (policy, approver_signers) = args.policy.load(&signers)?;
    let tip = git::resolve_commit(&repository, &args.release.rev)?;
    let verified = ferry_signer::verify_tip(&repository, tip, &signers, &approver_signers, Utc::now())?;
    policy.may_release(&verified.release.signer)?;
    let tally = ferry_signer::approvals::tally(&policy, &verified.release.signer, &verified.approvals);
    let v = &verified.release;
    let names: Vec<&str> = v.release.hosts.keys().map(HostName::as_str).collect();
    let shown = if names.len() > 10 {
        format!("{} …", names[..10].join(" "))
    } else {
        names.join(" ")
    };
    println!(
        "{} {} serial {} signed by {} ({} {}), {} host(s): {}",
        if tally.is_met() { "ok" } else { "awaiting-approval" },
        v.commit,
        v.release.serial,
        v.signer.principal,
        v.signer.key_type,
        v.signer.fingerprint,
        names.len(),
        shown
    );
    print!("{}", approvals_lines(&tally));
    if !tally.is_met() {
        anyhow::bail!(
            "{}: hosts with this policy do not deploy it yet",
            tally.awaiting(v.release.serial)
        );
    }
    Ok(())
}
