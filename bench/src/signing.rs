//! B6: CI's side. `ferry-signer release` of a whole fleet (the process, as
//! CI runs it) against what a person signing by hand does: `git commit -S`
//! (ssh format) of a one-host `release.toml`. Both use the same unencrypted
//! OpenSSH key, so neither spends time on key derivation.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::fixtures::{self, git, git_cmd, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, median, spread, Row};

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

    // The hand-signed repositories: one host, as the issue asks, and the
    // same fleet as ferry-signer's, to show what git itself pays for the size.
    let one = HandSigned::new(&dir.join("manual-1"), 1)?;
    let all = HandSigned::new(&dir.join("manual-all"), p.hosts)?;

    let mut signer_times = Vec::new();
    let mut git_times = Vec::new();
    let mut git_all_times = Vec::new();
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
        git_times.push(one.commit(key, i as u64 + 1)?);
        git_all_times.push(all.commit(key, i as u64 + 1)?);
    }
    eprintln!(
        "  ferry-signer release: median {}, git add + commit -S: median {} (1 host), {} ({} hosts)",
        fmt_duration(median(&signer_times)),
        fmt_duration(median(&git_times)),
        fmt_duration(median(&git_all_times)),
        p.hosts
    );
    let same_size = Row::reference(
        "B6′",
        &format!(
            "the same, against git signing the same {}-host file (reference)",
            p.hosts
        ),
        spread(&signer_times),
        spread(&git_all_times),
        &format!("`git add` + `git commit -S`, {} hosts", p.hosts),
    );
    Ok(vec![
        Row::ratio(
            "B6",
            &format!(
                "`ferry-signer release` of {} hosts (median of {})",
                p.hosts, p.runs
            ),
            spread(&signer_times),
            spread(&git_times),
            "`git add` + `git commit -S`, 1 host",
            2.0,
        ),
        same_size,
    ])
}

/// A work tree where a person signs `release.toml` with git (ssh format).
struct HandSigned {
    dir: std::path::PathBuf,
    release: ferry_signer::Release,
}

impl HandSigned {
    fn new(dir: &Path, hosts: usize) -> Result<Self> {
        fixtures::run(git_cmd().args(["init", "-q", "-b", BRANCH]).arg(dir))?;
        let release =
            ferry_signer::publish::next_release(None, &fixtures::hosts(hosts, 3), chrono::Utc::now())?;
        Ok(Self {
            dir: dir.to_owned(),
            release,
        })
    }

    /// Writes release `serial` and times `git add` + `git commit -S`.
    fn commit(&self, key: &ReleaseKey, serial: u64) -> Result<std::time::Duration> {
        let mut release = self.release.clone();
        release.serial = serial;
        std::fs::write(self.dir.join("release.toml"), release.to_toml())?;
        let start = Instant::now();
        git(&self.dir, &["add", "release.toml"])?;
        fixtures::run(
            git_cmd()
                .arg("-C")
                .arg(&self.dir)
                .args(["-c", "gpg.format=ssh", "-c"])
                .arg(format!("user.signingkey={}", key.path.display()))
                .args(["commit", "-q", "-S", "-m"])
                .arg(format!("release {serial}")),
        )?;
        Ok(start.elapsed())
    }
}
