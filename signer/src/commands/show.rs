//! `ferry-signer show`: print a release, as text or JSON, without verifying it.

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
    let commit = git::resolve_commit(&repository, &args.release.rev)?;
    let release = git::read_release(&repository, commit)?;
    if args.json {
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
