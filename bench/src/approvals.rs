//! B11: the two-person rule's cost on the host. Verifying a tip that carries
//! two approvals on top of a fleet-wide release (each approval's signature,
//! then the release) against verifying the release alone, in the same
//! repository and run, through the library the agent calls.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use chrono::Utc;
use ferry_signer::keys::SigningKey;
use ferry_signer::AllowedSigners;

use crate::fixtures::{self, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, median, spread, Row};

pub struct Params {
    pub hosts: usize,
    pub runs: usize,
}

pub fn run(work: &Path, key: &ReleaseKey, p: &Params) -> Result<Vec<Row>> {
    let repo_path = work.join("approvals.git");
    fixtures::bare_repo(&repo_path)?;
    let release = key.publish(&repo_path, &fixtures::hosts(p.hosts, 11))?;
    let repo = git2::Repository::open_bare(&repo_path)?;
    let mut lines = std::fs::read_to_string(&key.allowed_signers_file)?;
    let mut tip = release;
    for name in ["alice", "bob"] {
        let approver = SigningKey::generate(name)?;
        lines.push_str(&format!("{}\n", approver.allowed_signers_line(name)));
        tip = ferry_signer::publish::approve(&repo, BRANCH, tip, &approver, "approve")?;
    }
    let signers = AllowedSigners::parse(&lines)?;

    let mut alone = Vec::new();
    let mut approved = Vec::new();
    for _ in 0..p.runs {
        let start = Instant::now();
        ferry_signer::verify::verify_release_commit(&repo, release, &signers, Utc::now())?;
        alone.push(start.elapsed());
        let start = Instant::now();
        let v = ferry_signer::verify_tip(&repo, tip, &signers, &signers, Utc::now())?;
        approved.push(start.elapsed());
        anyhow::ensure!(v.approvals.len() == 2, "two approvals verified");
    }
    eprintln!(
        "  verify_tip with 2 approvals: median {}, the release alone: median {}",
        fmt_duration(median(&approved)),
        fmt_duration(median(&alone))
    );
    Ok(vec![Row::ratio(
        "B11",
        &format!(
            "verifying a tip with 2 approvals over a {}-host release (median of {})",
            p.hosts, p.runs
        ),
        spread(&approved),
        spread(&alone),
        "the release alone",
        1.5,
    )])
}
