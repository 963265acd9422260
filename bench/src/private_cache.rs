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
use chrono::Utc;
use ferry_agent::cache::BinaryCaches;
use ferry_agent::credentials::CacheCredentials;
use ferry_agent::decide::{self, Verdict};
use ferry_agent::narinfo::CachePublicKey;
use ferry_agent::seams::realise_via_relay;
use ferry_agent::source::Source;
use ferry_agent::store::Store;
use ferry_signer::publish::ReleaseChanges;
use ferry_signer::{Action, HostEntry, HostName};
use ferry_test_support::nginx::{Access, Nginx};

use crate::closure::ClosureFixture;
use crate::fixtures::{self, nix, ReleaseKey, BRANCH};
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

    let repo = repos.join("private.git");
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
    let url = format!("git://127.0.0.1:{git_port}/private.git");
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

    let mut agent = Vec::new();
    let mut baseline = Vec::new();
    for i in 0..p.runs {
        // Alternate the order, so a drift in the machine's speed hits both.
        for agent_first in [i % 2 == 0, i % 2 == 1] {
            fx.evict()?;
            if agent_first {
                let dir = work.join(format!("private/agent-{i}"));
                agent.push(runtime.block_on(agent_side.run(&dir))?);
                std::fs::remove_dir_all(&dir)?;
            } else {
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
                baseline.push(t);
            }
            if !nix::is_valid(&fx.toplevel) {
                bail!("{} is not in the store after the run", fx.toplevel);
            }
        }
    }
    fx.evict()?;
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
        source.fetch(tip)?;
        let verified =
            ferry_signer::verify::verify_release_commit(source.repo(), tip, &self.key.signers, Utc::now())?;
        let entry = match decide::judge(&verified, self.host, None, false, None) {
            Verdict::Deploy(entry) => entry,
            other => bail!("expected a deploy, got {other:?}"),
        };
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
