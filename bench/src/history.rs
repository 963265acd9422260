//! B5: does a reconcile cost more when the deploy branch is long and the
//! release names a whole fleet? Poll → fetch → verify → select through the
//! agent's library, against a `git daemon` on loopback, for
//!   - a branch of 10,000 commits whose tip names 10,000 hosts, the agent's
//!     clone holding everything but the tip and anchored at its parent (a
//!     fleet's steady state: one new release on top of a long history), and
//!   - a branch of 1 commit naming 1 host, the agent's clone empty;
//!
//! and, to tell apart what each part costs, the same release with the
//! server's objects packed (B5′), pushed into a server that keeps pushed
//! packs (B5⁗), on a 3-commit branch (B5″), and a release of five times the
//! hosts (B5‴). A tenth of the hosts get a new system.

use std::io::Write;
use std::path::{Path, PathBuf};
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
use crate::report::{fmt_duration, spread, Row};

pub struct Params {
    pub commits: usize,
    pub hosts: usize,
    pub runs: usize,
}

/// One shape of deploy branch, as the git server holds it.
struct Case {
    commits: usize,
    hosts: usize,
    /// How the new release's objects are kept on the server.
    arrival: Arrival,
}

/// How a release's objects reach the server, and so how it keeps them.
#[derive(Clone, Copy, PartialEq)]
enum Arrival {
    /// Loose, as a push of fewer than `receive.unpackLimit` (100) objects
    /// leaves them and as `ferry-signer release` writing straight into a
    /// bare repository does: the server deltas the release for every fetch.
    Loose,
    /// Everything in one pack, as a forge's housekeeping (`git repack -ad`)
    /// leaves it: the newest release is stored whole, and sent whole.
    Repacked,
    /// `git push`ed (as `ferry-signer release --push` does) into a server
    /// with `receive.unpackLimit = 1`, which keeps the pushed pack as it
    /// came: the release a delta against the one before it, which the server
    /// sends as it is to a host that has that one.
    PushedPackKept,
}

/// A branch of `case.commits` commits on the server whose tip names
/// `case.hosts` hosts, a tenth of them with a new system; and the agent's
/// clone of everything but that tip, with its anchor.
fn make(
    dir: &Path,
    repos: &Path,
    port: u16,
    key: &ReleaseKey,
    name: &str,
    case: &Case,
) -> Result<(PathBuf, String, Anchor)> {
    let repo = repos.join(format!("{name}.git"));
    fixtures::bare_repo(&repo)?;
    fast_import(&repo, case.commits - 2)?;
    let anchor_commit = key.publish(&repo, &fixtures::hosts(case.hosts, 1))?;

    let url = format!("git://127.0.0.1:{port}/{name}.git");
    let pristine = dir.join(format!("{name}-clone.git"));
    {
        let source = Source::open(&pristine, &url, BRANCH, None)?;
        let tip = source.remote_tip()?;
        source.fetch(tip)?;
    }
    let mut changes = ReleaseChanges::default();
    for i in (0..case.hosts).step_by(10) {
        changes.hosts.insert(host_name(i), fixtures::fake_entry(i, 2));
    }
    match case.arrival {
        Arrival::Loose => {
            key.publish(&repo, &changes)?;
        }
        Arrival::Repacked => {
            key.publish(&repo, &changes)?;
            fixtures::git(&repo, &["repack", "-adq"])?;
        }
        Arrival::PushedPackKept => {
            // Signed in CI's clone, pushed (a thin pack: the release a delta
            // against the one the server has).
            // The history before it packed, as housekeeping leaves it.
            fixtures::git(&repo, &["repack", "-adq"])?;
            fixtures::git(&repo, &["config", "receive.unpackLimit", "1"])?;
            let staging = dir.join(format!("{name}-staging.git"));
            // Cloned as a CI runner's clone is, by a fetch: a copy of the
            // server's files would carry its reachability bitmap, with which
            // `git push` does not delta against what the server has.
            fixtures::run(
                git_cmd()
                    .args(["clone", "-q", "--bare", "--no-local"])
                    .arg(&repo)
                    .arg(&staging),
            )?;
            key.publish(&staging, &changes)?;
            let refspec = format!("{BRANCH}:{BRANCH}");
            fixtures::run(
                git_cmd()
                    .arg("-C")
                    .arg(&staging)
                    .args(["push", "-q"])
                    .arg(&repo)
                    .arg(&refspec),
            )?;
            std::fs::remove_dir_all(&staging)?;
        }
    }
    let anchor = Anchor {
        commit: CommitId::from(anchor_commit),
        serial: (case.commits - 1) as u64,
    };
    Ok((pristine, url, anchor))
}

pub fn run(work: &Path, key: &ReleaseKey, repos: &Path, port: u16, p: &Params) -> Result<Vec<Row>> {
    let dir = work.join("history");
    std::fs::create_dir_all(&dir)?;
    let cases = [
        (
            "big",
            Case {
                commits: p.commits,
                hosts: p.hosts,
                arrival: Arrival::Loose,
            },
        ),
        (
            "big-packed",
            Case {
                commits: p.commits,
                hosts: p.hosts,
                arrival: Arrival::Repacked,
            },
        ),
        (
            "short-packed",
            Case {
                commits: 3,
                hosts: p.hosts,
                arrival: Arrival::Repacked,
            },
        ),
        (
            "huge-packed",
            Case {
                commits: 3,
                hosts: p.hosts * 5,
                arrival: Arrival::Repacked,
            },
        ),
        (
            "big-pushed",
            Case {
                commits: p.commits,
                hosts: p.hosts,
                arrival: Arrival::PushedPackKept,
            },
        ),
    ];
    let t = Instant::now();
    let mut made = Vec::new();
    for (name, case) in &cases {
        made.push(make(&dir, repos, port, key, name, case)?);
    }
    eprintln!("  made {} branches in {}", cases.len(), fmt_duration(t.elapsed()));

    // Small: one commit, one host.
    let small = repos.join("small.git");
    fixtures::bare_repo(&small)?;
    key.publish(&small, &fixtures::hosts(1, 1))?;
    let small_url = format!("git://127.0.0.1:{port}/small.git");

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut fetched_bytes = vec![0u64; cases.len()];
    let mut small_times = Vec::new();
    for i in 0..p.runs {
        // Interleaved, so every case meets the machine in the same moods.
        for (n, ((name, case), (pristine, url, anchor))) in cases.iter().zip(&made).enumerate() {
            let clone = dir.join(format!("run-{i}-{name}.git"));
            fixtures::run(Command::new("cp").arg("-a").arg(pristine).arg(&clone))?;
            let (time, received) = reconcile(&clone, url, key, Some(anchor), host_name(case.hosts / 2))?;
            times[n].push(time);
            fetched_bytes[n] = received;
            std::fs::remove_dir_all(&clone)?;
        }
        let clone = dir.join(format!("run-{i}-small.git"));
        small_times.push(reconcile(&clone, &small_url, key, None, host_name(0))?.0);
        std::fs::remove_dir_all(&clone)?;
    }
    let small = spread(&small_times);
    let what = "1 commit, 1 host";
    let kib = |n: usize| fetched_bytes[n] as f64 / 1024.0;
    Ok(vec![
        Row::ratio(
            "B5",
            &format!(
                "poll + fetch + verify + select, {}-commit branch, {}-host release, the release's objects loose on the server (median of {}; {:.0} KiB received)",
                p.commits, p.hosts, p.runs, kib(0)
            ),
            spread(&times[0]),
            small,
            what,
            2.0,
        ),
        Row::ratio(
            "B5′",
            &format!(
                "the same, the server's objects in one pack (as a forge keeps them; {:.0} KiB received)",
                kib(1)
            ),
            spread(&times[1]),
            small,
            what,
            2.0,
        ),
        Row::reference(
            "B5″",
            &format!(
                "the same release on a 3-commit branch, server packed: the fleet's size alone ({:.0} KiB received)",
                kib(2)
            ),
            spread(&times[2]),
            small,
            what,
        ),
        Row::reference(
            "B5‴",
            &format!(
                "a {}-host release on a 3-commit branch, server packed: what a host pays for a fleet five times larger ({:.0} KiB received)",
                p.hosts * 5,
                kib(3)
            ),
            spread(&times[3]),
            small,
            what,
        ),
        Row::reference(
            "B5⁗",
            &format!(
                "the B5 release `git push`ed into a server that keeps pushed packs (`receive.unpackLimit = 1`): sent as the delta it arrived as ({:.0} KiB received)",
                kib(4)
            ),
            spread(&times[4]),
            small,
            what,
        ),
    ])
}

/// One reconcile up to the verdict, timed from the poll on, and the bytes
/// its fetch received.
fn reconcile(
    clone: &Path,
    url: &str,
    key: &ReleaseKey,
    anchor: Option<&Anchor>,
    host: ferry_signer::HostName,
) -> Result<(Duration, u64)> {
    let source = Source::open(clone, url, BRANCH, None)?;
    let start = Instant::now();
    let tip = source.remote_tip()?;
    let polled = start.elapsed();
    let received = source.fetch_counted(tip)?;
    let fetched = start.elapsed();
    // As the agent reads it: this host's entry alone.
    let scope = ferry_signer::Scope::Host(&host);
    let verified = ferry_signer::verify::verify_release_commit_scoped(
        source.repo(),
        tip,
        &key.signers,
        Utc::now(),
        scope,
    )?;
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
    Ok((elapsed, received))
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
