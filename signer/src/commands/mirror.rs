//! `ferry-signer mirror`: write the deploy branch as a static mirror (git's
//! "dumb HTTP" layout) into a directory that a web server, bucket or CDN
//! serves, for CI after every push to the deploy branch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_signer::mirror::{self, Mirrored};

use super::open_repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The deploy repository (bare or not).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The deploy branch.
    #[arg(long, default_value = "deploy")]
    branch: String,
    /// The mirror: a directory served as https://…/deploy.git (created if missing; earlier packs are kept).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let repository = open_repo(&args.repo)?;
    let done = mirror::update(&repository, &args.branch, &args.to)
        .with_context(|| format!("mirroring {} to {}", args.branch, args.to.display()))?;
    match done {
        Mirrored::UpToDate { tip } => {
            println!("{} is up to date at {tip}", args.to.display())
        }
        Mirrored::Added { tip, pack, objects } => println!(
            "{}: {} now at {tip}; added {pack} ({objects} objects)",
            args.to.display(),
            args.branch
        ),
    }
    Ok(())
}
