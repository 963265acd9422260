//! `ferry-signer show`: print a release and the approvals on top of it, as
//! text or JSON, without verifying the release (`verify` does). Approvals
//! are listed by who signed them: the principal, when the approvers'
//! `allowed_signers` is given, else the signing key's fingerprint — never
//! the committer name, which anyone can write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_signer::sshsig::SshSignature;
use ferry_signer::{git, AllowedSigners, Release};

use super::{open_repo, RevArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    release: RevArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// allowed_signers file of the approvers' keys: name each approval's
    /// principal (and say which do not verify).
    #[arg(long, value_name = "FILE")]
    approver_signers: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let repository = open_repo(&args.release.repo)?;
    let tip = git::resolve_commit(&repository, &args.release.rev)?;
    let chain = ferry_signer::approvals::chain(&repository, tip)?;
    let commit = chain.release;
    let release = git::read_release(&repository, commit)?;
    let signers = args
        .approver_signers
        .as_deref()
        .map(AllowedSigners::load)
        .transpose()
        .context("--approver-signers")?;
    let approvals = chain
        .approvals
        .iter()
        .map(|&oid| ApprovalJson::read(&repository, oid, signers.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        let mut json = ReleaseJson::new(&commit.to_string(), &release);
        json.approvals = approvals;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("commit {commit}");
        print!("{}", release.to_toml());
        for a in &approvals {
            println!("# approval {} {} at {}", a.commit, a.signed_by(), a.date);
        }
    }
    Ok(())
}

/// An approval commit as `show` lists it: who signed it, as far as `show`
/// can tell.
#[derive(serde::Serialize)]
struct ApprovalJson {
    commit: String,
    /// The principal its key is pinned for, when verified.
    principal: Option<String>,
    /// `SHA256:…` of the key that signed it, when it carries a signature.
    key: Option<String>,
    /// Verified against `--approver-signers`.
    verified: bool,
    /// Why it does not verify, or why it was not checked.
    problem: Option<String>,
    date: String,
}

impl ApprovalJson {
    fn read(repo: &git2::Repository, oid: git2::Oid, signers: Option<&AllowedSigners>) -> Result<Self> {
        let c = repo.find_commit(oid)?;
        let at = chrono::DateTime::from_timestamp(c.committer().when().seconds(), 0).unwrap_or_default();
        let mut json = Self {
            commit: oid.to_string(),
            principal: None,
            key: None,
            verified: false,
            problem: None,
            date: at.to_rfc3339(),
        };
        let signature = git::signed_commit(repo, oid)?
            .map(|s| SshSignature::from_armor(&s.signature).map(|sig| sig.fingerprint()));
        match signature {
            None => json.problem = Some("unsigned".into()),
            Some(Err(e)) => json.problem = Some(e.to_string()),
            Some(Ok(fingerprint)) => json.key = Some(fingerprint),
        }
        match (signers, &json.problem) {
            (Some(signers), None) => match ferry_signer::verify_commit_signature(repo, oid, signers) {
                Ok((signer, _)) => {
                    json.principal = Some(signer.principal);
                    json.verified = true;
                }
                Err(e) => json.problem = Some(e.to_string()),
            },
            (None, None) => {
                json.problem = Some("not verified: give --approver-signers to name the principal".into())
            }
            (_, Some(_)) => {}
        }
        Ok(json)
    }

    /// "by alice (key SHA256:…)" or what is known instead.
    fn signed_by(&self) -> String {
        let key = self.key.as_deref().map(|k| format!("key {k}"));
        match (&self.principal, key, &self.problem) {
            (Some(p), Some(k), _) => format!("by {p} ({k})"),
            (_, Some(k), Some(problem)) => format!("signed with {k} ({problem})"),
            (_, _, problem) => format!("({})", problem.as_deref().unwrap_or("unsigned")),
        }
    }
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
    approvals: Vec<ApprovalJson>,
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
            approvals: Vec::new(),
        }
    }
}
