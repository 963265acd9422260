//! The deploy branch from a static mirror (`ferry-signer mirror`'s layout)
//! served by a real nginx: the tip check is one conditional GET answered 304
//! while nothing changes, a new release downloads only its own pack, real
//! `git clone` reads the same mirror, and hostile mirrors (a ref to a
//! missing commit, a cut or mislabelled pack, endless or foreign index
//! files, a redirect to another host) are refused with a message naming the
//! file, bounded, nothing half-written.

use std::io::Write;
use std::path::Path;

use crate::common::hostile::{hostile_server, within};
use ferry_agent::io::git::source::{Source, SourceError};
use ferry_signer::mirror::{self, Mirrored};
use ferry_test_support::deploy_repo::DeployRepo;
use ferry_test_support::nginx::{Access, Nginx};

const WEB1_A: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1";
const WEB1_B: &str = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1";

/// Writes `deploy`'s branch into the mirror at `root/deploy.git`.
fn publish(deploy: &DeployRepo, root: &Path) -> Mirrored {
    let repo = git2::Repository::open(&deploy.path).unwrap();
    mirror::update(
        &repo,
        "deploy",
        &ferry_signer::mirror::DirStore(root.join("deploy.git")),
    )
    .unwrap()
}

fn source(dir: &Path, url: &str) -> Source {
    Source::open(
        &dir.join(format!("clone-{}.git", ferry_test_support::unique("m"))),
        url,
        "deploy",
        None,
    )
    .unwrap()
}

#[test]
fn a_static_mirror_is_polled_with_one_conditional_get_and_fetched_by_pack() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    let deploy = DeployRepo::new(dir.path());
    let first = deploy.release("web1", WEB1_A);
    assert!(matches!(publish(&deploy, &root), Mirrored::Added { .. }));
    let nginx = Nginx::serve(&root, &Access::Anyone, false).unwrap();
    let url = format!("{}/deploy.git", nginx.url());
    let source = source(dir.path(), &url);

    let tip = source.remote_tip().unwrap();
    assert_eq!(tip.to_string(), first);
    // The bytes received are the mirror's one pack, whole.
    let pack_bytes: u64 = std::fs::read_dir(root.join("deploy.git/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(source.fetch_counted(tip).unwrap(), pack_bytes);
    assert!(source.repo().find_commit(tip).is_ok());
    let verified = ferry_signer::git::read_release(source.repo(), tip).unwrap();
    assert_eq!(verified.serial, 1);

    // Nothing changed: one GET of info/refs, answered 304.
    let before = nginx.requests().len();
    for _ in 0..3 {
        assert_eq!(source.remote_tip().unwrap(), tip);
    }
    let polls: Vec<_> = nginx.requests()[before..]
        .iter()
        .filter(|r| !r.target.contains("ferry-log-marker"))
        .cloned()
        .collect();
    assert_eq!(polls.len(), 3, "{polls:#?}");
    assert!(
        polls
            .iter()
            .all(|r| r.target == "/deploy.git/info/refs" && r.status == 304),
        "{polls:#?}"
    );

    // A new release: only its own pack is downloaded.
    let second = deploy.release("web1", WEB1_B);
    let Mirrored::Added { pack, .. } = publish(&deploy, &root) else {
        panic!("a new pack")
    };
    let before = nginx.requests().len();
    let tip2 = source.remote_tip().unwrap();
    assert_eq!(tip2.to_string(), second);
    source.fetch(tip2).unwrap();
    assert!(source.descends_from(tip2, tip).unwrap());
    let packs: Vec<String> = nginx.requests()[before..]
        .iter()
        .filter(|r| r.target.ends_with(".pack"))
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(packs, [format!("/deploy.git/objects/pack/{pack}")]);

    // The reference client reads the same mirror over git's dumb protocol.
    let clone = dir.path().join("git-clone");
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--bare", &url])
        .arg(&clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let head = std::process::Command::new("git")
        .args(["--git-dir"])
        .arg(&clone)
        .args(["rev-parse", "deploy"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), second);

    // A smart HTTP server is still spoken to as one: the probe tells them
    // apart (the git-daemon and smart-HTTP tests cover that path).
}

/// A mirror whose files are damaged: each refused naming the file, and the
/// next poll after the mirror is written afresh goes through.
#[test]
fn damaged_mirrors_are_refused_naming_the_file_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    let deploy = DeployRepo::new(dir.path());
    deploy.release("web1", WEB1_A);
    let Mirrored::Added { pack, tip, .. } = publish(&deploy, &root) else {
        panic!("a pack")
    };
    let m = root.join("deploy.git");
    let nginx = Nginx::serve(&root, &Access::Anyone, false).unwrap();
    let url = format!("{}/deploy.git", nginx.url());
    let pack_path = m.join("objects/pack").join(&pack);
    let good_pack = std::fs::read(&pack_path).unwrap();
    let fault = |e: SourceError| e.to_string();

    // A ref to a commit no pack holds.
    let refs = std::fs::read_to_string(m.join("info/refs")).unwrap();
    std::fs::write(
        m.join("info/refs"),
        refs.replace(&tip.to_string(), "1111111111111111111111111111111111111111"),
    )
    .unwrap();
    let s = source(dir.path(), &url);
    let wrong = s.remote_tip().unwrap();
    let e = s.fetch(wrong).unwrap_err();
    assert!(matches!(e, SourceError::Missing { .. }), "{e}");
    std::fs::write(m.join("info/refs"), &refs).unwrap();

    // A pack cut short.
    std::fs::write(&pack_path, &good_pack[..good_pack.len() / 2]).unwrap();
    let s = source(dir.path(), &url);
    let tip_now = s.remote_tip().unwrap();
    let e = fault(s.fetch(tip_now).unwrap_err());
    assert!(
        e.contains(&format!("objects/pack/{pack}")) && e.contains("truncated"),
        "{e}"
    );
    assert!(s.repo().find_commit(tip_now).is_err(), "nothing half-written");
    // Someone else's pack under this pack's name.
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let other = DeployRepo::new(&dir.path().join("other"));
    other.release("web1", WEB1_B);
    let other_root = dir.path().join("other-www");
    publish(&other, &other_root);
    let other_pack = std::fs::read_dir(other_root.join("deploy.git/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    std::fs::copy(&other_pack, &pack_path).unwrap();
    let e = fault(s.fetch(tip_now).unwrap_err());
    assert!(e.contains("its checksum differs"), "{e}");
    // Put right: the same source fetches at its next try.
    std::fs::write(&pack_path, &good_pack).unwrap();
    s.fetch(tip_now).unwrap();

    // Index files that are not a mirror's.
    std::fs::write(m.join("objects/info/packs"), "P ../../../etc/passwd\n").unwrap();
    let s = source(dir.path(), &url);
    let t = s.remote_tip().unwrap();
    let e = fault(s.fetch(t).unwrap_err());
    assert!(
        e.contains("objects/info/packs: line 1: `../../../etc/passwd` is not a pack name"),
        "{e}"
    );
    std::fs::write(m.join("info/refs"), "<html>moved</html>\n").unwrap();
    let s = source(dir.path(), &url);
    let e = fault(s.remote_tip().unwrap_err());
    assert!(e.contains("info/refs: line 1: expected"), "{e}");
}

/// Hostile servers: an endless info/refs is cut at its cap, a dripping one
/// at the total deadline, a redirect to another host is refused, a missing
/// branch is named.
#[test]
fn hostile_mirror_servers_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let endless = hostile_server(|request, s| {
        if request.contains("service=git-upload-pack") {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")?;
        let line = [b'0'; 4096];
        loop {
            s.write_all(&line)?;
        }
    });
    let path = dir.path().to_owned();
    let e = within("an endless info/refs", move || {
        source(&path, &format!("http://127.0.0.1:{endless}/deploy.git"))
            .remote_tip()
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("info/refs: larger than"), "{e}");

    let elsewhere = hostile_server(|request, s| {
        if request.contains("service=git-upload-pack") {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
        s.write_all(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:9/deploy.git/info/refs\r\nContent-Length: 0\r\n\r\n")
    });
    let path = dir.path().to_owned();
    let e = within("a redirect", move || {
        source(&path, &format!("http://127.0.0.1:{elsewhere}/deploy.git"))
            .remote_tip()
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("another host"), "{e}");

    // A byte at a time, each read answered: cut by the tip check's total
    // deadline (shortened here), not by a timeout per read.
    let dripping = hostile_server(|request, s| {
        if request.contains("service=git-upload-pack") {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n")?;
            return Ok(());
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n")?;
        loop {
            s.write_all(b"0")?;
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let path = dir.path().to_owned();
    let e = within("a dripping info/refs", move || {
        source(&path, &format!("http://127.0.0.1:{dripping}/deploy.git"))
            .with_deadlines(
                std::time::Duration::from_secs(3),
                std::time::Duration::from_secs(3),
            )
            .remote_tip()
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("deploy.git") && e.contains("3s"), "{e}");

    let root = dir.path().join("www");
    let deploy = DeployRepo::new(dir.path());
    deploy.release("web1", WEB1_A);
    let repo = git2::Repository::open(&deploy.path).unwrap();
    mirror::update(
        &repo,
        "deploy",
        &ferry_signer::mirror::DirStore(root.join("deploy.git")),
    )
    .unwrap();
    let nginx = Nginx::serve(&root, &Access::Anyone, false).unwrap();
    let s = Source::open(
        &dir.path().join("clone-main.git"),
        &format!("{}/deploy.git", nginx.url()),
        "main",
        None,
    )
    .unwrap();
    let e = s.remote_tip().unwrap_err();
    assert!(matches!(e, SourceError::NoBranch { .. }), "{e}");
}

/// Three agents following a mirror through a caching proxy in front of it
/// (a CDN's part, nginx `proxy_cache`): the edge answers their polls and
/// fetches, so the origin sees each file about once per cache lifetime and
/// each pack once, however many hosts poll.
#[test]
fn hosts_behind_a_cdn_cost_the_origin_a_request_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    let deploy = DeployRepo::new(dir.path());
    deploy.release("web1", WEB1_A);
    publish(&deploy, &root);
    let origin = Nginx::serve(&root, &Access::Anyone, false).unwrap();
    // A lifetime the test can wait out: a CDN would keep info/refs a few
    // seconds and the packs for ever.
    let edge = Nginx::cache_in_front(&origin.url(), 2).unwrap();
    let url = format!("{}/deploy.git", edge.url());
    let hosts: Vec<Source> = (0..3).map(|_| source(dir.path(), &url)).collect();
    let poll_all = |rounds: usize| {
        for _ in 0..rounds {
            for h in &hosts {
                let tip = h.remote_tip().unwrap();
                h.fetch(tip).unwrap();
            }
        }
    };
    poll_all(5);
    let second = deploy.release("web1", WEB1_B);
    let Mirrored::Added { pack, .. } = publish(&deploy, &root) else {
        panic!("a new pack")
    };
    // The edge shows the new release once its copy of info/refs expires.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while hosts[0].remote_tip().unwrap().to_string() != second {
        assert!(
            std::time::Instant::now() < deadline,
            "the edge never showed the new release"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    poll_all(5);
    for h in &hosts {
        assert_eq!(h.remote_tip().unwrap().to_string(), second);
    }

    let asked = edge.requests();
    let reached = origin.requests();
    let count = |log: &[ferry_test_support::nginx::Logged], target: &str| {
        log.iter().filter(|r| r.target == target).count()
    };
    let refs = "/deploy.git/info/refs";
    let (polls, at_origin) = (count(&asked, refs), count(&reached, refs));
    assert!(polls >= 33, "every host polled the edge: {asked:#?}");
    assert!(
        at_origin * 5 <= polls,
        "the origin saw info/refs about once per lifetime ({at_origin} times), not once per poll ({polls}): {reached:#?}"
    );
    let new_pack = format!("/deploy.git/objects/pack/{pack}");
    assert_eq!(count(&asked, &new_pack), 3, "each host fetched the new pack once");
    assert_eq!(
        count(&reached, &new_pack),
        1,
        "and the origin served it once: {reached:#?}"
    );
}

/// An agent started before the mirror is first written (its URL answers
/// 404) reads it once it appears, without a restart: a server that cannot
/// tell a mirror from a git server yet is asked again at the next poll.
#[test]
fn a_mirror_written_after_the_agent_started_is_read_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let nginx = Nginx::serve(&root, &Access::Anyone, false).unwrap();
    let s = source(dir.path(), &format!("{}/deploy.git", nginx.url()));
    let e = s.remote_tip().unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    let deploy = DeployRepo::new(dir.path());
    let first = deploy.release("web1", WEB1_A);
    publish(&deploy, &root);
    let tip = s.remote_tip().unwrap();
    assert_eq!(tip.to_string(), first);
    s.fetch(tip).unwrap();
}

/// A mirror in a private bucket (moto: every request signed and checked),
/// written by `ferry-signer mirror`'s code and read by the source with the
/// key pair from `source.s3_credentials_file`: an unchanged mirror's polls
/// are answered 304 by the bucket itself, a new release reads one new pack,
/// and a wrong key is refused naming the file it came from, never the
/// secret.
#[test]
fn a_mirror_in_a_private_bucket_is_read_with_signed_requests() {
    use ferry_signer::mirror::S3Store;
    use ferry_test_support::s3::Moto;

    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    let first = deploy.release("web1", WEB1_A);
    let moto = Moto::start();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    moto.upload_cache("deploy-mirror", "eu-central-1", &empty);
    // What reaches the bucket goes through a logging proxy.
    let proxy = Nginx::log_in_front(&moto.endpoint()).unwrap();
    let url = format!(
        "s3://deploy-mirror/ops/deploy.git?region=eu-central-1&endpoint={}",
        proxy.url()
    );
    let env = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(moto.key.access_key_id.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(moto.key.secret_access_key.clone()),
        _ => None,
    };
    let publish = || {
        let repo = git2::Repository::open(&deploy.path).unwrap();
        mirror::update(&repo, "deploy", &S3Store::open(&url, &env).unwrap()).unwrap()
    };
    assert!(matches!(publish(), Mirrored::Added { .. }));
    let credentials = dir.path().join("s3-credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.key.access_key_id, moto.key.secret_access_key
        ),
    )
    .unwrap();
    let reader = source(dir.path(), &url).with_s3_credentials(Some(&credentials));

    let tip = reader.remote_tip().unwrap();
    assert_eq!(tip.to_string(), first);
    reader.fetch(tip).unwrap();
    let verified = ferry_signer::git::read_release(reader.repo(), tip).unwrap();
    assert_eq!(verified.serial, 1);

    let before = proxy.requests().len();
    for _ in 0..3 {
        assert_eq!(reader.remote_tip().unwrap(), tip);
    }
    let polls = proxy.requests()[before..].to_vec();
    assert_eq!(polls.len(), 3, "{polls:#?}");
    assert!(
        polls
            .iter()
            .all(|r| r.target == "/deploy-mirror/ops/deploy.git/info/refs"
                && r.status == 304
                && r.authorization
                    .as_deref()
                    .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 "))),
        "{polls:#?}"
    );

    let second = deploy.release("web1", WEB1_B);
    let Mirrored::Added { pack, .. } = publish() else {
        panic!("a new pack")
    };
    let before = proxy.requests().len();
    let tip2 = reader.remote_tip().unwrap();
    assert_eq!(tip2.to_string(), second);
    reader.fetch(tip2).unwrap();
    assert!(reader.descends_from(tip2, tip).unwrap());
    let packs: Vec<String> = proxy.requests()[before..]
        .iter()
        .filter(|r| r.target.ends_with(".pack"))
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        packs,
        [format!("/deploy-mirror/ops/deploy.git/objects/pack/{pack}")]
    );

    // A wrong secret: the bucket's 403, said as a refusal of that file's key.
    let wrong = dir.path().join("wrong-credentials");
    std::fs::write(
        &wrong,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret\n",
            moto.key.access_key_id
        ),
    )
    .unwrap();
    let refused = source(dir.path(), &url)
        .with_s3_credentials(Some(&wrong))
        .remote_tip()
        .unwrap_err();
    assert!(matches!(refused, SourceError::Mirror { .. }), "{refused:?}");
    let said = refused.to_string();
    assert!(
        said.contains("HTTP 403")
            && said.contains(&format!("refused the key from {} [default]", wrong.display())),
        "{said}"
    );
    assert!(!said.contains("not-the-secret"), "{said}");
}
