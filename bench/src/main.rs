//! `ferry-bench`: Ferry's benchmarks (issue 6). Sets up real fixtures on
//! loopback, measures each figure and its baseline in the same run, and
//! prints a markdown table. It reports; it never fails on a missed target.
//! Run it through `bench/run`, which builds everything in release mode.
//!
//! # Layout
//! - [`fixtures`]: git daemon, HTTP binary cache, Nix closures, release key.
//! - [`idle`]: B1–B3, the running daemon's no-change polls; B12, the same from a static mirror.
//! - [`closure`]: B4, new release → closure present vs `nix-store -r`.
//! - [`history`]: B5, long branch and large fleet vs one commit, one host.
//! - [`signing`]: B6, `ferry-signer release` vs `git commit -S`.
//! - [`throughput`]: B7, signature checks per second.
//! - [`fleet`]: B8–B9, `status` of 10,000 hosts vs `curl`; a rollout's
//!   releases as the git server packs them, vs one release.
//! - [`private_cache`]: B10, B4 from a cache behind HTTP Basic auth (nginx)
//!   vs `nix-store -r` with a `netrc-file`.
//! - [`approvals`]: B11, verifying a tip with two approvals vs the release alone.
//! - [`mirror`]: B13–B14, a rollout of 10,000 hosts from a static mirror
//!   behind a CDN, as the origin pays it; one host's fetch vs `git fetch`.
//! - [`receipts`]: B15–B16, reporting from signed host receipts in a bucket
//!   (s3rver): `status` of the fleet vs `curl --aws-sigv4`, requests per
//!   host, forge writes per release at each fleet size.
//! - [`report`]: the table, statistics, the machine line.

mod approvals;
mod closure;
mod cpu;
mod fixtures;
mod fleet;
mod history;
mod idle;
mod mirror;
mod private_cache;
mod receipts;
mod report;
mod signing;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

struct Args {
    agent: PathBuf,
    signer: PathBuf,
    work: PathBuf,
    only: Vec<String>,
    polls: usize,
    runs: usize,
    /// The fleet sizes of B15–B16.
    fleet: Vec<usize>,
}

const USAGE: &str =
    "usage: ferry-bench --agent PATH --signer PATH --work DIR [--only B1,B4,…] [--polls N] [--runs N] [--fleet 10,1000,10000]";

fn parse_args() -> Result<Args> {
    let mut agent = None;
    let mut signer = None;
    let mut work = None;
    let mut only = Vec::new();
    let mut polls = 100;
    let mut runs = 0;
    let mut fleet = vec![10, 1_000, 10_000];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--agent" => agent = Some(PathBuf::from(value()?)),
            "--signer" => signer = Some(PathBuf::from(value()?)),
            "--work" => work = Some(PathBuf::from(value()?)),
            "--only" => only = value()?.split(',').map(|s| s.trim().to_uppercase()).collect(),
            "--polls" => polls = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            "--fleet" => {
                fleet = value()?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--fleet takes fleet sizes, e.g. 10,100")?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(Args {
        agent: agent.context(USAGE)?,
        signer: signer.context(USAGE)?,
        work: work.context(USAGE)?,
        only,
        polls,
        runs,
        fleet,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let wanted = |id: &str| args.only.is_empty() || args.only.iter().any(|o| o == id);
    let runs = |default: usize| if args.runs > 0 { args.runs } else { default };
    let work = &args.work;
    // Nix's narinfo disk cache lives here, so runs start without it and the
    // user's own cache is left alone.
    std::env::set_var("XDG_CACHE_HOME", work.join("xdg-cache"));
    // The agent's libgit2 settings (its writes synced, no second hash of
    // what it reads), so the rows that call its library pay what it pays.
    ferry_agent::io::git::source::set_libgit2_options(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(60),
    )?;

    let repos = work.join("repos");
    std::fs::create_dir_all(&repos)?;
    let key = fixtures::ReleaseKey::new(work)?;
    let git = fixtures::git_daemon(&repos)?;
    let mut rows = Vec::new();

    let idle_params = idle::Params {
        agent: &args.agent,
        polls: args.polls,
    };
    if wanted("B1") || wanted("B2") || wanted("B3") {
        eprintln!(
            "B1–B3: the daemon's no-change polls ({} polls, 1 s apart)",
            args.polls
        );
        rows.extend(idle::run(work, &key, &repos, git.port, &idle_params)?);
    }
    if wanted("B12") {
        eprintln!(
            "B12: the daemon's no-change polls of a static mirror ({} polls, 1 s apart)",
            args.polls
        );
        rows.extend(idle::run_mirror(work, &key, &repos, git.port, &idle_params)?);
    }
    let closure = if wanted("B4") || wanted("B7") || wanted("B10") {
        eprintln!("B4/B7/B10: building a 2,001-path closure and its signed cache");
        Some(closure::ClosureFixture::build(work, 20, 100)?)
    } else {
        None
    };
    if let (true, Some(fx)) = (wanted("B4"), &closure) {
        eprintln!("B4: new release → closure present");
        let p = closure::Params { runs: runs(3) };
        rows.extend(closure::run(work, &key, &repos, git.port, fx, &p)?);
    }
    if let (true, Some(fx)) = (wanted("B10"), &closure) {
        eprintln!("B10: new release → closure present, from a private cache");
        let p = private_cache::Params { runs: runs(3) };
        for guard in [
            private_cache::Guard::Basic,
            private_cache::Guard::Bearer,
            private_cache::Guard::S3,
        ] {
            match guard {
                private_cache::Guard::Basic => {}
                private_cache::Guard::Bearer => eprintln!("B10′: the same behind a bearer token"),
                private_cache::Guard::S3 => eprintln!("B10″: the same from an s3:// bucket"),
            }
            rows.extend(private_cache::run(work, &key, &repos, git.port, fx, &p, guard)?);
        }
    }
    if wanted("B5") {
        eprintln!("B5: 10,000 commits and 10,000 hosts (and 50,000) vs 1 and 1");
        let p = history::Params {
            commits: 10_000,
            hosts: 10_000,
            runs: runs(15),
        };
        rows.extend(history::run(work, &key, &repos, git.port, &p)?);
    }
    if wanted("B6") {
        eprintln!("B6: ferry-signer release of 10,000 hosts vs git commit -S");
        let p = signing::Params {
            signer: &args.signer,
            hosts: 10_000,
            runs: runs(15),
        };
        rows.extend(signing::run(work, &key, &p)?);
    }
    if let (true, Some(fx)) = (wanted("B7"), &closure) {
        eprintln!("B7: signature checks per second");
        rows.extend(throughput::run(&key, &repos, fx)?);
    }
    if wanted("B8") || wanted("B9") {
        eprintln!("B8–B9: the fleet at 10,000 hosts: status, and a rollout's releases");
        let p = fleet::Params {
            signer: &args.signer,
            hosts: 10_000,
            runs: runs(9),
        };
        rows.extend(fleet::run(work, &key, &repos, &p)?);
    }
    if wanted("B13") || wanted("B14") {
        eprintln!("B13–B14: a rollout of 10,000 hosts from a static mirror behind a CDN");
        let p = mirror::Params {
            hosts: 10_000,
            runs: runs(9),
            clients: 8,
        };
        rows.extend(mirror::run(work, &key, &repos, git.port, &p)?);
    }
    if wanted("B11") {
        eprintln!("B11: verifying a tip with approvals vs the release alone");
        let p = approvals::Params {
            hosts: 10_000,
            runs: runs(15),
        };
        rows.extend(approvals::run(work, &key, &p)?);
    }
    if wanted("B15") || wanted("B16") {
        eprintln!(
            "B15–B16: reporting from signed receipts in a bucket, fleets of {:?}",
            args.fleet
        );
        let p = receipts::Params {
            signer: &args.signer,
            sizes: args.fleet.clone(),
            runs: runs(5),
        };
        rows.extend(receipts::run(work, &key, &repos, &p)?);
    }
    if let Some(fx) = &closure {
        // Leave no fixture paths behind in the store.
        fx.evict()?;
    }

    // The published table, beside today's (bench/run runs from the repository).
    let before = std::fs::read_to_string("docs/performance.md")
        .map(|doc| report::Previous::parse(&doc))
        .unwrap_or_default();
    println!("{}", report::table(&rows, &before));
    println!("Machine: {}", report::machine());
    Ok(())
}
