//! B10: B4 from a private cache. nginx (the one `scripts/install-deps`
//! provides) serves the same signed cache behind HTTP Basic auth; a netrc in
//! Nix's format holds the credentials. The agent's path — fetch → verify →
//! select → preflight with the netrc → realise through its loopback relay
//! (`realise_via_relay`, the live code) — against `nix-store -r` reading the
//! same cache itself with the same netrc (`--option netrc-file`). Every run
//! starts with the closure deleted and Nix's narinfo disk cache empty.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_agent::io::cache::client::BinaryCaches;
use ferry_agent::io::cache::credentials::CacheCredentials;
use ferry_agent::io::cache::narinfo::CachePublicKey;
use ferry_agent::io::cache::relay::realise_via_relay;
use ferry_agent::io::git::source::Source;
use ferry_agent::io::nix::Store;
use ferry_signer::HostName;
use ferry_test_support::nginx::{Access, Nginx};

use crate::closure::ClosureFixture;
use crate::fixtures::{self, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, median, Row};

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
    let access = Access::Basic {
        user: "deploy".into(),
        password: "bench-secret".into(),
    };
    let nginx = Nginx::serve(&fx.cache.dir, &access, false).context("starting nginx")?;
    let netrc = work.join("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login deploy password bench-secret\n")?;

    let (host, url) = crate::closure::one_host_release(repos, "private", key, git_port, fx)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agent_side = Agent {
        url: &url,
        key,
        host: &host,
        fx,
        cache: nginx.url(),
        netrc: &netrc,
    };
    let (agent, baseline) = crate::closure::paired_runs(
        fx,
        p.runs,
        |i| {
            let dir = work.join(format!("private/agent-{i}"));
            let t = runtime.block_on(agent_side.run(&dir))?;
            std::fs::remove_dir_all(&dir)?;
            Ok(t)
        },
        || {
            let start = Instant::now();
            fixtures::run(
                Command::new("nix-store")
                    .args(["-r", &fx.toplevel])
                    .args(["--option", "substituters", &nginx.url()])
                    .args(["--option", "trusted-public-keys", &fx.cache.public_key])
                    .arg("--option")
                    .arg("netrc-file")
                    .arg(&netrc),
            )?;
            let t = start.elapsed();
            eprintln!("  nix-store -r with the netrc: {}", fmt_duration(t));
            Ok(t)
        },
    )?;
    // Both sides really went through the credentials check.
    let denied = nginx.requests().iter().filter(|r| r.status != 200).count();
    if denied > 0 {
        bail!("nginx refused {denied} requests: the credentials were not sent");
    }
    Ok(vec![Row::ratio(
        "B10",
        &format!(
            "new release detected → closure present from a private cache (nginx, HTTP Basic from a netrc), {}-path closure (median of {})",
            fx.paths.len(),
            p.runs
        ),
        median(&agent),
        median(&baseline),
        "`nix-store -r` with `netrc-file`",
        1.25,
    )])
}

/// The agent's side of one run.
struct Agent<'a> {
    url: &'a str,
    key: &'a ReleaseKey,
    host: &'a HostName,
    fx: &'a ClosureFixture,
    cache: String,
    netrc: &'a Path,
}

impl Agent<'_> {
    /// One deploy's worth of the agent's pipeline up to a realised closure,
    /// timed from the moment the new tip is known.
    async fn run(&self, dir: &Path) -> Result<Duration> {
        let source = Source::open(&dir.join("deploy.git"), self.url, BRANCH, None)?;
        let trusted: CachePublicKey = self.fx.cache.public_key.parse()?;
        let credentials = CacheCredentials {
            netrc_file: Some(self.netrc.to_owned()),
            ..Default::default()
        };
        let caches = BinaryCaches::with_credentials(
            std::slice::from_ref(&self.cache),
            std::slice::from_ref(&trusted),
            credentials,
        );
        let store = Store {
            profile: dir.join("profile"),
            gc_roots: dir.join("gcroots"),
            substituters: Vec::new(),
            trusted_public_keys: vec![trusted.to_string()],
            realise_timeout: Duration::from_secs(3600),
        };
        let tip = source.remote_tip()?;

        let start = Instant::now();
        let entry = crate::closure::fetch_verify_select(&source, tip, self.key, self.host)?;
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
}
