//! B10: B4 from a private cache. nginx (the one `scripts/install-deps`
//! provides) serves the same signed cache behind HTTP Basic auth; a netrc in
//! Nix's format holds the credentials. The agent's path — fetch → verify →
//! select → preflight with the netrc → realise through its loopback relay
//! (`realise_via_relay`, the live code) — against `nix-store -r` reading the
//! same cache itself with the same netrc (`--option netrc-file`). B10′: the
//! same behind a bearer token (Attic's and Cachix's way), which Nix cannot
//! send: its baseline is `nix-store -r` of the same cache served openly.
//! B10″: the same from an `s3://` bucket (moto's S3 server), read with
//! SigV4; Nix 2.8 here cannot open an `s3://` store, so its baseline reads
//! the same bucket of the same server as a plain HTTP cache (moto runs
//! with authentication off so that both can).
//! Every run starts with the closure deleted and Nix's narinfo disk cache
//! empty.

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
use ferry_test_support::s3::Moto;

use crate::closure::ClosureFixture;
use crate::fixtures::{self, ReleaseKey, BRANCH};
use crate::report::{fmt_duration, spread, Row};

pub struct Params {
    pub runs: usize,
}

/// How the cache is guarded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// HTTP Basic from a netrc, which Nix reads too.
    Basic,
    /// `Authorization: Bearer`, which Nix cannot send.
    Bearer,
    /// An `s3://` bucket read with SigV4, which this Nix cannot read.
    S3,
}

pub fn run(
    work: &Path,
    key: &ReleaseKey,
    repos: &Path,
    git_port: u16,
    fx: &ClosureFixture,
    p: &Params,
    guard: Guard,
) -> Result<Vec<Row>> {
    let netrc = work.join("netrc");
    // The guarded cache the agent reads (kept alive for the run), its URL,
    // what Nix reads for the baseline, and the agent's credentials. Nix
    // reads the guarded cache itself where it can (a netrc); else the same
    // objects served openly (a bearer token, S3).
    let (server, cache_url, baseline_url, credentials) = match guard {
        Guard::Basic => {
            std::fs::write(&netrc, "machine 127.0.0.1 login deploy password bench-secret\n")?;
            let access = Access::Basic {
                user: "deploy".into(),
                password: "bench-secret".into(),
            };
            let nginx = Nginx::serve(&fx.cache.dir, &access, false).context("starting nginx")?;
            let url = nginx.url();
            let credentials = CacheCredentials {
                netrc_file: Some(netrc.clone()),
                ..Default::default()
            };
            (
                Server::Nginx {
                    guarded: nginx,
                    _open: None,
                },
                url.clone(),
                url,
                credentials,
            )
        }
        Guard::Bearer => {
            let token = work.join("bearer-token");
            std::fs::write(&token, "bench-token\n")?;
            let access = Access::Bearer {
                token: "bench-token".into(),
                forbidden: None,
            };
            let nginx = Nginx::serve(&fx.cache.dir, &access, false).context("starting nginx")?;
            let open = Nginx::serve(&fx.cache.dir, &Access::Anyone, false).context("starting nginx")?;
            let (url, open_url) = (nginx.url(), open.url());
            let credentials = CacheCredentials {
                bearer_token_files: [("127.0.0.1".to_owned(), token)].into(),
                ..Default::default()
            };
            (
                Server::Nginx {
                    guarded: nginx,
                    _open: Some(open),
                },
                url,
                open_url,
                credentials,
            )
        }
        Guard::S3 => {
            let aws = work.join("aws-credentials");
            std::fs::write(
                &aws,
                "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = bench-secret\n",
            )?;
            let moto = Moto::start_without_auth();
            moto.upload_public_cache("nix-cache", "us-east-1", &fx.cache.dir);
            let url = format!("s3://nix-cache?region=us-east-1&endpoint={}", moto.endpoint());
            let open_url = format!("{}/nix-cache", moto.endpoint());
            let credentials = CacheCredentials {
                s3_credentials_file: Some(aws),
                ..Default::default()
            };
            (Server::Moto { _moto: moto }, url, open_url, credentials)
        }
    };
    let name = match guard {
        Guard::Basic => "private",
        Guard::Bearer => "private-bearer",
        Guard::S3 => "private-s3",
    };

    let (host, url) = crate::closure::one_host_release(repos, name, key, git_port, fx)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agent_side = Agent {
        url: &url,
        key,
        host: &host,
        fx,
        cache: cache_url,
        credentials,
    };
    let (agent, baseline) = crate::closure::paired_runs(
        fx,
        p.runs,
        |i| {
            let dir = work.join(format!("{name}/agent-{i}"));
            let t = runtime.block_on(agent_side.run(&dir))?;
            std::fs::remove_dir_all(&dir)?;
            Ok(t)
        },
        || {
            let start = Instant::now();
            let mut nix = Command::new("nix-store");
            nix.args(["-r", &fx.toplevel])
                .args(["--option", "substituters", &baseline_url])
                .args(["--option", "trusted-public-keys", &fx.cache.public_key]);
            if guard == Guard::Basic {
                nix.arg("--option").arg("netrc-file").arg(&netrc);
            }
            fixtures::run(&mut nix)?;
            let t = start.elapsed();
            eprintln!(
                "  nix-store -r ({}): {}",
                match guard {
                    Guard::Basic => "with the netrc",
                    Guard::Bearer => "the open cache",
                    Guard::S3 => "the same bucket over plain HTTP",
                },
                fmt_duration(t)
            );
            Ok(t)
        },
    )?;
    // Both sides really went through the credentials check.
    if let Server::Nginx { guarded: nginx, .. } = &server {
        let denied = nginx.requests().iter().filter(|r| r.status != 200).count();
        if denied > 0 {
            bail!("nginx refused {denied} requests: the credentials were not sent");
        }
    }
    let (id, guarded, baseline_is) = match guard {
        Guard::Basic => (
            "B10",
            "new release detected → closure present from a private cache (nginx, HTTP Basic from a netrc)",
            "`nix-store -r` with `netrc-file`",
        ),
        Guard::Bearer => (
            "B10′",
            "the same behind a bearer token (nginx)",
            "`nix-store -r` of the same cache served openly: Nix cannot send a bearer token",
        ),
        Guard::S3 => (
            "B10″",
            "the same from an `s3://` bucket read with SigV4 (moto's S3 server)",
            "`nix-store -r` of the same bucket as a plain HTTP cache: this Nix cannot open `s3://`",
        ),
    };
    Ok(vec![Row::ratio(
        id,
        &format!(
            "{guarded}, {}-path closure (median of {})",
            fx.paths.len(),
            p.runs
        ),
        spread(&agent),
        spread(&baseline),
        baseline_is,
        1.10,
    )])
}

/// The servers a run reads, kept alive until it ends: nginx guarding the
/// cache (and serving it openly beside, for a baseline Nix cannot send the
/// credentials of), or moto serving it as a bucket.
enum Server {
    Nginx { guarded: Nginx, _open: Option<Nginx> },
    Moto { _moto: Moto },
}

/// The agent's side of one run.
struct Agent<'a> {
    url: &'a str,
    key: &'a ReleaseKey,
    host: &'a HostName,
    fx: &'a ClosureFixture,
    cache: String,
    credentials: CacheCredentials,
}

impl Agent<'_> {
    /// One deploy's worth of the agent's pipeline up to a realised closure,
    /// timed from the moment the new tip is known.
    async fn run(&self, dir: &Path) -> Result<Duration> {
        let source = Source::open(&dir.join("deploy.git"), self.url, BRANCH, None)?;
        let trusted: CachePublicKey = self.fx.cache.public_key.parse()?;
        let caches = BinaryCaches::with_credentials(
            std::slice::from_ref(&self.cache),
            std::slice::from_ref(&trusted),
            self.credentials.clone(),
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
