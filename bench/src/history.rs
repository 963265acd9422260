//! B5: does a reconcile cost more when the deploy branch is long and the
//! release names a whole fleet? Poll → fetch → verify → select through the
//! agent's library, against a `git daemon` on loopback, for
//!   - a branch of 10,000 commits whose tip names 10,000 hosts, the agent's
//!     clone holding everything but the tip and anchored at its parent (a
//!     fleet's steady state: one new release on top of a long history), and
//!   - a branch of 1 commit naming 1 host, the agent's clone empty.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use ferry_agent::io::git::source::Source;
use ferry_agent::policy::judge::{self, Verdict};
use ferry_agent::state::Anchor;
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::CommitId;

use crate::fixtures::{self, git_cmd, host_name, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, median, spread, Row};

pub struct Params {
    pub commits: usize,
    pub hosts: usize,
    pub runs: usize,
}

pub fn run(work: &Path, key: &ReleaseKey, repos: &Path, port: u16, p: &Params) -> Result<Vec<Row>> {
    let dir = work.join("history");
    std::fs::create_dir_all(&dir)?;

    // Big: commits 1..n-2 by fast-import (small releases), n-1 and n signed
    // releases of the whole fleet.
    let t = Instant::now();
    let big = repos.join("big.git");
    fixtures::bare_repo(&big)?;
    fast_import(&big, p.commits - 2)?;
    let fleet = fixtures::hosts(p.hosts, 1);
    let anchor_commit = key.publish(&big, &fleet)?;
    let big_url = format!("git://127.0.0.1:{port}/big.git");
    // The agent's clone as of the anchor.
    let pristine = dir.join("big-clone.git");
    {
        let source = Source::open(&pristine, &big_url, BRANCH, None)?;
        let tip = source.remote_tip()?;
        source.fetch(tip)?;
    }
    // The new release: a tenth of the fleet gets a new system.
    let mut changes = ReleaseChanges::default();
    for i in (0..p.hosts).step_by(10) {
        changes.hosts.insert(host_name(i), fixtures::fake_entry(i, 2));
    }
    key.publish(&big, &changes)?;
    let anchor = Anchor {
        commit: CommitId::from(anchor_commit),
        serial: (p.commits - 1) as u64,
    };
    eprintln!(
        "  made a {}-commit branch with {} hosts in {}",
        p.commits,
        p.hosts,
        fmt_duration(t.elapsed())
    );

    // Small: one commit, one host.
    let small = repos.join("small.git");
    fixtures::bare_repo(&small)?;
    key.publish(&small, &fixtures::hosts(1, 1))?;
    let small_url = format!("git://127.0.0.1:{port}/small.git");

    let mut big_times = Vec::new();
    let mut small_times = Vec::new();
    for i in 0..p.runs {
        let clone = dir.join(format!("run-{i}-big.git"));
        fixtures::run(Command::new("cp").arg("-a").arg(&pristine).arg(&clone))?;
        big_times.push(reconcile(
            &clone,
            &big_url,
            key,
            Some(&anchor),
            host_name(p.hosts / 2),
        )?);
        std::fs::remove_dir_all(&clone)?;

        let clone = dir.join(format!("run-{i}-small.git"));
        small_times.push(reconcile(&clone, &small_url, key, None, host_name(0))?);
        std::fs::remove_dir_all(&clone)?;
    }
    eprintln!(
        "  big: median {}, small: median {}",
        fmt_duration(median(&big_times)),
        fmt_duration(median(&small_times))
    );
    Ok(vec![Row::ratio(
        "B5",
        &format!(
            "poll + fetch + verify + select, {}-commit branch, {}-host release (median of {})",
            p.commits, p.hosts, p.runs
        ),
        spread(&big_times),
        spread(&small_times),
        "1 commit, 1 host",
        1.5,
    )])
}

/// One reconcile up to the verdict, timed from the poll on.
fn reconcile(
    clone: &Path,
    url: &str,
    key: &ReleaseKey,
    anchor: Option<&Anchor>,
    host: ferry_signer::HostName,
) -> Result<Duration> {
    let source = Source::open(clone, url, BRANCH, None)?;
    let start = Instant::now();
    let tip = source.remote_tip()?;
    let polled = start.elapsed();
    source.fetch(tip)?;
    let fetched = start.elapsed();
    let verified = ferry_signer::verify::verify_release_commit(source.repo(), tip, &key.signers, Utc::now())?;
    let checked = start.elapsed();
    let descends = match anchor {
        Some(a) => source.descends_from(tip, git2::Oid::from_str(a.commit.as_str())?)?,
        None => false,
    };
    let verdict = judge::judge(&verified, &host, anchor, descends, None);
    let elapsed = start.elapsed();
    if !matches!(verdict, Verdict::Deploy(_)) {
        bail!("expected a deploy, got {verdict:?}");
    }
    if std::env::var_os("FERRY_BENCH_DETAIL").is_some() {
        eprintln!(
            "    poll {} fetch {} verify {} select {}",
            fmt_duration(polled),
            fmt_duration(fetched - polled),
            fmt_duration(checked - fetched),
            fmt_duration(elapsed - checked)
        );
    }
    Ok(elapsed)
}

/// Appends `n` commits, each a small release, to the deploy branch.
fn fast_import(repo: &Path, n: usize) -> Result<()> {
    let mut child = git_cmd()
        .arg("-C")
        .arg(repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .context("git fast-import")?;
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().expect("piped"));
        let mut release = publish::next_release(None, &fixtures::hosts(1, 0), Utc::now())?;
        let start = Utc::now().timestamp() - n as i64;
        for i in 1..=n {
            release.serial = i as u64;
            let toml = release.to_toml();
            let message = format!("release {i}\n");
            write!(
                stdin,
                "commit refs/heads/{BRANCH}\ncommitter bench <bench@example.com> {} +0000\ndata {}\n{message}M 100644 inline release.toml\ndata {}\n{toml}\n",
                start + i as i64,
                message.len(),
                toml.len()
            )?;
        }
        stdin.flush()?;
    }
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    Ok(())
}
