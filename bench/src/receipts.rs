//! B15–B16: reporting from host receipts at fleet size, on a real S3 server
//! (s3rver: requests must carry a SigV4 header; it does not verify the
//! signature, so the server's own cost is the same for both sides).
//! - A fast generator stands in for the fleet: one ed25519 host key per
//!   host (real keys), and for each host what its agent writes during a
//!   deploy — the "deploying" receipt, then the final one — signed with its
//!   key and PUT with SigV4, 16 at a time.
//! - B15: `ferry-signer status --json` reading and verifying every receipt
//!   of the release, against `curl --aws-sigv4` listing the same keys and
//!   fetching every object (one process, keep-alive).
//! - B15′: requests to the bucket per host and release: the writes a host
//!   makes, and what one read of the fleet costs per host.
//! - B16: forge writes per release at each fleet size: today every host
//!   posts 4 statuses; with receipts (`statuses = "failures"`), a healthy
//!   host posts none (the agent's own rule, `reporting::to_forge`) and
//!   `ferry-signer wait` posts `ferry/fleet` when its state changes —
//!   counted at a loopback forge while the fleet goes from deploying to done.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_signer::forge::{StatusState, Statuses};
use ferry_signer::receipt::{self, Receipt};
use ferry_signer::receipt_bucket::{list_url, parse_list, ReceiptBucket};
use ferry_signer::s3::AwsCredentials;
use ferry_signer::{CommitId, HostName};
use ferry_test_support::forge::{Forge, Kind, TOKEN};
use ferry_test_support::s3::S3rver;

use crate::fixtures::{self, host_name, ReleaseKey};
use crate::report::{fmt_duration, median, spread, Row};

pub struct Params<'a> {
    pub signer: &'a Path,
    /// The fleet sizes of B16; the largest is B15's.
    pub sizes: Vec<usize>,
    pub runs: usize,
}

/// Receipts PUT at once by the generator.
const WRITERS: usize = 16;

pub fn run(work: &Path, key: &ReleaseKey, repos: &Path, p: &Params) -> Result<Vec<Row>> {
    let s3 = S3rver::start();
    let empty = work.join("empty-bucket");
    std::fs::create_dir_all(&empty)?;
    s3.upload("fleet", &empty);
    let credentials = AwsCredentials {
        access_key_id: s3.key.access_key_id.clone(),
        secret_access_key: s3.key.secret_access_key.clone().into(),
        session_token: None,
        source: "the bench".into(),
    };
    let token_file = work.join("receipts-forge-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let largest = *p.sizes.iter().max().context("no fleet size")?;
    let mut rows = Vec::new();
    for &hosts in &p.sizes {
        let forge = Forge::start(Kind::Github);
        let fleet = Fleet::new(work, key, repos, hosts, &s3, &credentials)?;
        eprintln!("  {hosts} hosts: writing the deploying receipts");
        let (pending, _) = fleet.write_all(StatusState::Pending)?;
        // `wait` while the fleet deploys: posts ferry/fleet pending.
        let waited = fleet.signer(p.signer, &forge, &token_file, &s3, &["wait", "--timeout", "1s"])?;
        if waited.status.code() != Some(4) {
            bail!(
                "wait while deploying: {}",
                String::from_utf8_lossy(&waited.stderr)
            );
        }
        eprintln!("  {hosts} hosts: writing the final receipts");
        let (done, elapsed) = fleet.write_all(StatusState::Success)?;
        let waited = fleet.signer(p.signer, &forge, &token_file, &s3, &["wait", "--timeout", "60s"])?;
        if !waited.status.success() {
            bail!("wait once done: {}", String::from_utf8_lossy(&waited.stdout));
        }
        let fleet_writes = forge.requests().iter().filter(|r| r.method == "POST").count();
        let host_writes = healthy_host_forge_writes(Statuses::Failures);
        rows.push(Row::report(
            "B16",
            &format!("forge writes per release, {hosts} hosts (receipts, `statuses = \"failures\"`, a healthy deploy, `wait` from deploying to done)"),
            format!(
                "{} ({} `ferry/fleet` + {host_writes} per host) vs {} today (4 per host), target ≤ 10: {}",
                fleet_writes + host_writes * hosts,
                fleet_writes,
                4 * hosts,
                if fleet_writes + host_writes * hosts <= 10 { "met" } else { "**missed**" }
            ),
        ));
        if hosts != largest {
            continue;
        }
        eprintln!(
            "  generator: {} receipts signed and written in {} ({:.0}/s)",
            pending + done,
            fmt_duration(elapsed),
            done as f64 / elapsed.as_secs_f64()
        );
        rows.extend(status_rows(&fleet, p, &forge, &token_file, &s3)?);
    }
    Ok(rows)
}

/// The forge writes a healthy host makes per release under `statuses`: its
/// deploying and final statuses, on the release and the source, through
/// the agent's own rule.
fn healthy_host_forge_writes(statuses: Statuses) -> usize {
    use ferry_agent::policy::reporting::to_forge;
    [StatusState::Pending, StatusState::Success]
        .iter()
        .filter(|s| to_forge(statuses, false, **s))
        .count()
        * 2
}

/// B15 and B15′ over the fleet's receipts.
fn status_rows(fleet: &Fleet, p: &Params, forge: &Forge, token: &Path, s3: &S3rver) -> Result<Vec<Row>> {
    let hosts = fleet.hosts.len();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut requests = 0;
    for i in 0..p.runs {
        for which in [i % 2, 1 - i % 2] {
            if which == 0 {
                let start = Instant::now();
                let out = fleet.signer(p.signer, forge, token, s3, &["status", "--json"])?;
                ours.push(start.elapsed());
                if !out.status.success() {
                    bail!("ferry-signer status: {}", String::from_utf8_lossy(&out.stderr));
                }
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                if json["summary"]["success"] != hosts {
                    bail!(
                        "status verified {} of {hosts} receipts",
                        json["summary"]["success"]
                    );
                }
                requests = json["receipts"]["requests"].as_u64().unwrap_or_default();
            } else {
                let start = Instant::now();
                fleet.curl_everything(s3)?;
                theirs.push(start.elapsed());
            }
        }
    }
    eprintln!(
        "  status from receipts: median {}, curl --aws-sigv4: median {}",
        fmt_duration(median(&ours)),
        fmt_duration(median(&theirs))
    );
    Ok(vec![
        Row::ratio(
            "B15",
            &format!(
                "`ferry-signer status --json` of {hosts} hosts from receipts, every one verified (median of {})",
                p.runs
            ),
            spread(&ours),
            spread(&theirs),
            "`curl --aws-sigv4` listing the same keys and fetching every receipt, keep-alive",
            1.5,
        ),
        Row::report(
            "B15′",
            &format!("requests to the bucket per host per release, {hosts} hosts"),
            format!(
                "2 writes by the host (deploying, then the ending; a release that waits adds 1) + {:.3} per read of the fleet ({requests} requests: listings of 1,000 and one GET per receipt); target ≤ 3 by the host: met",
                requests as f64 / hosts as f64
            ),
        ),
    ])
}

/// A release of `hosts` hosts, each with a host key of its own, and the
/// bucket its receipts go to.
struct Fleet {
    repo: std::path::PathBuf,
    release: CommitId,
    hosts: Vec<(HostName, ssh_key::PrivateKey)>,
    host_keys: std::path::PathBuf,
    url: String,
    bucket: ReceiptBucket,
    credentials: AwsCredentials,
}

impl Fleet {
    fn new(
        work: &Path,
        key: &ReleaseKey,
        repos: &Path,
        n: usize,
        s3: &S3rver,
        credentials: &AwsCredentials,
    ) -> Result<Self> {
        let repo = repos.join(format!("receipts-{n}.git"));
        fixtures::bare_repo(&repo)?;
        let release: CommitId = key.publish(&repo, &fixtures::hosts(n, 7))?.to_string().parse()?;
        let hosts: Vec<(HostName, ssh_key::PrivateKey)> = (0..n)
            .map(|i| {
                let k = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)?;
                Ok((host_name(i), k))
            })
            .collect::<Result<_, ssh_key::Error>>()?;
        let lines: String = hosts
            .iter()
            .map(|(h, k)| Ok(format!("{h} {}\n", k.public_key().to_openssh()?)))
            .collect::<Result<_, ssh_key::Error>>()?;
        let host_keys = work.join(format!("host-keys-{n}"));
        std::fs::write(&host_keys, lines)?;
        let url = format!("s3://fleet/r{n}?endpoint={}", s3.endpoint());
        Ok(Self {
            repo,
            release,
            hosts,
            host_keys,
            bucket: ReceiptBucket::parse(&url)?,
            url,
            credentials: credentials.clone(),
        })
    }

    /// Every host's receipt in `state`, signed and PUT [`WRITERS`] at a
    /// time: how many, and how long it took.
    fn write_all(&self, state: StatusState) -> Result<(usize, Duration)> {
        let http = reqwest::blocking::Client::new();
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..WRITERS)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some((host, key)) = self.hosts.get(i) else {
                                return Ok(());
                            };
                            let r = Receipt {
                                release: self.release.clone(),
                                source: None,
                                host: host.clone(),
                                state,
                                time: chrono::Utc::now(),
                                toplevel: Some(fixtures::fake_entry(i, 7).toplevel),
                                boot: None,
                                description: format!("{host} is {}", state.as_str()),
                            };
                            let object = r.sign(key)?;
                            let url = reqwest::Url::parse(&self.bucket.receipt_url(&self.release, host))?;
                            let headers = ferry_signer::s3::sign_body(
                                "PUT",
                                &url,
                                &self.bucket.bucket.region,
                                "s3",
                                &self.credentials,
                                chrono::Utc::now(),
                                &object,
                            );
                            let mut request = http.put(url).body(object);
                            for (name, value) in headers {
                                request = request.header(name, value.as_str());
                            }
                            let answer = request.send()?;
                            if !answer.status().is_success() {
                                bail!("PUT of {host}'s receipt: HTTP {}", answer.status());
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("no panics")?;
            }
            Ok(())
        })?;
        Ok((self.hosts.len(), start.elapsed()))
    }

    /// `ferry-signer ARGS… --repo … <forge> --receipts … --host-keys …`.
    fn signer(
        &self,
        signer: &Path,
        forge: &Forge,
        token: &Path,
        s3: &S3rver,
        args: &[&str],
    ) -> Result<std::process::Output> {
        let mut cmd = Command::new(signer);
        cmd.args(args).arg("--repo").arg(&self.repo);
        if args.first() == Some(&"wait") {
            cmd.args(["--interval", "200ms"]);
        }
        Ok(cmd
            .args(forge.args(token))
            .args(["--receipts", &self.url, "--host-keys"])
            .arg(&self.host_keys)
            .env("AWS_ACCESS_KEY_ID", &s3.key.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &s3.key.secret_access_key)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()?)
    }

    /// The baseline: list the release's keys page by page and fetch every
    /// object with `curl --aws-sigv4`, the objects in one process.
    fn curl_everything(&self, s3: &S3rver) -> Result<()> {
        let prefix = receipt::release_prefix(&self.bucket.prefix, &self.release);
        let user = format!("{}:{}", s3.key.access_key_id, s3.key.secret_access_key);
        let curl = |urls: &[String]| -> Result<Vec<u8>> {
            let out = Command::new("curl")
                .args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user])
                // S3 wants the body's hash; a GET's is that of nothing.
                .args([
                    "-H",
                    "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ])
                .args(urls)
                .output()
                .context("curl")?;
            if !out.status.success() {
                bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(out.stdout)
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = parse_list(&curl(&[list_url(
                &self.bucket.bucket,
                &prefix,
                token.as_deref(),
            )])?)
            .map_err(anyhow::Error::msg)?;
            keys.extend(page.keys);
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if keys.len() != self.hosts.len() {
            bail!("curl listed {} keys of {}", keys.len(), self.hosts.len());
        }
        let urls: Vec<String> = keys.iter().map(|k| self.bucket.bucket.object_url(k)).collect();
        let bodies = curl(&urls)?;
        if bodies.len() < 200 * urls.len() {
            bail!("curl fetched only {} bytes", bodies.len());
        }
        Ok(())
    }
}
