//! `ferry-signer show`: print a release and the approvals on top of it, as
//! text or JSON, without verifying either (`verify` does).

use std::collections::BTreeMap;

use anyhow::Result;
use ferry_signer::{git, Release};

use super::{open_repo, RevArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    release: RevArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let repository = open_repo(&args.release.repo)?;
    let tip = git::resolve_commit(&repository, &args.release.rev)?;
    let chain = ferry_signer::approvals::chain(&repository, tip)?;
    let commit = chain.release;
    let release = git::read_release(&repository, commit)?;
    let approvals = chain
        .approvals
        .iter()
        .map(|&oid| ApprovalJson::read(&repository, oid))
        .collect::<Result<Vec<_>>>()?;
    if args.json {
        let mut json = ReleaseJson::new(&commit.to_string(), &release);
        json.approvals = approvals;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("commit {commit}");
        print!("{}", release.to_toml());
        for a in &approvals {
            println!(
                "# approval {} by {} at {} (unverified: ferry-signer verify checks it)",
                a.commit, a.committer, a.date
            );
        }
    }
    Ok(())
}

/// An approval commit as `show` lists it: not verified, so no principal.
#[derive(serde::Serialize)]
struct ApprovalJson {
    commit: String,
    committer: String,
    date: String,
}

impl ApprovalJson {
    fn read(repo: &git2::Repository, oid: git2::Oid) -> Result<Self> {
        let c = repo.find_commit(oid)?;
        let who = c.committer();
        let at = chrono::DateTime::from_timestamp(who.when().seconds(), 0).unwrap_or_default();
        Ok(Self {
            commit: oid.to_string(),
            committer: format!(
                "{} <{}>",
                String::from_utf8_lossy(who.name_bytes()),
                String::from_utf8_lossy(who.email_bytes())
            ),
            date: at.to_rfc3339(),
        })
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
