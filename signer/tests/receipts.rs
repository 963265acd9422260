//! Host receipts against the reference tools and real S3 servers: a
//! receipt Ferry signs verifies with `ssh-keygen -Y verify`, one
//! `ssh-keygen -Y sign` makes verifies in Ferry; `status` and `wait` read
//! receipts from moto and from s3rver (two independent S3 servers; moto
//! verifies every SigV4 signature), with a receipt signed by the wrong host key, one
//! replayed from another release and one from a host not in the release
//! each refused or set aside by name; `wait` posts one `ferry/fleet`
//! status; a bucket answering 503 is retried and named, one dripping its
//! answer cut off at the reader's total deadline.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_signer::forge::StatusState;
use ferry_signer::receipt::{self, load_host_key, HostKeys, Receipt, Verdict, NAMESPACE};
use ferry_signer::{CommitId, HostName};
use ferry_test_support::s3::{AccessKey, Moto, S3rver};

use crate::common::forge::{Forge, Kind, TOKEN};
use crate::common::*;

const SOURCE: &str = "5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0";
const OTHER_RELEASE: &str = "0123456789abcdef0123456789abcdef01234567";

fn toplevel(host: &str) -> String {
    format!("/nix/store/{}-nixos-system-{host}", "a".repeat(32))
}

/// A deploy repository with one release of `hosts`, each host's SSH host
/// key (from ssh-keygen) and the host-keys file pinning them.
struct Fleet {
    sb: Sandbox,
    repo: PathBuf,
    token: PathBuf,
    host_keys: PathBuf,
}

impl Fleet {
    fn new(hosts: &[&str]) -> Self {
        let sb = Sandbox::new();
        let repo = sb.repo("deploy.git", true);
        let key = sb.ssh_keygen("release-key", "ed25519");
        let token = sb.path("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let map: BTreeMap<&str, String> = hosts.iter().map(|h| (*h, toplevel(h))).collect();
        let file = sb.path("hosts.json");
        std::fs::write(&file, serde_json::to_string(&map).unwrap()).unwrap();
        assert_ok(&sb.release(
            repo.to_str().unwrap(),
            key.to_str().unwrap(),
            &["--hosts-file", file.to_str().unwrap(), "--source", SOURCE],
            &[],
        ));
        // One host key per host and one pinned line each, as ssh-keyscan
        // prints them (with its comment line).
        let mut lines = vec!["# 127.0.0.1:22 SSH-2.0-OpenSSH".to_owned()];
        for h in hosts {
            let key = sb.ssh_keygen(&format!("ssh_host_{h}"), "ed25519");
            lines.push(format!("{h} {}", sb.public_key(&key)));
        }
        let host_keys = sb.path("host-keys");
        std::fs::write(&host_keys, lines.join("\n") + "\n").unwrap();
        Self {
            sb,
            repo,
            token,
            host_keys,
        }
    }

    fn release(&self) -> CommitId {
        self.sb.git(&self.repo, &["rev-parse", "deploy"]).parse().unwrap()
    }

    fn host_key(&self, host: &str) -> PathBuf {
        self.sb.path(&format!("ssh_host_{host}"))
    }

    fn receipt(&self, release: &CommitId, host: &str, state: StatusState, words: &str) -> Receipt {
        Receipt {
            release: release.clone(),
            source: Some(SOURCE.parse().unwrap()),
            host: host.parse().unwrap(),
            state,
            time: chrono::Utc::now(),
            toplevel: Some(toplevel(host).parse().unwrap()),
            boot: Some("0f8e4a3c-2b1d-4c5e-9f60-718293a4b5c6".into()),
            description: words.into(),
        }
    }

    /// Writes `object` as `host`'s receipt for `release` into `dir`, laid
    /// out as keys under `prefix`, for a boto3 upload.
    fn stage(&self, dir: &Path, prefix: &str, release: &CommitId, host: &str, object: &[u8]) {
        let path = dir.join(receipt::object_key(prefix, release, &host.parse().unwrap()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, object).unwrap();
    }

    /// `ferry-signer ARGS… <forge flags> --receipts URL --host-keys FILE`.
    fn run(&self, args: &[&str], forge: &Forge, url: &str, key: &AccessKey) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(forge.args(&self.token));
        all.extend([
            "--receipts".into(),
            url.into(),
            "--host-keys".into(),
            self.host_keys.display().to_string(),
        ]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.sb.signer(
            &refs,
            &[
                ("AWS_ACCESS_KEY_ID", &key.access_key_id),
                ("AWS_SECRET_ACCESS_KEY", &key.secret_access_key),
            ],
        )
    }
}

/// `ssh-keygen ARGS…` with `input` on stdin.
fn ssh_keygen(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("ssh-keygen")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh-keygen is installed (scripts/install-deps)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn receipts_verify_with_ssh_keygen_and_ssh_keygen_signatures_verify_here() {
    let fleet = Fleet::new(&["web1"]);
    let release = fleet.release();
    let web1: HostName = "web1".parse().unwrap();
    let keys = HostKeys::load(&fleet.host_keys).unwrap();
    let r = fleet.receipt(&release, "web1", StatusState::Success, "web1 runs release 1");

    // Ferry signs; ssh-keygen verifies (the host's line in allowed_signers
    // form, the namespace Ferry's).
    let object = r.sign(&load_host_key(&fleet.host_key("web1")).unwrap()).unwrap();
    let (document, signature) = receipt::split(&object).unwrap();
    let sig = fleet.sb.path("receipt.sig");
    std::fs::write(&sig, signature).unwrap();
    let allowed = fleet.sb.allowed_signers(
        "allowed",
        &[format!("web1 {}", fleet.sb.public_key(&fleet.host_key("web1")))],
    );
    let (allowed, sig) = (allowed.to_str().unwrap(), sig.to_str().unwrap());
    let verify = |namespace: &str, document: &[u8]| {
        ssh_keygen(
            &[
                "-Y", "verify", "-f", allowed, "-I", "web1", "-n", namespace, "-s", sig,
            ],
            document,
        )
    };
    let out = verify(NAMESPACE, document);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ssh-keygen agrees that an edited document or another namespace fails.
    let edited = String::from_utf8(document.to_vec())
        .unwrap()
        .replace("state success", "state failure");
    assert!(!verify(NAMESPACE, edited.as_bytes()).status.success());
    assert!(!verify("git", document).status.success());

    // ssh-keygen signs with the host key; Ferry verifies.
    let host_key = fleet.host_key("web1");
    let sign = |namespace: &str| {
        let out = ssh_keygen(
            &[
                "-Y",
                "sign",
                "-q",
                "-f",
                host_key.to_str().unwrap(),
                "-n",
                namespace,
            ],
            document,
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        [document, &out.stdout].concat()
    };
    assert_eq!(
        receipt::verify(&sign(NAMESPACE), &release, &web1, &keys),
        Verdict::Genuine(Receipt {
            time: Receipt::parse(std::str::from_utf8(document).unwrap())
                .unwrap()
                .time,
            ..r
        })
    );
    let git = receipt::verify(&sign("git"), &release, &web1, &keys);
    assert!(
        git.to_string()
            .contains("namespace `git`, not `ferry-receipt-v1`"),
        "{git}"
    );
}

/// Stages the receipts of the refusal cases: web1 genuine, web2 signed by
/// web3's key, web3's receipt of another release replayed under this one,
/// db9 (not in the release, but pinned) genuine; db1 writes none.
fn stage_fleet(fleet: &Fleet, dir: &Path, prefix: &str) {
    let release = fleet.release();
    let key = |h: &str| load_host_key(&fleet.host_key(h)).unwrap();
    let sign = |h: &str, r: &Receipt| r.sign(&key(h)).unwrap();
    let web1 = fleet.receipt(&release, "web1", StatusState::Success, "web1 runs release 1");
    fleet.stage(dir, prefix, &release, "web1", &sign("web1", &web1));
    let web2 = fleet.receipt(&release, "web2", StatusState::Success, "web2 runs release 1");
    fleet.stage(dir, prefix, &release, "web2", &sign("web3", &web2));
    let other: CommitId = OTHER_RELEASE.parse().unwrap();
    let old = fleet.receipt(&other, "web3", StatusState::Success, "web3 runs release 0");
    fleet.stage(dir, prefix, &release, "web3", &sign("web3", &old));
    let db9 = fleet.receipt(&release, "db9", StatusState::Success, "db9 runs release 1");
    fleet.stage(dir, prefix, &release, "db9", &sign("db9", &db9));
}

fn check_status(fleet: &Fleet, forge: &Forge, url: &str, key: &AccessKey) {
    let repo = fleet.repo.to_str().unwrap();
    let out = fleet.run(&["status", "--repo", repo, "--json"], forge, url, key);
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(
        json["summary"],
        serde_json::json!({"hosts": 4, "success": 1, "pending": 0, "failure": 2, "not_reported": 1, "forged": 2}),
    );
    let host = |name: &str| {
        json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(host("web1")["state"], "success");
    assert_eq!(host("web1")["description"], "web1 runs release 1");
    assert_eq!(host("web2")["state"], "forged");
    let web2 = host("web2")["description"].as_str().unwrap().to_owned();
    assert!(web2.contains("which is not a key pinned for web2"), "{web2}");
    assert_eq!(host("web3")["state"], "forged");
    let web3 = host("web3")["description"].as_str().unwrap().to_owned();
    assert!(
        web3.contains(&format!("about release {OTHER_RELEASE} replayed")),
        "{web3}"
    );
    assert_eq!(host("db1")["state"], "not_reported");
    // One listing and one read per receipt.
    assert_eq!(
        json["receipts"],
        serde_json::json!({"requests": 5, "not_in_release": ["db9"], "strays": []})
    );

    let table = assert_ok(&fleet.run(&["status", "--repo", repo], forge, url, key));
    assert!(table.contains("forged: signed by SHA256:"), "{table}");
    assert!(
        table.contains("warning: receipts of 1 host(s) not in the release, not counted: db9"),
        "{table}"
    );
    assert!(
        table.contains("4 hosts: 1 success, 0 pending, 2 failure (2 forged), 1 not reported"),
        "{table}"
    );
}

#[test]
fn status_reads_and_verifies_receipts_from_moto() {
    let fleet = Fleet::new(&["web1", "web2", "web3", "db1"]);
    // db9 is pinned (a host of another release), so its receipt verifies.
    let db9 = fleet.sb.ssh_keygen("ssh_host_db9", "ed25519");
    let mut pinned = std::fs::read_to_string(&fleet.host_keys).unwrap();
    pinned.push_str(&format!("db9 {}\n", fleet.sb.public_key(&db9)));
    std::fs::write(&fleet.host_keys, pinned).unwrap();
    let staged = fleet.sb.path("staged");
    stage_fleet(&fleet, &staged, "ferry/receipts");
    let moto = Moto::start();
    moto.upload_cache("fleet-receipts", "eu-central-1", &staged);
    let url = format!(
        "s3://fleet-receipts/ferry/receipts?region=eu-central-1&endpoint={}",
        moto.endpoint()
    );
    let forge = Forge::start(Kind::Github);
    check_status(&fleet, &forge, &url, &moto.key);

    // The same from the agents' own settings: report.receipts of --agent-config.
    let agent_toml = fleet.sb.path("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "host = \"ci\"\n[report]\nforge = \"github\"\napi_url = \"{}\"\nrepository = \"ops/deploy\"\ntoken_file = \"{}\"\nreceipts = \"{url}\"\n",
            forge.api_url(),
            fleet.token.display()
        ),
    )
    .unwrap();
    let out = fleet.sb.signer(
        &[
            "status",
            "--repo",
            fleet.repo.to_str().unwrap(),
            "--json",
            "--agent-config",
            agent_toml.to_str().unwrap(),
            "--host-keys",
            fleet.host_keys.to_str().unwrap(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &moto.key.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &moto.key.secret_access_key),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(json["summary"]["forged"], 2, "{json}");
    assert_eq!(json["receipts"]["not_in_release"], serde_json::json!(["db9"]));

    // A token that may only read: `wait` says once that it cannot post
    // ferry/fleet, and waits on.
    forge.read_only(true);
    let out = fleet.run(
        &[
            "wait",
            "--repo",
            fleet.repo.to_str().unwrap(),
            "--host",
            "web1",
            "--timeout",
            "1m",
            "--interval",
            "200ms",
        ],
        &forge,
        &url,
        &moto.key,
    );
    let said = assert_ok(&out);
    assert!(
        said.contains("cannot post ferry/fleet on ")
            && said.contains(
                "not posted again by this run (give the token permission to write commit statuses)"
            ),
        "{said}"
    );
    assert!(said.contains("done: 1 host"), "{said}");
    assert!(forge.statuses().is_empty());
    forge.read_only(false);

    // Wrong credentials: refused, the bucket named, the secret never shown.
    let wrong = AccessKey {
        access_key_id: moto.key.access_key_id.clone(),
        secret_access_key: "not-the-secret".into(),
    };
    let out = fleet.run(
        &["status", "--repo", fleet.repo.to_str().unwrap()],
        &forge,
        &url,
        &wrong,
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read receipts from s3://fleet-receipts/ferry/receipts: HTTP 403"),
        "{err}"
    );
    assert!(err.contains("check the credentials"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
}

#[test]
fn status_reads_receipts_from_s3rver_in_pages_and_wait_posts_one_fleet_status() {
    // 1,207 receipts: a full listing page and a second.
    let names: Vec<String> = (0..1203).map(|i| format!("h{i:04}")).collect();
    let mut hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    hosts.extend(["web1", "web2", "web3"]);
    let fleet = Fleet::new(&hosts);
    let db9 = fleet.sb.ssh_keygen("ssh_host_db9", "ed25519");
    let mut pinned = std::fs::read_to_string(&fleet.host_keys).unwrap();
    pinned.push_str(&format!("db9 {}\n", fleet.sb.public_key(&db9)));
    std::fs::write(&fleet.host_keys, pinned).unwrap();
    let staged = fleet.sb.path("staged");
    stage_fleet(&fleet, &staged, "r");
    let release = fleet.release();
    for h in &names {
        let r = fleet.receipt(&release, h, StatusState::Success, &format!("{h} runs release 1"));
        let object = r.sign(&load_host_key(&fleet.host_key(h)).unwrap()).unwrap();
        fleet.stage(&staged, "r", &release, h, &object);
    }
    let s3rver = S3rver::start();
    s3rver.upload("fleet", &staged);
    let url = format!("s3://fleet/r?endpoint={}", s3rver.endpoint());
    let forge = Forge::start(Kind::Gitea);
    let repo = fleet.repo.to_str().unwrap();
    let out = fleet.run(&["status", "--repo", repo, "--json"], &forge, &url, &s3rver.key);
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(
        json["summary"],
        serde_json::json!({"hosts": 1206, "success": 1204, "pending": 0, "failure": 2, "not_reported": 0, "forged": 2}),
    );
    // Two listing pages and one read per receipt (1,203 + 4).
    assert_eq!(json["receipts"]["requests"], 2 + 1207);
    assert_eq!(json["receipts"]["not_in_release"], serde_json::json!(["db9"]));

    // `wait` with a budget of two failures: done, and one ferry/fleet
    // status on the release and one on its source, nothing per host.
    let out = fleet.run(
        &[
            "wait",
            "--repo",
            repo,
            "--max-failures",
            "2",
            "--timeout",
            "1m",
            "--interval",
            "1s",
        ],
        &forge,
        &url,
        &s3rver.key,
    );
    let said = assert_ok(&out);
    assert!(said.contains("done: 1206 hosts"), "{said}");
    assert!(said.contains("web2 failed: forged: signed by"), "{said}");
    let posted = forge.statuses();
    let fleet_statuses: Vec<(String, String, String)> = posted
        .iter()
        .map(|s| (s.sha.clone(), s.state.clone(), s.description.clone()))
        .collect();
    // Within the budget: a success that names the forged.
    let words = "1,204 of 1,206 hosts run release 1; forged: web2, web3".to_owned();
    assert_eq!(
        fleet_statuses,
        [
            (release.to_string(), "success".into(), words.clone()),
            (SOURCE.into(), "success".into(), words),
        ]
    );
    assert!(posted.iter().all(|s| s.context == "ferry/fleet"));
}

/// A loopback "bucket" answering every request with 503 SlowDown, as S3
/// does when asked too fast; returns its port.
fn slow_down_bucket() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf);
            let body =
                "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let _ = write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_bucket_that_answers_503_is_retried_and_named() {
    let fleet = Fleet::new(&["web1"]);
    let url = format!("s3://fleet/r?endpoint=http://127.0.0.1:{}", slow_down_bucket());
    let key = AccessKey {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "never-shown".into(),
    };
    let forge = Forge::start(Kind::Github);
    let repo = fleet.repo.to_str().unwrap();
    let out = fleet.run(&["status", "--repo", repo], &forge, &url, &key);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "cannot read receipts from s3://fleet/r: HTTP 503 (SlowDown): tried again at the next poll"
        ),
        "{err}"
    );
    let out = fleet.run(
        &["wait", "--repo", repo, "--timeout", "1s", "--interval", "200ms"],
        &forge,
        &url,
        &key,
    );
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    let said = stdout(&out);
    assert!(
        said.contains("timed out: the receipts' bucket is unreachable: cannot read receipts from s3://fleet/r: HTTP 503"),
        "{said}"
    );
    assert!(!said.contains("never-shown") && !stderr(&out).contains("never-shown"));
}

#[test]
fn receipts_need_host_keys_and_host_keys_a_bucket() {
    let fleet = Fleet::new(&["web1"]);
    let forge = Forge::start(Kind::Github);
    let repo = fleet.repo.to_str().unwrap();
    let mut args: Vec<String> = ["status", "--repo", repo].map(String::from).to_vec();
    args.extend(forge.args(&fleet.token));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = fleet
        .sb
        .signer(&[&refs[..], &["--receipts", "s3://fleet/r"]].concat(), &[]);
    assert_refused(&out, "no host keys verify them: give --host-keys FILE");
    let keys = fleet.host_keys.to_str().unwrap();
    let out = fleet
        .sb
        .signer(&[&refs[..], &["--host-keys", keys]].concat(), &[]);
    assert_refused(&out, "no bucket is named: give --receipts");
    std::fs::write(&fleet.host_keys, "web1 ssh-ed25519 AAAA-not-base64\n").unwrap();
    let out = fleet.sb.signer(
        &[&refs[..], &["--receipts", "s3://fleet/r", "--host-keys", keys]].concat(),
        &[],
    );
    assert_refused(&out, "line 1: `ssh-ed25519` is not an SSH public key");
}

/// A loopback "bucket" that answers a listing's head at once and then its
/// body a byte now and then; returns its port.
fn dripping_bucket() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf);
                let body = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                for byte in body.bytes() {
                    if stream.write_all(&[byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
            });
        }
    });
    port
}

#[test]
fn a_bucket_that_drips_its_answer_is_cut_off_and_named() {
    let url = format!("s3://fleet/r?endpoint=http://127.0.0.1:{}", dripping_bucket());
    let reader = ferry_signer::receipt_bucket::Reader::with_timeout(
        ferry_signer::receipt_bucket::ReceiptBucket::parse(&url).unwrap(),
        ferry_signer::s3::AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "never-shown".to_owned().into(),
            session_token: None,
            source: "the test".into(),
        },
        std::time::Duration::from_secs(1),
    );
    let release: CommitId = OTHER_RELEASE.parse().unwrap();
    let e = reader.read(&release, &HostKeys::default()).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        e.to_string(),
        "cannot read receipts from s3://fleet/r: no whole answer within 1s: tried again at the next poll"
    );
}

/// Receipts are signed with ed25519 host keys (what OpenSSH and NixOS make
/// by default): an ECDSA or RSA host key is refused by name before anything
/// is signed, while a receipt `ssh-keygen` signs with one verifies.
#[test]
fn other_host_key_types_are_refused_for_signing_and_verified_from_ssh_keygen() {
    let fleet = Fleet::new(&["web1"]);
    let release = fleet.release();
    let web1: HostName = "web1".parse().unwrap();
    let document = fleet
        .receipt(&release, "web1", StatusState::Success, "web1 runs release 1")
        .render();
    for (kind, name) in [("ecdsa", "ecdsa-sha2-nistp256"), ("rsa", "ssh-rsa")] {
        let key = fleet.sb.ssh_keygen(&format!("ssh_host_{kind}_key"), kind);
        let e = load_host_key(&key).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "is {name}: receipts are signed with the host's ed25519 key"
            )),
            "{e}"
        );
        let out = ssh_keygen(
            &["-Y", "sign", "-q", "-f", key.to_str().unwrap(), "-n", NAMESPACE],
            document.as_bytes(),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let object = [document.as_bytes(), &out.stdout].concat();
        let keys = HostKeys::parse(&format!("web1 {}\n", fleet.sb.public_key(&key))).unwrap();
        let verdict = receipt::verify(&object, &release, &web1, &keys);
        assert!(matches!(verdict, Verdict::Genuine(_)), "{kind}: {verdict}");
    }
}
