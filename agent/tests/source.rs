//! The deploy repository client against a real `git daemon` and file remotes.

use crate::common::git::{git, DeployRepo, GitDaemon};
use ferry_agent::source::{Source, SourceError};

const WEB1_A: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1";
const WEB1_B: &str = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1";

#[test]
fn tip_fetch_and_ancestry_over_git_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    let first = deploy.release("web1", WEB1_A);
    let daemon = GitDaemon::start(dir.path());
    let source = Source::open(
        &dir.path().join("clone.git"),
        &daemon.url("deploy.git"),
        "deploy",
        None,
    )
    .unwrap();

    let tip = source.remote_tip().unwrap();
    assert_eq!(tip.to_string(), first);
    // The tip check downloads nothing.
    assert!(source.repo().find_commit(tip).is_err());
    source.fetch(tip).unwrap();
    assert!(source.repo().find_commit(tip).is_ok());

    let second = deploy.release("web1", WEB1_B);
    let tip2 = source.remote_tip().unwrap();
    assert_eq!(tip2.to_string(), second);
    source.fetch(tip2).unwrap();
    assert!(source.descends_from(tip2, tip).unwrap());
    assert!(!source.descends_from(tip, tip2).unwrap());

    // Force-push the branch back to the first release: still fetchable, but
    // the old tip no longer descends from the newer anchor.
    git(&deploy.path, &["update-ref", "refs/heads/deploy", &first]);
    let rewound = source.remote_tip().unwrap();
    source.fetch(rewound).unwrap();
    assert_eq!(rewound, tip);
    assert!(!source.descends_from(rewound, tip2).unwrap());
}

#[test]
fn file_remote_and_missing_branch() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    let url = deploy.path.to_str().unwrap().to_owned();
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(matches!(err, SourceError::NoBranch { .. }), "{err}");
    assert!(err.to_string().contains("has no branch `deploy`"), "{err}");
    let c = deploy.release("web1", WEB1_A);
    assert_eq!(source.remote_tip().unwrap().to_string(), c);
}

#[test]
fn unreachable_remote_is_transient_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::git::free_port();
    let url = format!("git://127.0.0.1:{port}/deploy.git");
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn smart_http_with_a_token_file() {
    use crate::common::git_http::GitHttp;
    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    let c = deploy.release("web1", WEB1_A);
    let server = GitHttp::start(dir.path(), "s3cret");
    let url = server.url("deploy.git");

    // Without a token the forge refuses, and the error names the remote.
    let anonymous = Source::open(&dir.path().join("anon.git"), &url, "deploy", None).unwrap();
    let err = anonymous.remote_tip().unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");

    // A wrong token is refused once, without looping.
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "nope\n").unwrap();
    let source = Source::open(&dir.path().join("wrong.git"), &url, "deploy", Some(&wrong)).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!err.to_string().contains("nope"), "the token is never shown");

    // The right token: tip and fetch over smart HTTP.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", Some(&token)).unwrap();
    let tip = source.remote_tip().unwrap();
    assert_eq!(tip.to_string(), c);
    source.fetch(tip).unwrap();
    assert!(source.repo().find_commit(tip).is_ok());

    // A missing token file is a clear error.
    let missing = Source::open(
        &dir.path().join("m.git"),
        &url,
        "deploy",
        Some(&dir.path().join("absent")),
    )
    .unwrap();
    let err = missing.remote_tip().unwrap_err();
    assert!(err.to_string().contains("cannot read token file"), "{err}");
    assert!(server.refused.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}
