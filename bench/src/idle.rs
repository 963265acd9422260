//! B1–B3: what the running daemon costs while nothing changes. `ferry-agent
//! run` polls a loopback `git daemon` every second; each poll's wall time
//! comes from its own debug log line (`poll finished elapsed_us=…`), CPU time
//! from a cgroup of the daemon's own around the measured polls (`cpu.rs`:
//! microseconds, ticks where no cgroup can be made), memory from
//! /proc/PID/status. After each poll, while the daemon sleeps, one
//! `git ls-remote` of the same branch runs as the baseline, so both see the
//! same machine at the same moments.
//!
//! B12: the same daemon following a static mirror of the branch
//! (`ferry-signer mirror`, served by nginx), against the same `git
//! ls-remote`; and the bytes each no-change poll moves, from nginx's log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cpu::CpuClock;
use crate::fixtures::{self, git_cmd, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, spread, Row};

pub struct Params<'a> {
    pub agent: &'a Path,
    pub polls: usize,
}

pub fn run(work: &Path, key: &ReleaseKey, repos: &Path, port: u16, p: &Params<'_>) -> Result<Vec<Row>> {
    one_release(key, repos, "idle.git")?;
    let url = format!("git://127.0.0.1:{port}/idle.git");
    let m = follow(&work.join("idle"), key, &url, &url, "", p)?;
    let cpu_ms = m.cpu.as_secs_f64() * 1e3 / p.polls as f64;
    // The same daemon with metrics on: the textfile written after every
    // poll, the endpoint listening (scraped by nobody meanwhile).
    let metrics = work.join("idle-metrics");
    let with_metrics = format!(
        "[metrics]\ntextfile_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\n",
        metrics.join("textfile").display(),
        ferry_test_support::free_port()
    );
    let mm = follow(&metrics, key, &url, &url, &with_metrics, p)?;
    let metrics_cpu_ms = mm.cpu.as_secs_f64() * 1e3 / p.polls as f64;
    Ok(vec![
        Row::ratio(
            "B1",
            &format!("wall time of one no-change poll, daemon (median of {})", p.polls),
            spread(&m.poll_wall),
            spread(&m.ls_remote),
            "`git ls-remote`, protocol v0",
            1.0,
        ),
        Row::reference(
            "B1′",
            "the same, against the server's answer alone (reference)",
            spread(&m.poll_wall),
            spread(&m.floor),
            "raw git:// request, advertisement read",
        ),
        Row::absolute(
            "B2",
            &format!(
                "CPU time per no-change poll, daemon (over {} polls; {})",
                p.polls, m.cpu_resolution
            ),
            cpu_ms,
            "ms",
            1.0,
        ),
        Row::absolute(
            "B2′",
            &format!(
                "the same with metrics on (textfile written every poll, endpoint listening; {:.2} ms against {:.2} ms in all without)",
                mm.cpu.as_secs_f64() * 1e3,
                m.cpu.as_secs_f64() * 1e3
            ),
            metrics_cpu_ms,
            "ms",
            2.0,
        ),
        Row::absolute(
            "B3",
            &format!(
                "daemon resident memory after {} polls (peak {:.1} MiB)",
                p.polls,
                m.hwm_kib as f64 / 1024.0
            ),
            m.rss_kib as f64 / 1024.0,
            "MiB",
            10.0,
        ),
    ])
}

/// B12: the daemon polling a static mirror of the same kind of branch.
pub fn run_mirror(
    work: &Path,
    key: &ReleaseKey,
    repos: &Path,
    port: u16,
    p: &Params<'_>,
) -> Result<Vec<Row>> {
    let repo = one_release(key, repos, "idle-mirrored.git")?;
    let www = work.join("idle-mirror-www");
    let git = git2::Repository::open(&repo)?;
    ferry_signer::mirror::update(
        &git,
        BRANCH,
        &ferry_signer::mirror::DirStore(www.join("idle.git")),
    )?;
    let nginx =
        ferry_test_support::nginx::Nginx::serve(&www, &ferry_test_support::nginx::Access::Anyone, false)?;
    let mirror_url = format!("{}/idle.git", nginx.url());
    let baseline = format!("git://127.0.0.1:{port}/idle-mirrored.git");
    let before = nginx.requests().len();
    let m = follow(&work.join("idle-mirror"), key, &mirror_url, &baseline, "", p)?;
    let polls: Vec<_> = nginx.requests()[before..]
        .iter()
        .filter(|r| r.target == "/idle.git/info/refs" && r.status == 304)
        .map(|r| r.bytes_sent + r.request_length)
        .collect();
    if polls.len() < p.polls {
        bail!(
            "nginx logged {} polls answered 304, expected at least {}",
            polls.len(),
            p.polls
        );
    }
    let bytes = polls.iter().sum::<u64>() as f64 / polls.len() as f64;
    Ok(vec![
        Row::ratio(
            "B12",
            &format!(
                "wall time of one no-change poll from a static mirror (nginx, conditional GET), daemon (median of {})",
                p.polls
            ),
            spread(&m.poll_wall),
            spread(&m.ls_remote),
            "`git ls-remote` of the same branch from `git daemon`, protocol v0",
            0.5,
        ),
        Row::absolute(
            "B12′",
            "bytes one no-change poll of a static mirror moves (request and 304 answer, headers included)",
            bytes,
            "bytes",
            1024.0,
        ),
    ])
}

/// The remote both figures poll: a bare repository `repos/name` with one
/// release that does not name the daemon's host, so its first poll
/// fetches, verifies and refuses it, and every later poll finds the tip
/// unchanged.
fn one_release(key: &ReleaseKey, repos: &Path, name: &str) -> Result<std::path::PathBuf> {
    let repo = repos.join(name);
    fixtures::bare_repo(&repo)?;
    key.publish(&repo, &fixtures::hosts(1, 0))?;
    Ok(repo)
}

/// Runs `ferry-agent run` following `url` and measures its no-change polls,
/// with `git ls-remote` of `baseline` between them.
/// Runs the daemon on `url` (`extra`: more configuration sections) and
/// measures its no-change polls against `git ls-remote` of `baseline`.
fn follow(
    dir: &Path,
    key: &ReleaseKey,
    url: &str,
    baseline: &str,
    extra: &str,
    p: &Params<'_>,
) -> Result<Measured> {
    std::fs::create_dir_all(dir.join("profiles"))?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"host = "bench"
state_dir = "{state}"
[source]
url = "{url}"
branch = "{BRANCH}"
allowed_signers = "{signers}"
poll_interval = "1s"
jitter = "0s"
[cache]
substituters = ["http://127.0.0.1:9"]
trusted_public_keys = ["bench-cache-1:{zero_key}"]
[switch]
profile = "{profiles}/system"
[report]
forge = "none"
{extra}"#,
            state = dir.join("state").display(),
            signers = key.allowed_signers_file.display(),
            profiles = dir.join("profiles").display(),
            // Any 32 bytes: the cache is never asked during no-change polls.
            zero_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
    )?;

    let mut child = Command::new(p.agent)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "info,ferry_agent::app::daemon=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start ferry-agent run")?;
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped");
    let (tx, polls) = mpsc::channel::<Duration>();
    // Not beside agent.toml: the daemon watches that directory, and each
    // line logged there would wake it (a host logs to the journal).
    std::fs::create_dir_all(dir.join("log"))?;
    let log = dir.join("log/agent.log");
    let reader = std::thread::spawn(move || {
        let mut copy = std::fs::File::create(log).ok();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = copy.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            if let Some(us) = poll_micros(&line) {
                if tx.send(Duration::from_micros(us)).is_err() {
                    break;
                }
            }
        }
    });
    let result = measure(pid, &polls, baseline, p.polls);
    // Measured; the daemon's state is throwaway, so SIGKILL (no `kill` command needed).
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    result.with_context(|| format!("see the daemon's log in {}", dir.join("log/agent.log").display()))
}

struct Measured {
    poll_wall: Vec<Duration>,
    ls_remote: Vec<Duration>,
    /// The least any client can spend: one request, the advertisement read.
    floor: Vec<Duration>,
    cpu: Duration,
    cpu_resolution: String,
    rss_kib: u64,
    hwm_kib: u64,
}

fn measure(pid: u32, polls: &mpsc::Receiver<Duration>, url: &str, n: usize) -> Result<Measured> {
    let wait = |what: &str| {
        polls
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("the daemon logged no {what} poll within 30 s"))
    };
    // The first poll sees the release (fetch, verify, refuse); the second is
    // the first no-change poll, and starts the CPU measurement.
    wait("first")?;
    wait("second")?;
    let clock = CpuClock::of(pid)?;
    let cpu0 = clock.read()?;
    let mut poll_wall = Vec::with_capacity(n);
    let mut ls_remote = Vec::with_capacity(n);
    let mut floor = Vec::with_capacity(n);
    for i in 0..n {
        poll_wall.push(wait(&format!("no-change #{i}"))?);
        // The baselines, half-way through the daemon's sleep, so they too
        // meet a server (and CPU) that has been idle for a while.
        std::thread::sleep(Duration::from_millis(400));
        let start = Instant::now();
        raw_advertisement(url)?;
        floor.push(start.elapsed());
        let start = Instant::now();
        // Protocol v0, the one libgit2 speaks: git's default v2 adds a round
        // trip that costs 40 ms on loopback (Nagle and delayed ACKs), which
        // would flatter the daemon.
        let out = git_cmd()
            .args([
                "-c",
                "protocol.version=0",
                "ls-remote",
                url,
                &format!("refs/heads/{BRANCH}"),
            ])
            .stderr(Stdio::null())
            .output()?;
        ls_remote.push(start.elapsed());
        if !out.status.success() || out.stdout.is_empty() {
            bail!("git ls-remote {url} failed");
        }
    }
    let cpu = clock.read()? - cpu0;
    let (rss_kib, hwm_kib) = memory_kib(pid)?;
    eprintln!(
        "  {n} no-change polls: {} of CPU ({}), VmRSS {rss_kib} KiB",
        fmt_duration(cpu),
        clock.resolution()
    );
    Ok(Measured {
        poll_wall,
        ls_remote,
        floor,
        cpu,
        cpu_resolution: clock.resolution(),
        rss_kib,
        hwm_kib,
    })
}

/// What any client must wait for: connect, send the git:// upload-pack
/// request, read the ref advertisement to its flush packet, hang up.
fn raw_advertisement(url: &str) -> Result<()> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("git://").context("a git:// url")?;
    let (host, path) = rest.split_once('/').context("a path")?;
    let mut stream = std::net::TcpStream::connect(host)?;
    let request = format!("git-upload-pack /{path}\0host={host}\0");
    write!(stream, "{:04x}{request}", request.len() + 4)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The advertisement ends with a flush packet.
    while !buf.ends_with(b"0000") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("{url} closed before the end of its advertisement");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"0000")?;
    Ok(())
}

/// `elapsed_us=N` of a `poll finished` log line.
fn poll_micros(line: &str) -> Option<u64> {
    if !line.contains("poll finished") {
        return None;
    }
    let rest = &line[line.find("elapsed_us=")? + "elapsed_us=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// utime + stime of a process, in clock ticks.
/// VmRSS and VmHWM in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line[name.len()..].trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_poll_line() {
        let line = "2026-01-01T00:00:00.000000Z DEBUG poll finished elapsed_us=1234";
        assert_eq!(super::poll_micros(line), Some(1234));
        assert_eq!(super::poll_micros("INFO ferry-agent started"), None);
    }
}
