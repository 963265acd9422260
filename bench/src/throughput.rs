//! B7: the two checks a host runs most, per second on one core: a narinfo's
//! signature (parse, fingerprint, ed25519 against the pinned cache key, as
//! the preflight does for every path) and a commit's SSH signature
//! (`verify_commit_signature`: read the commit, split off `gpgsig`, parse the
//! SSHSIG, ed25519 over the payload, `allowed_signers`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_agent::io::cache::narinfo::{CachePublicKey, NarInfo};

use crate::closure::ClosureFixture;
use crate::fixtures::{self, ReleaseKey};
use crate::report::Row;

const DURATION: Duration = Duration::from_secs(2);

pub fn run(key: &ReleaseKey, repos: &Path, fx: &ClosureFixture) -> Result<Vec<Row>> {
    let mut narinfos = Vec::new();
    for entry in std::fs::read_dir(&fx.cache.dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            narinfos.push(std::fs::read(&path)?);
        }
    }
    let trusted: Vec<CachePublicKey> = vec![fx.cache.public_key.parse()?];
    let narinfo_rate = rate(|i| {
        let info = NarInfo::parse(&narinfos[i % narinfos.len()]).expect("cache narinfos parse");
        info.check_trust(&trusted).expect("cache narinfos are signed");
    });

    let repo_path = repos.join("verify.git");
    fixtures::bare_repo(&repo_path)?;
    let commit = key.publish(&repo_path, &fixtures::hosts(1, 4))?;
    let repo = git2::Repository::open_bare(&repo_path).context("verify.git")?;
    let commit_rate = rate(|_| {
        ferry_signer::verify_commit_signature(&repo, commit, &key.signers).expect("the release verifies");
    });
    eprintln!("  {narinfo_rate:.0} narinfo checks/s, {commit_rate:.0} commit verifications/s");
    Ok(vec![
        Row::report(
            "B7",
            &format!(
                "narinfo signature checks per second, one core ({} real narinfos)",
                narinfos.len()
            ),
            format!("{narinfo_rate:.0} /s"),
        ),
        Row::report(
            "B7",
            "commit signature verifications per second, one core",
            format!("{commit_rate:.0} /s"),
        ),
    ])
}

/// How many times per second `f` runs, over about [`DURATION`].
fn rate(mut f: impl FnMut(usize)) -> f64 {
    // Warm up, then count whole batches until the time is up.
    for i in 0..100 {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < DURATION {
        for _ in 0..100 {
            f(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}
