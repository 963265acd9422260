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

/// A forge that answers at once, then drips the body of its answer (a rate
/// limit's explanation, read to tell a limit from a token problem): the
/// post ends within its 30 s deadline, body included, and the status is
/// kept to be sent again.
#[test]
fn a_forge_dripping_its_answer_is_cut_off_and_retried() {
    use crate::common::hostile::{hostile_server, within};
    let port = hostile_server(|_, stream| {
        use std::io::Write;
        stream.write_all(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4000\r\n\r\n")?;
        loop {
            stream.write_all(b"x")?;
            stream.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "t").unwrap();
    let gitea = client(Forge::Gitea, format!("http://127.0.0.1:{port}"), "o/r", &token);
    let d = within("a status post to a forge dripping its answer", move || {
        crate::common::runtime().block_on(gitea.send(&status(StatusState::Pending, "x")))
    });
    // What could be read says nothing of when the limit lifts: a minute,
    // the least a limit is waited for; the status stays in the outbox.
    assert!(
        matches!(d, Delivery::RateLimited { .. } | Delivery::Retry(_)),
        "{d:?}"
    );
}

/// A forge over its rate limit, as each forge says it (a loopback forge
/// answering with their status codes, headers and bodies): the statuses stay
/// in the outbox, in order, the answer is a rate limit until the time asked
/// (never a token problem), and once it lifts everything is delivered.
#[test]
fn a_rate_limit_keeps_the_outbox_until_it_lifts() {
    use ferry_test_support::forge::{Forge as LoopbackForge, Kind, TOKEN};
    let rt = crate::common::runtime();
    for (kind, forge) in [
        (Kind::Github, Forge::Github),
        (Kind::Gitlab, Forge::Gitlab),
        (Kind::Gitea, Forge::Gitea),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let loopback = LoopbackForge::start(kind);
        let client = client(forge, loopback.api_url(), "ops/deploy", &token);
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.push(&status(StatusState::Pending, "deploying")).unwrap();
        outbox.push(&status(StatusState::Success, "runs")).unwrap();

        loopback.limit(1, 2);
        let before = chrono::Utc::now();
        let drain = rt.block_on(outbox::drain(&outbox, &client)).unwrap();
        let Some(Delivery::RateLimited { until }) = drain.stopped else {
            panic!("{kind:?}: {drain:?}")
        };
        let asked = until - before;
        assert!(
            asked >= chrono::Duration::seconds(1) && asked <= chrono::Duration::seconds(3),
            "{kind:?}: until {until}, asked at {before}"
        );
        assert_eq!(
            (drain.delivered, drain.dropped, outbox.len().unwrap()),
            (0, 0, 2),
            "{kind:?}"
        );
        assert_eq!(
            loopback.requests().len(),
            1,
            "{kind:?}: one request, then it stops"
        );

        // Remembered for the next start, forgotten when set to none.
        outbox.set_limited_until(Some(until)).unwrap();
        assert_eq!(Outbox::open(dir.path()).unwrap().limited_until(), Some(until));

        // Lifted: delivered in order.
        let drain = rt.block_on(outbox::drain(&outbox, &client)).unwrap();
        assert_eq!(
            (drain.delivered, drain.stopped, outbox.len().unwrap()),
            (2, None, 0),
            "{kind:?}"
        );
        let descriptions: Vec<String> = loopback.statuses().into_iter().map(|s| s.description).collect();
        assert_eq!(descriptions, ["deploying", "runs"], "{kind:?}");
        outbox.set_limited_until(None).unwrap();
        assert_eq!(outbox.limited_until(), None);
    }
}

/// The live sink leaves a rate-limiting forge alone until the time it asked
/// (a restarted agent too), then sends one request: the forge sees no more
/// requests than the limit allows, and nothing is lost or reordered.
#[test]
fn the_sink_leaves_a_rate_limiting_forge_alone_until_the_time_it_asked() {
    use ferry_agent::app::live::ForgeSink;
    use ferry_agent::reconcile::ports::StatusSink;
    use ferry_test_support::forge::{Forge as LoopbackForge, Kind, TOKEN};
    let rt = crate::common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let loopback = LoopbackForge::start(Kind::Github);
    let sink = || {
        ForgeSink::new(
            Outbox::open(dir.path()).unwrap(),
            client(Forge::Github, loopback.api_url(), "ops/deploy", &token),
        )
    };
    let mut live = sink();
    use ferry_agent::state::Unsent;
    live.queue(&Unsent::forge_only(1, status(StatusState::Pending, "deploying")))
        .unwrap();
    live.queue(&Unsent::forge_only(2, status(StatusState::Success, "runs")))
        .unwrap();
    loopback.limit(1, 2);
    rt.block_on(live.deliver());
    assert_eq!(loopback.requests().len(), 1);
    let until = Outbox::open(dir.path())
        .unwrap()
        .limited_until()
        .expect("remembered");
    // Polls and a restart before then send nothing.
    rt.block_on(live.deliver());
    rt.block_on(sink().deliver());
    assert_eq!(loopback.requests().len(), 1, "nothing sent before {until}");
    // After it (the jitter included), everything, in order.
    let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(wait + std::time::Duration::from_millis(50));
    rt.block_on(live.deliver());
    let descriptions: Vec<String> = loopback.statuses().into_iter().map(|s| s.description).collect();
    assert_eq!(descriptions, ["deploying", "runs"]);
    assert_eq!(loopback.requests().len(), 3);
    assert_eq!(
        Outbox::open(dir.path()).unwrap().limited_until(),
        None,
        "forgotten once it lifted"
    );
}
