//! Receipts as the agent writes them, against real S3 servers: moto (which
//! verifies every request's SigV4 signature) and s3rver (a second
//! implementation, which checks the SigV4 header's form and key, not the
//! signature). A queued receipt
//! is signed with a host key made by `ssh-keygen` and written with one PUT
//! under `<prefix>/<release>/<host>`; the fleet side lists and verifies it
//! as genuine (`signer/tests/receipts.rs` checks the signatures against
//! `ssh-keygen -Y verify`). Wrong credentials, a
//! bucket answering 503 and one that drips its answer are each a named,
//! retried fault that keeps the receipt queued; no secret is ever shown.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use ferry_agent::io::receipts::{ReceiptWriter, ReceiptsTarget, Written};
use ferry_agent::state::receipts::{self, ReceiptQueue};
use ferry_signer::forge::StatusState;
use ferry_signer::receipt::{HostKeys, Receipt, Verdict};
use ferry_signer::receipt_bucket::{Reader, ReceiptBucket};
use ferry_signer::s3::AwsCredentials;
use ferry_test_support::s3::{AccessKey, Moto, S3rver};

fn receipt(release: &str, state: StatusState) -> Receipt {
    Receipt {
        release: release.parse().unwrap(),
        source: Some("5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0".parse().unwrap()),
        host: "web1".parse().unwrap(),
        state,
        time: chrono::Utc::now(),
        toplevel: Some(
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
                .parse()
                .unwrap(),
        ),
        boot: None,
        description: format!("web1 is {}", state.as_str()),
    }
}

/// A shared credentials file holding `key`.
fn credentials(dir: &Path, key: &AccessKey) -> std::path::PathBuf {
    let path = dir.join("aws-credentials");
    std::fs::write(
        &path,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key.access_key_id, key.secret_access_key
        ),
    )
    .unwrap();
    path
}

fn target(url: &str, host_key: &Path, credentials: &Path) -> ReceiptsTarget {
    ReceiptsTarget {
        bucket: ReceiptBucket::parse(url).unwrap(),
        url: url.to_owned(),
        host_key: host_key.to_owned(),
        credentials_file: Some(credentials.to_owned()),
    }
}

/// Queues two receipts of one release and one of another, drains them to
/// `url`, and reads them back as the fleet commands do.
fn written_and_read_back(url: &str, key: &AccessKey) {
    let dir = tempfile::tempdir().unwrap();
    let host_key = ferry_test_support::ssh_keygen(dir.path(), "ssh_host_ed25519_key", "ed25519", "");
    let creds = credentials(dir.path(), key);
    let writer = ReceiptWriter::new(target(url, &host_key, &creds));
    let queue = ReceiptQueue::open(dir.path()).unwrap();
    let (r1, r2) = (
        "9fceb02d0ae598e95dc970b74767f19372d61af8",
        "1111111111111111111111111111111111111111",
    );
    queue.put(&receipt(r1, StatusState::Pending)).unwrap();
    queue.put(&receipt(r2, StatusState::Failure)).unwrap();
    queue.put(&receipt(r1, StatusState::Success)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let drain = rt.block_on(receipts::drain(&queue, &writer)).unwrap();
    assert_eq!((drain.written, drain.dropped, drain.stopped), (2, 0, None));
    assert!(queue.is_empty().unwrap());

    let keys = HostKeys::parse(&format!("web1 {}\n", ferry_test_support::public_key(&host_key))).unwrap();
    let reader = Reader::new(
        ReceiptBucket::parse(url).unwrap(),
        AwsCredentials {
            access_key_id: key.access_key_id.clone(),
            secret_access_key: key.secret_access_key.clone().into(),
            session_token: None,
            source: "the test".into(),
        },
    );
    for (release, state) in [(r1, StatusState::Success), (r2, StatusState::Failure)] {
        let found = reader.read(&release.parse().unwrap(), &keys).unwrap();
        assert_eq!(found.requests, 2, "one listing, one read");
        let verdict = &found.by_host[&"web1".parse().unwrap()];
        match verdict {
            Verdict::Genuine(r) => assert_eq!((r.state, r.release.as_str()), (state, release)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn receipts_are_written_signed_and_read_back_from_moto() {
    let moto = Moto::start();
    let empty = tempfile::tempdir().unwrap();
    moto.upload_cache("fleet-receipts", "eu-west-1", empty.path());
    written_and_read_back(
        &format!(
            "s3://fleet-receipts/ferry/receipts?region=eu-west-1&endpoint={}",
            moto.endpoint()
        ),
        &moto.key,
    );
}

#[test]
fn receipts_are_written_signed_and_read_back_from_s3rver() {
    let s3rver = S3rver::start();
    let empty = tempfile::tempdir().unwrap();
    s3rver.upload("fleet", empty.path());
    written_and_read_back(
        &format!("s3://fleet/r?endpoint={}", s3rver.endpoint()),
        &s3rver.key,
    );
}

/// A loopback "bucket" that reads each request, then answers as `answer`
/// does; returns its port.
fn bucket(answer: fn(&mut std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let _ = stream.read(&mut buf);
                answer(&mut stream);
            });
        }
    });
    port
}

fn slow_down(stream: &mut std::net::TcpStream) {
    let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let _ = write!(
        stream,
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The answer's head one byte now and then: never done in time.
fn drip(stream: &mut std::net::TcpStream) {
    for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
        if stream.write_all(&[*byte]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_bucket_that_fails_or_drips_keeps_the_receipt_queued_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let host_key = ferry_test_support::ssh_keygen(dir.path(), "ssh_host_ed25519_key", "ed25519", "");
    let secret = AccessKey {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "never-shown-secret".into(),
    };
    let creds = credentials(dir.path(), &secret);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queue = ReceiptQueue::open(dir.path()).unwrap();
    queue
        .put(&receipt(
            "9fceb02d0ae598e95dc970b74767f19372d61af8",
            StatusState::Success,
        ))
        .unwrap();

    let busy = format!("s3://fleet/r?endpoint=http://127.0.0.1:{}", bucket(slow_down));
    let writer = ReceiptWriter::new(target(&busy, &host_key, &creds));
    let drain = rt.block_on(receipts::drain(&queue, &writer)).unwrap();
    let Some(Written::Retry(why)) = drain.stopped else {
        panic!("{drain:?}")
    };
    assert_eq!(
        why,
        "s3://fleet/r answered HTTP 503 SlowDown: Please reduce your request rate."
    );
    assert_eq!(queue.len().unwrap(), 1, "kept for the next try");

    // The answer never completes: given up at the writer's deadline (short
    // here, so the test is quick), retried later.
    let dripping = format!("s3://fleet/r?endpoint=http://127.0.0.1:{}", bucket(drip));
    let writer = ReceiptWriter::with_timeout(target(&dripping, &host_key, &creds), Duration::from_secs(1));
    let drain = rt.block_on(receipts::drain(&queue, &writer)).unwrap();
    let Some(Written::Retry(why)) = drain.stopped else {
        panic!("{drain:?}")
    };
    assert_eq!(why, "s3://fleet/r did not take the receipt within 1s");
    assert_eq!(queue.len().unwrap(), 1);

    // No host key: named, with what to set; the receipt waits.
    let writer = ReceiptWriter::new(target(&busy, &dir.path().join("missing_key"), &creds));
    let drain = rt.block_on(receipts::drain(&queue, &writer)).unwrap();
    let Some(Written::Misconfigured(why)) = drain.stopped else {
        panic!("{drain:?}")
    };
    assert!(
        why.contains("missing_key") && why.contains("report.host_key"),
        "{why}"
    );
    assert_eq!(queue.len().unwrap(), 1);
    assert!(!why.contains("never-shown-secret"), "{why}");

    // The bucket answers again: the receipt that waited through all of it
    // is written, nothing lost.
    let moto = Moto::start();
    let empty = tempfile::tempdir().unwrap();
    moto.upload_cache("fleet", "us-east-1", empty.path());
    let good = credentials(dir.path(), &moto.key);
    let url = format!("s3://fleet/r?endpoint={}", moto.endpoint());
    let writer = ReceiptWriter::new(target(&url, &host_key, &good));
    let drain = rt.block_on(receipts::drain(&queue, &writer)).unwrap();
    assert_eq!((drain.written, drain.stopped), (1, None));
    assert!(queue.is_empty().unwrap());
}

#[test]
fn wrong_credentials_are_named_and_the_receipt_waits() {
    let moto = Moto::start();
    let empty = tempfile::tempdir().unwrap();
    moto.upload_cache("fleet-receipts", "us-east-1", empty.path());
    let dir = tempfile::tempdir().unwrap();
    let host_key = ferry_test_support::ssh_keygen(dir.path(), "ssh_host_ed25519_key", "ed25519", "");
    let wrong = AccessKey {
        access_key_id: moto.key.access_key_id.clone(),
        secret_access_key: "never-shown-secret".into(),
    };
    let creds = credentials(dir.path(), &wrong);
    let url = format!("s3://fleet-receipts/r?endpoint={}", moto.endpoint());
    let writer = ReceiptWriter::new(target(&url, &host_key, &creds));
    let queue = ReceiptQueue::open(dir.path()).unwrap();
    queue
        .put(&receipt(
            "9fceb02d0ae598e95dc970b74767f19372d61af8",
            StatusState::Success,
        ))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let drain = rt.block_on(receipts::drain(&queue, &writer)).unwrap();
    let Some(Written::Misconfigured(why)) = drain.stopped else {
        panic!("{drain:?}")
    };
    assert!(
        why.starts_with("s3://fleet-receipts/r refused the receipt (HTTP 403"),
        "{why}"
    );
    assert!(
        why.contains(&format!("check the credentials from {}", creds.display())),
        "{why}"
    );
    assert!(!why.contains("never-shown-secret"), "{why}");
    assert_eq!(queue.len().unwrap(), 1);
}
