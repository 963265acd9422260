//! B13–B14: a rollout read from a static mirror.
//! - B13: what a 3-wave rollout of 10,000 hosts costs the origin when the
//!   mirror (`ferry-signer mirror`'s layout, served by nginx) sits behind a
//!   CDN (a second nginx with `proxy_cache`, answers kept 2 s). For every
//!   release each host makes the requests the agent's mirror reader makes —
//!   a GET of `info/refs` with its last ETag, `objects/info/packs`, each
//!   pack it lacks — then one more poll of the unchanged mirror. The
//!   origin's log counts the requests and bytes that reached it and its CPU
//!   time what they cost. The baseline is what the git server spends on
//!   the same releases today: the pack `git upload-pack` has made for each
//!   host's fetch (B9's measure), times the fleet.
//! - B14: one host fetching a new release: the agent's own mirror reader
//!   (tip check and fetch, in process) from the origin, against `git
//!   fetch` of the same commit from `git daemon`; bytes from nginx's log
//!   and the size of the pack git sends.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_signer::mirror::{self, DirStore};
use ferry_test_support::nginx::{Access, Logged, Nginx};

use crate::fixtures::{self, git_cmd, ReleaseKey, BRANCH};
use crate::fleet::{pack_median, waved_rollout};
use crate::report::{fmt_duration, median, Row};

pub struct Params {
    pub hosts: usize,
    pub runs: usize,
    /// Concurrent clients standing in for the fleet.
    pub clients: usize,
}

/// How long the edge keeps an answer before asking the origin again (a
/// CDN's lifetime for `info/refs`: a few seconds).
const EDGE_LIFETIME_SECS: u64 = 2;

pub fn run(work: &Path, key: &ReleaseKey, repos: &Path, git_port: u16, p: &Params) -> Result<Vec<Row>> {
    let path = repos.join("mirror-waves.git");
    let (commits, waves) = waved_rollout(key, &path, p.hosts)?;
    let repo = git2::Repository::open_bare(&path)?;
    let www = work.join("mirror-www");
    let store = DirStore(www.join("deploy.git"));
    // The mirror as CI leaves it after each release: the branch at
    // `commits[i]`, mirrored.
    // Then, as between a rollout's waves, the edge's copy of `info/refs`
    // grows old, so the hosts see the new release.
    let publish = |i: usize| -> Result<()> {
        repo.reference(&format!("refs/heads/{BRANCH}"), commits[i], true, "bench")?;
        mirror::update(&repo, BRANCH, &store)?;
        std::thread::sleep(Duration::from_secs(EDGE_LIFETIME_SECS + 1));
        Ok(())
    };
    publish(0)?;
    let origin = Nginx::serve(&www, &Access::Anyone, false)?;
    let edge = Nginx::cache_in_front(&origin.url(), EDGE_LIFETIME_SECS)?;
    let edge_url = format!("{}/deploy.git", edge.url());

    // The fleet, all at the first release, each host with the ETag of the
    // `info/refs` it read and the packs it holds.
    let first_packs: BTreeSet<String> = mirror::read_layout(&store)?.packs.into_iter().collect();
    let mut fleet: Vec<Host> = (0..p.hosts)
        .map(|_| Host {
            etag: None,
            packs: first_packs.clone(),
        })
        .collect();
    roll(&edge_url, &mut fleet, p.clients)?; // each host's first read, not counted

    // B14 reads the same mirror from a server of its own, so its requests
    // stay out of the rollout's counts.
    let direct = Nginx::serve(&www, &Access::Anyone, false)?;
    let direct_url = format!("{}/deploy.git", direct.url());
    let b14 = work.join("mirror-b14");
    std::fs::create_dir_all(&b14)?;
    let git_url = format!("git://127.0.0.1:{git_port}/mirror-waves.git");

    let origin_before = origin.requests().len();
    let edge_before = edge.requests().len();
    let cpu_before = cpu_ticks(origin.pid())?;
    let started = Instant::now();
    for i in 1..commits.len() {
        publish(i)?;
        roll(&edge_url, &mut fleet, p.clients)?;
        if i == commits.len() - 2 {
            // B14 starts from the second wave's release.
            prepare_b14(&b14, &direct_url, &git_url, commits[i])?;
        }
    }
    let rollout_wall = started.elapsed();
    // Below one clock tick, the tick is what is known: an upper bound.
    let origin_ticks = cpu_ticks(origin.pid())? - cpu_before;
    let origin_cpu = ticks_to_duration(origin_ticks.max(1))?;
    let bound = if origin_ticks == 0 { "at most " } else { "" };
    let origin_log: Vec<Logged> = origin.requests()[origin_before..].to_vec();
    let edge_log = edge.requests()[edge_before..].to_vec();
    let origin_bytes: u64 = origin_log.iter().map(|r| r.bytes_sent).sum();
    let edge_bytes: u64 = edge_log.iter().map(|r| r.bytes_sent).sum();
    let edge_304 = edge_log.iter().filter(|r| r.status == 304).count();
    // Per host and release: info/refs, objects/info/packs, the pack, and
    // the next poll's info/refs.
    if edge_log.len() != 4 * 3 * p.hosts {
        bail!("the edge saw {} requests, not {}", edge_log.len(), 12 * p.hosts);
    }

    // The baseline: the git server packing each release for every host.
    let mut git_time = Duration::ZERO;
    let mut git_bytes = 0usize;
    let mut git_waves = Vec::new();
    for pair in commits.windows(2) {
        let (t, b) = pack_median(&path, pair[1], pair[0], p.runs)?;
        git_time += t;
        git_bytes += b;
        git_waves.push(format!("{:.0}", b as f64 / 1e3));
    }
    // What each host downloads per release from the mirror: that
    // release's pack, whole (a pack on disk cannot be thin).
    let mirror_waves: Vec<String> = mirror::read_layout(&store)?
        .packs
        .iter()
        .filter(|pack| !first_packs.contains(*pack))
        .map(|pack| {
            let size = std::fs::metadata(www.join("deploy.git/objects/pack").join(pack)).map(|m| m.len());
            size.map(|b| format!("{:.0}", b as f64 / 1e3))
        })
        .collect::<std::io::Result<_>>()?;
    let git_fleet_time = git_time.mul_f64(p.hosts as f64);
    let git_fleet_bytes = git_bytes as f64 * p.hosts as f64;
    eprintln!(
        "  rollout from the mirror: {} requests to the edge ({} answered 304), {} to the origin, in {}",
        edge_log.len(),
        edge_304,
        origin_log.len(),
        fmt_duration(rollout_wall)
    );

    let (last, previous) = (commits[commits.len() - 1], commits[commits.len() - 2]);
    let (fetch_mirror, mirror_bytes) = time_mirror_fetch(&b14, &direct, &direct_url, last, p.runs)?;
    let fetch_git = time_git_fetch(&b14, last, p.runs)?;
    let (_, git_pack) = pack_median(&path, last, previous, 1)?;

    let label = format!("{} / {} / {} hosts", waves[0], waves[1], waves[2]);
    Ok(vec![
        Row::ratio(
            "B13",
            &format!(
                "the origin's CPU time for a 3-wave rollout ({label}) of {} hosts from a static mirror behind a CDN (nginx `proxy_cache`, {EDGE_LIFETIME_SECS} s; one clock tick when less)",
                p.hosts
            ),
            origin_cpu,
            git_fleet_time,
            "the git server packing the same 3 releases for every host: B9's median per fetch × hosts",
            0.01,
        ),
        Row::report(
            "B13′",
            "requests and bytes that reach the origin in that rollout, and what the CDN serves",
            format!(
                "origin: {} requests, {} bytes, {bound}{} of CPU (git server: {} fetches, {:.0} MB); the CDN: {} requests ({} answered 304), {:.0} MB — each host downloads each release's whole pack, {} kB, where git sends it a delta, {} kB",
                origin_log.len(),
                origin_bytes,
                fmt_duration(origin_cpu),
                3 * p.hosts,
                git_fleet_bytes / 1e6,
                edge_log.len(),
                edge_304,
                edge_bytes as f64 / 1e6,
                mirror_waves.join(" / "),
                git_waves.join(" / ")
            ),
        ),
        Row::reference(
            "B14",
            &format!(
                "one host fetching a new release (the last wave's) from the mirror: the agent's tip check and fetch, in process (median of {})",
                p.runs
            ),
            fetch_mirror,
            fetch_git,
            "`git fetch` of the same commit from `git daemon`",
        ),
        Row::report(
            "B14′",
            "bytes that fetch moves",
            format!(
                "{mirror_bytes} bytes from the mirror (info/refs, objects/info/packs, one pack) vs a {git_pack}-byte pack from git (plus its ref advertisement)"
            ),
        ),
    ])
}

/// One simulated host: the ETag of the last `info/refs` it read, the packs
/// it holds.
struct Host {
    etag: Option<String>,
    packs: BTreeSet<String>,
}

/// Every host reads the mirror at `base` as the agent's reader does (a
/// conditional GET of `info/refs`; when it changed, `objects/info/packs`
/// and each pack it lacks, read to the end), then polls once more (an
/// unchanged mirror: answered 304). `clients` threads, each one keep-alive
/// connection.
fn roll(base: &str, fleet: &mut [Host], clients: usize) -> Result<()> {
    let chunk = fleet.len().div_ceil(clients.max(1));
    std::thread::scope(|scope| {
        let workers: Vec<_> = fleet
            .chunks_mut(chunk)
            .map(|hosts| {
                scope.spawn(move || -> Result<()> {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .build()?;
                    for host in hosts {
                        poll(&http, base, host)?;
                        poll(&http, base, host)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a client thread panicked")?;
        }
        Ok(())
    })
}

/// One poll of one host, as the agent's mirror reader makes it.
fn poll(http: &reqwest::blocking::Client, base: &str, host: &mut Host) -> Result<()> {
    let mut request = http.get(format!("{base}/info/refs"));
    if let Some(etag) = &host.etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send()?;
    match response.status().as_u16() {
        304 => return Ok(()),
        200 => {}
        code => bail!("info/refs: HTTP {code}"),
    }
    host.etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    response.bytes()?;
    let packs = http
        .get(format!("{base}/objects/info/packs"))
        .send()?
        .error_for_status()?
        .text()?;
    let packs = mirror::parse_packs(&packs).map_err(anyhow::Error::msg)?;
    for pack in packs {
        if host.packs.contains(&pack) {
            continue;
        }
        let mut response = http
            .get(format!("{base}/objects/pack/{pack}"))
            .send()?
            .error_for_status()?;
        std::io::copy(&mut response, &mut std::io::sink())?;
        host.packs.insert(pack);
    }
    Ok(())
}

/// Clones at `at` for B14: `b14/mirror.git` by the agent's reader from the
/// mirror at `mirror_url`, `b14/git.git` by git from `git daemon`.
fn prepare_b14(b14: &Path, mirror_url: &str, git_url: &str, at: git2::Oid) -> Result<()> {
    let source =
        ferry_agent::io::git::source::Source::open(&b14.join("mirror.git"), mirror_url, BRANCH, None)?;
    if source.remote_tip()? != at {
        bail!("the mirror is not at the release B14 starts from");
    }
    source.fetch(at)?;
    fixtures::run(
        git_cmd()
            .args(["clone", "-q", "--bare", "--single-branch", "-b", BRANCH, git_url])
            .arg(b14.join("git.git")),
    )?;
    Ok(())
}

/// The agent's reader fetching `tip` into a copy of `b14/mirror.git`: the
/// median wall time, and the bytes the origin sent for one fetch.
fn time_mirror_fetch(
    b14: &Path,
    server: &Nginx,
    url: &str,
    tip: git2::Oid,
    runs: usize,
) -> Result<(Duration, u64)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for n in 0..runs.max(1) {
        let copy = b14.join(format!("mirror-run-{n}.git"));
        fixtures::run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(b14.join("mirror.git"))
                .arg(&copy),
        )?;
        let before = server.requests().len();
        let start = Instant::now();
        let source = ferry_agent::io::git::source::Source::open(&copy, url, BRANCH, None)?;
        let found = source.remote_tip()?;
        source.fetch(found)?;
        times.push(start.elapsed());
        if found != tip {
            bail!("the mirror's tip is {found}, not {tip}");
        }
        bytes = server.requests()[before..]
            .iter()
            .map(|r| r.bytes_sent + r.request_length)
            .sum();
        std::fs::remove_dir_all(&copy)?;
    }
    Ok((median(&times), bytes))
}

/// `git fetch` of the branch into a copy of `b14/git.git`: the median wall time.
fn time_git_fetch(b14: &Path, tip: git2::Oid, runs: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for n in 0..runs.max(1) {
        let copy = b14.join(format!("git-run-{n}.git"));
        fixtures::run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(b14.join("git.git"))
                .arg(&copy),
        )?;
        let start = Instant::now();
        fixtures::run(git_cmd().arg("-C").arg(&copy).args([
            "fetch",
            "-q",
            "origin",
            &format!("+{BRANCH}:{BRANCH}"),
        ]))?;
        times.push(start.elapsed());
        let head = fixtures::run(git_cmd().arg("-C").arg(&copy).args(["rev-parse", BRANCH]))?;
        if head.trim() != tip.to_string() {
            bail!("git fetched {}, not {tip}", head.trim());
        }
        std::fs::remove_dir_all(&copy)?;
    }
    Ok(median(&times))
}

/// User and system CPU ticks `pid` has used.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> { Ok(fields.get(i).context("a /proc stat field")?.parse()?) };
    // utime and stime are the 14th and 15th fields (11 and 12 after the name).
    Ok(field(11)? + field(12)?)
}

fn ticks_to_duration(ticks: u64) -> Result<Duration> {
    let per_second: u64 = fixtures::run(std::process::Command::new("getconf").arg("CLK_TCK"))?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}
