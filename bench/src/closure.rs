//! B4: from "a new release is on the branch" to "its closure is in the
//! store", through the agent's own code (fetch → verify → select → preflight
//! → realise through the relay, as `LiveStore` realises from any HTTP
//! cache), against `nix-store -r` of the same closure from the same signed
//! cache. The closure is deleted from the store before every run, and
//! Nix's narinfo disk cache is emptied, so every run substitutes all of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use ferry_agent::io::cache::client::BinaryCaches;
use ferry_agent::io::cache::narinfo::CachePublicKey;
use ferry_agent::io::cache::relay::realise_via_relay;
use ferry_agent::io::git::source::Source;
use ferry_agent::io::nix::Store;
use ferry_agent::policy::judge::{self, Verdict};
use ferry_signer::publish::ReleaseChanges;
use ferry_signer::{Action, HostEntry, HostName};

use crate::fixtures::{self, nix, HttpServer, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, spread, Row};

/// The closure, pushed to a signed cache served over HTTP.
pub struct ClosureFixture {
    pub toplevel: String,
    pub paths: Vec<String>,
    pub cache: nix::Cache,
    pub server: HttpServer,
}

impl ClosureFixture {
    /// Builds a `layers × width + 1`-path closure unique to this run, pushes
    /// it to a signed cache and serves it.
    pub fn build(work: &Path, layers: usize, width: usize) -> Result<Self> {
        let dir = work.join("closure");
        std::fs::create_dir_all(&dir)?;
        let seed = format!("bench{}", std::process::id());
        let t = Instant::now();
        let toplevel = nix::build(&dir, "closure", &nix::closure_expr(&seed, layers, width))?;
        let paths = nix::closure(&toplevel)?;
        eprintln!(
            "  built a {}-path closure in {}",
            paths.len(),
            fmt_duration(t.elapsed())
        );
        let cache = nix::Cache::new(&dir, "bench-cache-1")?;
        cache.push(&toplevel)?;
        let server = fixtures::http_server(&cache.dir)?;
        Ok(Self {
            toplevel,
            paths,
            cache,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// Removes the closure from the local store (and Nix's memory of what
    /// the cache holds), so the next realise substitutes all of it.
    pub fn evict(&self) -> Result<()> {
        let present: Vec<String> = self
            .paths
            .iter()
            .filter(|p| Path::new(p).exists())
            .cloned()
            .collect();
        if !present.is_empty() {
            nix::delete(&present)?;
        }
        if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
            let _ = std::fs::remove_dir_all(PathBuf::from(cache).join("nix"));
        }
        if nix::is_valid(&self.toplevel) {
            bail!("{} is still in the store after deletion", self.toplevel);
        }
        Ok(())
    }
}

/// A deploy repository `<repos>/<name>.git` holding one release that gives
/// the host `bench` the fixture's toplevel; the host and the repository's
/// `git://` URL.
pub fn one_host_release(
    repos: &Path,
    name: &str,
    key: &ReleaseKey,
    git_port: u16,
    fx: &ClosureFixture,
) -> Result<(HostName, String)> {
    let repo = repos.join(format!("{name}.git"));
    fixtures::bare_repo(&repo)?;
    let host: HostName = "bench".parse()?;
    let mut changes = ReleaseChanges::default();
    changes.hosts.insert(
        host.clone(),
        HostEntry {
            toplevel: fx.toplevel.parse()?,
            action: Action::Switch,
        },
    );
    key.publish(&repo, &changes)?;
    Ok((host, format!("git://127.0.0.1:{git_port}/{name}.git")))
}

/// Times `runs` pairs of the agent's side and the baseline, each starting
/// with the closure evicted, in alternating order so that a drift in the
/// machine's speed hits both; checks the closure is present after each.
/// `agent` gets the run's number.
pub fn paired_runs(
    fx: &ClosureFixture,
    runs: usize,
    mut agent: impl FnMut(usize) -> Result<Duration>,
    mut baseline: impl FnMut() -> Result<Duration>,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut agent_times, mut baseline_times) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for agent_first in [i % 2 == 0, i % 2 == 1] {
            fx.evict()?;
            if agent_first {
                agent_times.push(agent(i)?);
            } else {
                baseline_times.push(baseline()?);
            }
            if !nix::is_valid(&fx.toplevel) {
                bail!("{} is not in the store after the run", fx.toplevel);
            }
        }
    }
    fx.evict()?;
    Ok((agent_times, baseline_times))
}

/// The agent's pipeline from a known new tip to the host's entry: fetch,
/// verify, select.
pub fn fetch_verify_select(
    source: &Source,
    tip: git2::Oid,
    key: &ReleaseKey,
    host: &HostName,
) -> Result<HostEntry> {
    source.fetch(tip)?;
    let verified = ferry_signer::verify::verify_release_commit(source.repo(), tip, &key.signers, Utc::now())?;
    match judge::judge(&verified, host, None, false, None) {
        Verdict::Deploy(entry) => Ok(entry),
        other => bail!("expected a deploy, got {other:?}"),
    }
}

pub struct Params {
    pub runs: usize,
}

pub fn run(
    work: &Path,
    key: &ReleaseKey,
    repos: &Path,
    git_port: u16,
    fx: &ClosureFixture,
    p: &Params,
) -> Result<Vec<Row>> {
    let (host, url) = one_host_release(repos, "closure", key, git_port, fx)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timed = || {
        paired_runs(
            fx,
            p.runs,
            |i| {
                let dir = work.join(format!("closure/agent-{i}"));
                let t = runtime.block_on(agent_run(&dir, &url, key, &host, fx))?;
                // Its GC root goes with the state directory.
                std::fs::remove_dir_all(&dir)?;
                Ok(t)
            },
            || {
                let start = Instant::now();
                fixtures::run(
                    Command::new("nix-store")
                        .args(["-r", &fx.toplevel])
                        .args(["--option", "substituters", &fx.url()])
                        .args(["--option", "trusted-public-keys", &fx.cache.public_key]),
                )?;
                let t = start.elapsed();
                eprintln!("  nix-store -r: {}", fmt_duration(t));
                Ok(t)
            },
        )
    };
    let (agent, baseline) = timed()?;
    let mut rows = vec![Row::ratio(
        "B4",
        &format!(
            "new release detected → closure present, {}-path closure (median of {})",
            fx.paths.len(),
            p.runs
        ),
        spread(&agent),
        spread(&baseline),
        "`nix-store -r` alone",
        1.05,
    )];
    // Nix 2.16 and later substitute 16 paths at once by default
    // (`max-substitution-jobs`); the Nix here does as many as `max-jobs`
    // allows, which both sides read from NIX_CONFIG (the agent leaves
    // `max-jobs` to the host).
    eprintln!("B4′: the same, substituting {PARALLEL_SUBSTITUTIONS} paths at once on both sides");
    let before = std::env::var_os("NIX_CONFIG");
    let mut config = before.clone().unwrap_or_default();
    config.push(format!("\nmax-jobs = {PARALLEL_SUBSTITUTIONS}\n"));
    std::env::set_var("NIX_CONFIG", config);
    let parallel = timed();
    match before {
        Some(v) => std::env::set_var("NIX_CONFIG", v),
        None => std::env::remove_var("NIX_CONFIG"),
    }
    let (agent, baseline) = parallel?;
    rows.push(Row::ratio(
        "B4′",
        &format!(
            "the same, {PARALLEL_SUBSTITUTIONS} paths substituted at once on both sides, as Nix ≥ 2.16 does by default (median of {})",
            p.runs
        ),
        spread(&agent),
        spread(&baseline),
        "`nix-store -r` alone",
        1.05,
    ));
    Ok(rows)
}

/// How many paths B4′ lets Nix substitute at once: Nix's own default since
/// 2.16.
const PARALLEL_SUBSTITUTIONS: usize = 16;

/// One deploy's worth of the agent's pipeline up to a realised closure, timed
/// from the moment the new tip is known.
async fn agent_run(
    dir: &Path,
    url: &str,
    key: &ReleaseKey,
    host: &HostName,
    fx: &ClosureFixture,
) -> Result<Duration> {
    let source = Source::open(&dir.join("deploy.git"), url, BRANCH, None)?;
    let trusted: CachePublicKey = fx.cache.public_key.parse()?;
    let caches = BinaryCaches::new(&[fx.url()], std::slice::from_ref(&trusted));
    let store = Store {
        profile: dir.join("profile"),
        gc_roots: dir.join("gcroots"),
        substituters: Vec::new(),
        trusted_public_keys: vec![trusted.to_string()],
        realise_timeout: Duration::from_secs(3600),
    };
    let tip = source.remote_tip()?;

    let start = Instant::now();
    let entry = fetch_verify_select(&source, tip, key, host)?;
    let selected = start.elapsed();
    let preflight = caches
        .preflight(&entry.toplevel, Path::new(ferry_signer::names::STORE_DIR))
        .await
        .context("preflight")?;
    let preflighted = start.elapsed();
    realise_via_relay(&store, &caches, &entry.toplevel, "current")
        .await
        .context("realise through the relay")?;
    let total = start.elapsed();
    eprintln!(
        "  agent: {} (fetch+verify+select {}, preflight of {} paths {}, relay realise {})",
        fmt_duration(total),
        fmt_duration(selected),
        preflight.missing,
        fmt_duration(preflighted - selected),
        fmt_duration(total - preflighted)
    );
    Ok(total)
}
