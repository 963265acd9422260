//! B8–B9: the fleet at 10,000 hosts.
//! - B8: `ferry-signer status --json` of a 10,000-host release against a
//!   loopback forge answering as GitHub does (combined status, 100 a page,
//!   `Link` headers, keep-alive), against `curl` fetching the same pages in
//!   one process.
//! - B9: what a rollout in waves costs the git server: for each release an
//!   agent fetches, the pack `git pack-objects` makes for a client at the
//!   previous release (what `git upload-pack` runs for every agent's fetch),
//!   its size and time; a 3-wave rollout (100, 1,000 and 8,900 hosts) summed
//!   over its releases, against one release changing every host, and a
//!   1-host release for scale.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_signer::publish::ReleaseChanges;

use crate::fixtures::{self, git_cmd, host_name, ReleaseKey};
use crate::report::{fmt_duration, median, spread, Row};

pub struct Params<'a> {
    pub signer: &'a Path,
    pub hosts: usize,
    pub runs: usize,
}

const PER_PAGE: usize = 100;
const TOKEN: &str = "bench-token";

pub fn run(work: &Path, key: &ReleaseKey, repos: &Path, p: &Params) -> Result<Vec<Row>> {
    let mut rows = status(work, key, repos, p)?;
    rows.extend(rollout(key, repos, p)?);
    Ok(rows)
}

/// B8: `status` over the whole fleet vs `curl` of the same pages.
fn status(work: &Path, key: &ReleaseKey, repos: &Path, p: &Params) -> Result<Vec<Row>> {
    let repo = repos.join("fleet-status.git");
    fixtures::bare_repo(&repo)?;
    let commit = key.publish(&repo, &fixtures::hosts(p.hosts, 1))?.to_string();
    // Every host reported: 9 in 10 success, the rest pending or failed.
    let statuses: Vec<serde_json::Value> = (0..p.hosts)
        .map(|i| {
            let state = match i % 20 {
                0 => "failure",
                1 => "pending",
                _ => "success",
            };
            serde_json::json!({
                "url": format!("https://api.github.com/repos/ops/deploy/statuses/{commit}"),
                "id": i + 1,
                "node_id": format!("SC_{i}"),
                "state": state,
                "description": format!("{} runs release 1", host_name(i)),
                "target_url": null,
                "context": format!("ferry/{}", host_name(i)),
                "created_at": "2026-11-30T10:00:00Z",
                "updated_at": "2026-11-30T10:00:00Z",
            })
        })
        .collect();
    let pages: Vec<Vec<u8>> = statuses
        .chunks(PER_PAGE)
        .map(|chunk| {
            serde_json::to_vec(&serde_json::json!({
                "state": "failure",
                "sha": commit,
                "total_count": p.hosts,
                "statuses": chunk,
                "repository": {"full_name": "ops/deploy"},
                "commit_url": "https://api.github.com/repos/ops/deploy/commits/x",
                "url": "https://api.github.com/repos/ops/deploy/commits/x/status",
            }))
            .expect("JSON")
        })
        .collect();
    let bytes: usize = pages.iter().map(Vec::len).sum();
    let port = paginated_server(pages)?;
    let token_file = work.join("forge-token");
    std::fs::write(&token_file, TOKEN)?;
    let api = format!("http://127.0.0.1:{port}");
    let n_pages = p.hosts.div_ceil(PER_PAGE);
    let urls: Vec<String> = (1..=n_pages)
        .map(|page| format!("{api}/repos/ops/deploy/commits/{commit}/status?per_page={PER_PAGE}&page={page}"))
        .collect();

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut show = Vec::new();
    for _ in 0..p.runs {
        // The part that is not the forge: open the repository, read and
        // parse the 10,000-host release, print JSON.
        let start = Instant::now();
        let out = Command::new(p.signer)
            .args(["show", "--json", "--repo"])
            .arg(&repo)
            .output()?;
        show.push(start.elapsed());
        if !out.status.success() {
            bail!("ferry-signer show: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    for i in 0..p.runs {
        // Alternate which goes first, so neither always finds a warm cache.
        for which in [i % 2, 1 - i % 2] {
            if which == 0 {
                let start = Instant::now();
                let out = Command::new(p.signer)
                    .args(["status", "--json", "--repo"])
                    .arg(&repo)
                    .args([
                        "--forge",
                        "github",
                        "--api-url",
                        &api,
                        "--repository",
                        "ops/deploy",
                    ])
                    .arg("--token-file")
                    .arg(&token_file)
                    .output()?;
                ours.push(start.elapsed());
                if !out.status.success() {
                    bail!("ferry-signer status: {}", String::from_utf8_lossy(&out.stderr));
                }
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                if json["summary"]["hosts"] != p.hosts || json["requests"] != n_pages {
                    bail!(
                        "ferry-signer status saw {} hosts in {} requests",
                        json["summary"]["hosts"],
                        json["requests"]
                    );
                }
            } else {
                let start = Instant::now();
                let out = Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", "-H"])
                    .arg(format!("Authorization: Bearer {TOKEN}"))
                    .args(&urls)
                    .output()
                    .context("curl")?;
                theirs.push(start.elapsed());
                if !out.status.success() {
                    bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
    }
    eprintln!(
        "  status: median {}, curl: median {} ({n_pages} pages, {} KiB)",
        fmt_duration(median(&ours)),
        fmt_duration(median(&theirs)),
        bytes / 1024
    );
    Ok(vec![
        Row::ratio(
            "B8",
            &format!(
                "`ferry-signer status --json`, {}-host release, {n_pages} GitHub pages (median of {})",
                p.hosts, p.runs
            ),
            spread(&ours),
            spread(&theirs),
            &format!("`curl` of the same {n_pages} pages, keep-alive"),
            2.0,
        ),
        Row::reference(
            "B8″",
            "the same, against reading the release alone (reference)",
            spread(&ours),
            spread(&show),
            "`ferry-signer show --json` of the same release, no forge",
        ),
        Row::report(
            "B8′",
            &format!("forge API requests for the status of {} hosts", p.hosts),
            format!(
                "{n_pages} (GitHub, GitLab: 100 a page; Gitea/Forgejo: {} at 50 a page), {} KiB",
                p.hosts.div_ceil(50),
                bytes / 1024
            ),
        ),
    ])
}

/// Serves `pages` as GitHub's combined status endpoint does, on keep-alive
/// connections: `?page=N` picks the page; `Link` names the next and the last.
fn paginated_server(pages: Vec<Vec<u8>>) -> Result<u16> {
    let server = fixtures::http_server_with(move |target| {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let page: usize = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("page="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let body = pages.get(page.saturating_sub(1))?.clone();
        let link = |n: usize, rel: &str| format!("<{path}?per_page={PER_PAGE}&page={n}>; rel=\"{rel}\"");
        let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
        if page < pages.len() {
            headers.push((
                "Link".to_owned(),
                format!("{}, {}", link(page + 1, "next"), link(pages.len(), "last")),
            ));
        }
        Some((headers, body))
    })?;
    Ok(server.port)
}

/// B9: the git server's cost of the releases a rollout makes.
fn rollout(key: &ReleaseKey, repos: &Path, p: &Params) -> Result<Vec<Row>> {
    let waved = repos.join("fleet-waves.git");
    let (commits, waves) = waved_rollout(key, &waved, p.hosts)?;
    let subset = |from: usize, n: usize| ReleaseChanges {
        hosts: (from..from + n)
            .map(|i| (host_name(i), fixtures::fake_entry(i, 2)))
            .collect(),
        ..Default::default()
    };
    // One release moving every host, and one moving a single host.
    let single = repos.join("fleet-single.git");
    fixtures::bare_repo(&single)?;
    let s0 = key.publish(&single, &fixtures::hosts(p.hosts, 1))?;
    let s1 = key.publish(&single, &fixtures::hosts(p.hosts, 2))?;
    let one = repos.join("fleet-one.git");
    fixtures::bare_repo(&one)?;
    let o0 = key.publish(&one, &fixtures::hosts(p.hosts, 1))?;
    let o1 = key.publish(&one, &subset(0, 1))?;

    let mut wave_time = Duration::ZERO;
    let mut wave_bytes = 0;
    let mut per_wave = Vec::new();
    for pair in commits.windows(2) {
        let (t, b) = pack_median(&waved, pair[1], pair[0], p.runs)?;
        wave_time += t;
        wave_bytes += b;
        per_wave.push(format!("{} B / {}", b, fmt_duration(t)));
    }
    let (single_time, single_bytes) = pack_median(&single, s1, s0, p.runs)?;
    let (one_time, one_bytes) = pack_median(&one, o1, o0, p.runs)?;
    eprintln!(
        "  waves: {} (sum {wave_bytes} B / {}); one release of all: {single_bytes} B / {}; 1 host: {one_bytes} B / {}",
        per_wave.join(", "),
        fmt_duration(wave_time),
        fmt_duration(single_time),
        fmt_duration(one_time)
    );
    let label = format!("{} / {} / {} hosts", waves[0], waves[1], waves[2]);
    Ok(vec![
        Row::ratio(
            "B9",
            &format!(
                "git server time per agent fetch, summed over a 3-wave rollout ({label}) of {} hosts (median of {} per release)",
                p.hosts, p.runs
            ),
            wave_time,
            single_time,
            "one release moving every host",
            3.0,
        ),
        Row::report(
            "B9′",
            "bytes per agent fetch, summed over the 3 waves",
            format!(
                "{wave_bytes} B vs {single_bytes} B for one release of every host ({:.2}×), {one_bytes} B / {} for a 1-host release",
                wave_bytes as f64 / single_bytes as f64,
                fmt_duration(one_time)
            ),
        ),
        Row::report(
            "B9″",
            "agent fetches per rollout (every host fetches every release)",
            format!(
                "{} for 3 waves vs {} for one release: about {:.0} s of server time and {:.0} MB across the fleet vs {:.0} s and {:.0} MB",
                3 * p.hosts,
                p.hosts,
                wave_time.as_secs_f64() * p.hosts as f64,
                (wave_bytes * p.hosts) as f64 / 1e6,
                single_time.as_secs_f64() * p.hosts as f64,
                (single_bytes * p.hosts) as f64 / 1e6
            ),
        ),
    ])
}

/// A new bare repository at `path` holding a 3-wave rollout of `hosts`
/// hosts (1% / 10% / the rest): the fleet on salt 1, then each wave moved
/// to salt 2. Its releases, first to last, and the waves' sizes.
pub fn waved_rollout(key: &ReleaseKey, path: &Path, hosts: usize) -> Result<(Vec<git2::Oid>, [usize; 3])> {
    let waves = [hosts / 100, hosts / 10, hosts - hosts / 100 - hosts / 10];
    fixtures::bare_repo(path)?;
    let mut commits = vec![key.publish(path, &fixtures::hosts(hosts, 1))?];
    let mut from = 0;
    for n in waves {
        let wave = ReleaseChanges {
            hosts: (from..from + n)
                .map(|i| (host_name(i), fixtures::fake_entry(i, 2)))
                .collect(),
            ..Default::default()
        };
        commits.push(key.publish(path, &wave)?);
        from += n;
    }
    Ok((commits, waves))
}

/// The median time and the size of the pack for a client that has `old` and
/// wants `new`, as `git upload-pack` has it made for a fetch (thin, one thread).
pub fn pack_median(repo: &Path, new: git2::Oid, old: git2::Oid, runs: usize) -> Result<(Duration, usize)> {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let mut child = git_cmd()
            .arg("-C")
            .arg(repo)
            .args([
                "pack-objects",
                "--revs",
                "--stdout",
                "--thin",
                "--delta-base-offset",
                "--threads=1",
                "-q",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("git pack-objects")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(format!("{new}\n^{old}\n").as_bytes())?;
        let mut pack = Vec::new();
        child.stdout.take().expect("piped").read_to_end(&mut pack)?;
        if !child.wait()?.success() {
            bail!("git pack-objects failed");
        }
        times.push(start.elapsed());
        size = pack.len();
    }
    Ok((median(&times), size))
}
