//! B6: CI's side. `ferry-signer release` of a whole fleet (the process, as
//! CI runs it) against what a person signing by hand does: `git commit -S`
//! (ssh format) of a one-host `release.toml`. Both use the same unencrypted
//! OpenSSH key, so neither spends time on key derivation.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::fixtures::{self, git, git_cmd, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, median, Row};

pub struct Params<'a> {
    pub signer: &'a Path,
    pub hosts: usize,
    pub runs: usize,
}

pub fn run(work: &Path, key: &ReleaseKey, p: &Params<'_>) -> Result<Vec<Row>> {
    let dir = work.join("signing");
    std::fs::create_dir_all(&dir)?;
    let fleet = fixtures::hosts(p.hosts, 3);
    let hosts_json: serde_json::Map<String, serde_json::Value> = fleet
        .hosts
        .iter()
        .map(|(name, entry)| (name.to_string(), entry.toplevel.as_str().into()))
        .collect();
    let hosts_file = dir.join("hosts.json");
    std::fs::write(&hosts_file, serde_json::to_vec(&hosts_json)?)?;

    // The hand-signed repository.
    let manual = dir.join("manual");
    fixtures::run(git_cmd().args(["init", "-q", "-b", BRANCH]).arg(&manual))?;
    let one_host = fixtures::hosts(1, 3);
    let mut release = ferry_signer::publish::next_release(None, &one_host, chrono::Utc::now())?;

    let mut signer_times = Vec::new();
    let mut git_times = Vec::new();
    for i in 0..p.runs {
        let repo = dir.join(format!("ci-{i}.git"));
        fixtures::bare_repo(&repo)?;
        let start = Instant::now();
        fixtures::run(
            Command::new(p.signer)
                .args(["release", "--repo"])
                .arg(&repo)
                .arg("--key")
                .arg(&key.path)
                .arg("--hosts-file")
                .arg(&hosts_file)
                .args(["--branch", BRANCH]),
        )?;
        signer_times.push(start.elapsed());
        std::fs::remove_dir_all(&repo)?;

        release.serial = i as u64 + 1;
        std::fs::write(manual.join("release.toml"), release.to_toml())?;
        git(&manual, &["add", "release.toml"])?;
        let start = Instant::now();
        fixtures::run(
            git_cmd()
                .arg("-C")
                .arg(&manual)
                .args(["-c", "gpg.format=ssh", "-c"])
                .arg(format!("user.signingkey={}", key.path.display()))
                .args(["commit", "-q", "-S", "-m"])
                .arg(format!("release {}", i + 1)),
        )?;
        git_times.push(start.elapsed());
    }
    eprintln!(
        "  ferry-signer release: median {}, git commit -S: median {}",
        fmt_duration(median(&signer_times)),
        fmt_duration(median(&git_times))
    );
    Ok(vec![Row::ratio(
        "B6",
        &format!(
            "`ferry-signer release` of {} hosts (median of {})",
            p.hosts, p.runs
        ),
        median(&signer_times),
        median(&git_times),
        "`git commit -S`, 1 host",
        2.0,
    )])
}
