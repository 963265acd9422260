//! Status delivery against a loopback server that records each forge's exact
//! path, headers and JSON, and answers as told.

use std::sync::atomic::Ordering;

use ferry_agent::io::forge::{CommitStatus, StatusState};
use ferry_agent::io::forge::{Delivery, ForgeClient};
use ferry_agent::io::forge::{Forge, ForgeTarget};
use ferry_agent::state::outbox::{self, Outbox};
use ferry_test_support::forge_recorder::Recorder;

const SHA: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

fn client(forge: Forge, api_url: String, repository: &str, token_file: &std::path::Path) -> ForgeClient {
    ForgeClient::new(&ForgeTarget {
        forge,
        api_url,
        repository: repository.into(),
        token_file: token_file.to_owned(),
    })
}

fn status(state: StatusState, description: &str) -> CommitStatus {
    CommitStatus::new(SHA.parse().unwrap(), state, "ferry/web1", description)
}

#[test]
fn each_forge_gets_its_own_request() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "T0KEN\n").unwrap();
    let rec = Recorder::start();
    let base = format!("http://127.0.0.1:{}", rec.port);
    let rt = crate::common::runtime();
    let long = "x".repeat(300);

    let github = client(Forge::Github, base.clone(), "ops/deploy", &token);
    assert_eq!(
        rt.block_on(github.send(&status(StatusState::Success, &long))),
        Delivery::Delivered
    );
    let gitea = client(Forge::Gitea, format!("{base}/api/v1"), "ops/deploy", &token);
    assert_eq!(
        rt.block_on(gitea.send(&status(StatusState::Pending, "deploying"))),
        Delivery::Delivered
    );
    let gitlab = client(Forge::Gitlab, format!("{base}/api/v4"), "group/deploy", &token);
    assert_eq!(
        rt.block_on(gitlab.send(&status(StatusState::Failure, "switch failed"))),
        Delivery::Delivered
    );

    let r = rec.requests();
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[0].method.as_str(), r[0].path.as_str()),
        ("POST", &*format!("/repos/ops/deploy/statuses/{SHA}"))
    );
    assert_eq!(r[0].headers["authorization"], "Bearer T0KEN");
    assert_eq!(r[0].headers["accept"], "application/vnd.github+json");
    assert_eq!(r[0].body["state"], "success");
    assert_eq!(r[0].body["context"], "ferry/web1");
    assert_eq!(
        r[0].body["description"].as_str().unwrap().chars().count(),
        140,
        "GitHub's limit"
    );

    assert_eq!(r[1].path, format!("/api/v1/repos/ops/deploy/statuses/{SHA}"));
    assert_eq!(r[1].headers["authorization"], "token T0KEN");
    assert_eq!(
        r[1].body,
        serde_json::json!({"state": "pending", "description": "deploying", "context": "ferry/web1"})
    );

    assert_eq!(
        r[2].path,
        format!("/api/v4/projects/group%2Fdeploy/statuses/{SHA}")
    );
    assert_eq!(r[2].headers["private-token"], "T0KEN");
    assert!(!r[2].headers.contains_key("authorization"));
    assert_eq!(
        r[2].body,
        serde_json::json!({"state": "failed", "name": "ferry/web1", "description": "switch failed"})
    );
    let agent = format!("ferry-agent/{}", env!("CARGO_PKG_VERSION"));
    for request in &r {
        assert_eq!(request.headers["user-agent"], agent);
    }
    assert_eq!(r[0].headers["x-github-api-version"], "2022-11-28");
}

#[test]
fn an_empty_token_file_is_a_configuration_problem_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("forge-token");
    std::fs::write(&token, "\n").unwrap();
    let rec = Recorder::start();
    let gitea = client(Forge::Gitea, rec.url(), "ops/deploy", &token);
    let d = crate::common::runtime().block_on(gitea.send(&status(StatusState::Pending, "x")));
    assert!(
        matches!(d, Delivery::Misconfigured(ref why) if why.contains(&token.display().to_string())),
        "{d:?}"
    );
    assert!(rec.requests().is_empty());
}

#[test]
fn refusals_name_the_repository_and_token_file_and_keep_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("forge-token");
    std::fs::write(&token, "wrong").unwrap();
    let rec = Recorder::start();
    let gitea = client(Forge::Gitea, rec.url(), "ops/deploy", &token);
    let outbox = Outbox::open(dir.path()).unwrap();
    outbox.push(&status(StatusState::Pending, "a")).unwrap();
    outbox.push(&status(StatusState::Success, "b")).unwrap();
    let rt = crate::common::runtime();

    for code in [401, 403] {
        rec.answer.store(code, Ordering::SeqCst);
        let drain = rt.block_on(outbox::drain(&outbox, &gitea)).unwrap();
        let Some(Delivery::Misconfigured(why)) = drain.stopped else {
            panic!("{drain:?}")
        };
        assert!(
            why.contains("ops/deploy") && why.contains(&token.display().to_string()),
            "{why}"
        );
        assert!(!why.contains("wrong"), "the token itself is never shown");
        assert_eq!(outbox.len().unwrap(), 2, "kept for when the token is fixed");
    }
    rec.answer.store(404, Ordering::SeqCst);
    let drain = rt.block_on(outbox::drain(&outbox, &gitea)).unwrap();
    assert!(
        matches!(drain.stopped, Some(Delivery::Misconfigured(ref why)) if why.contains("not found")),
        "{drain:?}"
    );

    // 5xx: retried later, order kept.
    rec.answer.store(503, Ordering::SeqCst);
    let drain = rt.block_on(outbox::drain(&outbox, &gitea)).unwrap();
    assert!(matches!(drain.stopped, Some(Delivery::Retry(_))));
    rec.answer.store(201, Ordering::SeqCst);
    let drain = rt.block_on(outbox::drain(&outbox, &gitea)).unwrap();
    assert_eq!((drain.delivered, drain.stopped), (2, None));
    let states: Vec<String> = rec.statuses().into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(states, vec!["pending", "success"]);

    // A status the forge can never accept (422) is dropped, not retried forever.
    outbox.push(&status(StatusState::Error, "c")).unwrap();
    rec.answer.store(422, Ordering::SeqCst);
    let drain = rt.block_on(outbox::drain(&outbox, &gitea)).unwrap();
    assert_eq!((drain.dropped, outbox.len().unwrap()), (1, 0));
}

#[test]
fn an_unreachable_forge_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "t").unwrap();
    let port = ferry_test_support::free_port();
    let github = client(Forge::Github, format!("http://127.0.0.1:{port}"), "o/r", &token);
    let d = crate::common::runtime().block_on(github.send(&status(StatusState::Pending, "x")));
    assert!(
        matches!(d, Delivery::Retry(ref why) if why.contains(&format!("127.0.0.1:{port}"))),
        "{d:?}"
    );
}
