//! `ferry-signer mirror`: write the deploy branch as a static mirror (git's
//! "dumb HTTP" layout) into a directory that a web server, bucket or CDN
//! serves, for CI after every push to the deploy branch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_signer::mirror::{self, DirStore, Mirrored, S3Store, Store};

use super::open_repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The deploy repository (bare or not).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The deploy branch.
    #[arg(long, default_value = "deploy")]
    branch: String,
    /// The mirror: a directory served as https://…/deploy.git, or a bucket and key prefix, s3://bucket/deploy.git?region=…&endpoint=… (credentials as for Nix: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile). Earlier packs are kept.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    to: String,
}

pub fn run(args: Args) -> Result<()> {
    let repository = open_repo(&args.repo)?;
    let store: Box<dyn Store> = if args.to.starts_with("s3://") {
        Box::new(S3Store::open(&args.to, &|k| std::env::var(k).ok())?)
    } else {
        Box::new(DirStore(PathBuf::from(&args.to)))
    };
    let done = mirror::update(&repository, &args.branch, store.as_ref())
        .with_context(|| format!("mirroring {} to {}", args.branch, store.describe()))?;
    match done {
        Mirrored::UpToDate { tip } => println!("{} is up to date at {tip}", store.describe()),
        Mirrored::Added { tip, pack, objects } => println!(
            "{}: {} now at {tip}; added {pack} ({objects} objects)",
            store.describe(),
            args.branch
        ),
    }
    Ok(())
}
