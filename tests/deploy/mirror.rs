//! The agent following a static mirror of the deploy branch (written by
//! `ferry-signer mirror`, served by nginx) inside the testbed: a release
//! deploys from it exactly as from the git server, and polls of an unchanged
//! mirror are conditional GETs answered 304.

use ferry_test_support::nginx::{Access, Nginx};
use ferry_test_support::nix::Behaviour;

use super::World;

#[test]
fn deploys_from_a_static_mirror() {
    let w = World::new(&[("b", Behaviour::Succeed)]);
    let www = w.dir.path().join("www");
    let mirror = |w: &World| {
        let repo = git2::Repository::open(&w.deploy.path).unwrap();
        ferry_signer::mirror::update(
            &repo,
            "deploy",
            &ferry_signer::mirror::DirStore(www.join("deploy.git")),
        )
        .unwrap();
    };
    let release = w.release("b");
    mirror(&w);
    let nginx = Nginx::serve(&www, &Access::Anyone, false).unwrap();
    let git_url = w
        .config
        .lines()
        .find(|l| l.starts_with("url = "))
        .unwrap()
        .to_owned();
    w.set_config(&git_url, &format!("url = \"{}/deploy.git\"", nginx.url()));

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
