//! The agent following a static mirror of the deploy branch (written by
//! `ferry-signer mirror`, served by nginx) inside the testbed: a release
//! deploys from it exactly as from the git server, and polls of an unchanged
//! mirror are conditional GETs answered 304; the same from a mirror in a
//! private bucket, read with signed requests; a mirror frozen at the running
//! release is caught once that release expires.

use ferry_test_support::nginx::{Access, Nginx};
use ferry_test_support::nix::Behaviour;

use super::World;

/// Writes `w`'s deploy branch into the mirror directory `www/deploy.git`.
fn publish(w: &World, www: &std::path::Path) {
    let repo = git2::Repository::open(&w.deploy.path).unwrap();
    ferry_signer::mirror::update(
        &repo,
        "deploy",
        &ferry_signer::mirror::DirStore(www.join("deploy.git")),
    )
    .unwrap();
}

/// Points the agent at `source` (lines of `[source]`) instead of the git
/// server.
fn follow(w: &World, source: &str) {
    w.set_config(&w.source_url_line(), source);
}

#[test]
fn deploys_from_a_static_mirror() {
    let w = World::new(&[("b", Behaviour::Succeed)]);
    let www = w.dir.path().join("www");
    let release = w.release("b");
    publish(&w, &www);
    let nginx = Nginx::serve(&www, &Access::Anyone, false).unwrap();
    follow(&w, &format!("url = \"{}/deploy.git\"", nginx.url()));

    let (ok, text) = w.once();
    assert!(ok && text.contains("deployed"), "{text}");
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.status_of(&release).last().unwrap().0, "success");

    // Polls of the unchanged mirror: a 304 each, no pack read again.
    let before = nginx.requests().len();
    for _ in 0..2 {
        let (ok, text) = w.once();
        assert!(ok && text.contains("up to date"), "{text}");
    }
    let seen: Vec<_> = nginx.requests()[before..]
        .iter()
        .filter(|r| r.target.ends_with("/info/refs"))
        .map(|r| r.status)
        .collect();
    // Each `once` is a new process: the first request of each asks afresh
    // (200), a daemon's later polls are 304s (agent/tests/mirror.rs).
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        !nginx.requests()[before..]
            .iter()
            .any(|r| r.target.ends_with(".pack")),
        "no pack downloaded again"
    );
}

/// The real agent following a mirror kept in a private bucket (moto, every
/// request signed and checked), with the key pair from
/// `source.s3_credentials_file` inside the testbed: the release deploys,
/// the journal never shows the secret, and a key the bucket refuses is said
/// as such, nothing deployed.
#[test]
fn deploys_from_a_mirror_in_a_private_bucket() {
    use ferry_test_support::s3::Moto;

    let w = World::new(&[("b", Behaviour::Succeed)]);
    let moto = Moto::start();
    let empty = w.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    moto.upload_cache("deploy-mirror", "eu-central-1", &empty);
    let url = format!(
        "s3://deploy-mirror/ops/deploy.git?region=eu-central-1&endpoint={}",
        moto.endpoint()
    );
    let release = w.release("b");
    let env = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(moto.key.access_key_id.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(moto.key.secret_access_key.clone()),
        _ => None,
    };
    let repo = git2::Repository::open(&w.deploy.path).unwrap();
    let store = ferry_signer::mirror::S3Store::open(&url, &env).unwrap();
    ferry_signer::mirror::update(&repo, "deploy", &store).unwrap();

    let key_file = |secret: &str| {
        std::fs::write(
            w.bed.host_path("/etc/ferry/source-s3"),
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n",
                moto.key.access_key_id
            ),
        )
        .unwrap();
    };
    follow(
        &w,
        &format!("url = \"{url}\"\ns3_credentials_file = \"/etc/ferry/source-s3\""),
    );

    // A key the bucket refuses: said, nothing deployed.
    key_file("not-the-secret");
    let (ok, text) = w.once();
    assert!(!ok, "{text}");
    assert!(
        text.contains("HTTP 403") && text.contains("refused the key from /etc/ferry/source-s3"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret"), "{text}");
    assert_ne!(w.running(), w.systems["b"]);

    key_file(&moto.key.secret_access_key);
    let (ok, text) = w.once();
    assert!(ok && text.contains("deployed"), "{text}");
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.status_of(&release).last().unwrap().0, "success");
    assert!(!text.contains(&moto.key.secret_access_key), "{text}");
}

/// A mirror frozen at a release the host runs (newer releases withheld, as
/// a hostile or broken mirror or CDN might): once that release expires by
/// the host's clock (libfaketime, a month on), the agent says it is stale,
/// on the release and in `status`, and changes nothing on the host.
#[test]
fn a_frozen_mirror_is_caught_by_expiry() {
    let w = World::new(&[("b", Behaviour::Succeed), ("c", Behaviour::Succeed)]);
    let www = w.dir.path().join("www");
    let release = w.release_expiring("b", Some(chrono::Duration::days(30)));
    publish(&w, &www);
    let nginx = Nginx::serve(&www, &Access::Anyone, false).unwrap();
    follow(&w, &format!("url = \"{}/deploy.git\"", nginx.url()));
    let (ok, text) = w.once();
    assert!(ok && text.contains("deployed"), "{text}");
    assert_eq!(w.running(), w.systems["b"]);

    // The branch moves on; the mirror does not.
    w.release("c");
    let a_month_on = |args: &[&str]| {
        let mut cmd = vec![
            "faketime",
            "-f",
            "+31d",
            super::AGENT,
            "--config",
            "/etc/ferry/agent.toml",
        ];
        cmd.extend_from_slice(args);
        let out = w.bed.exec(&cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = a_month_on(&["once"]);
    assert!(!ok, "{text}");
    assert!(text.contains("expired"), "{text}");
    let said = w.status_of(&release);
    let (state, description) = said.last().unwrap();
    assert_eq!(state, "failure", "{said:?}");
    assert!(description.starts_with("stale: release 1 expired "), "{said:?}");
    assert_eq!(w.running(), w.systems["b"], "nothing changed on the host");
    let (_, status) = a_month_on(&["status"]);
    assert!(status.contains("expired"), "{status}");
}
