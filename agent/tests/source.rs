//! The deploy repository client against a real `git daemon` and file remotes.

use crate::common::hostile::{hostile_server, within};
use crate::common::{agent_toml, UNUSED_CACHE};
use ferry_agent::io::git::source::{Source, SourceError};
use ferry_test_support::deploy_repo::{DeployRepo, GitDaemon};
use ferry_test_support::git;

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
    // What a fetch received is counted (a pack: its header and the new
    // commit, tree and release at least); a commit already here costs none.
    let received = source.fetch_counted(tip2).unwrap();
    assert!(received > 12 + 3 * 20, "{received} bytes");
    assert_eq!(source.fetch_counted(tip2).unwrap(), 0);
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
    let port = ferry_test_support::free_port();
    let url = format!("git://127.0.0.1:{port}/deploy.git");
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn smart_http_with_a_token_file() {
    use ferry_test_support::git_http::GitHttp;
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

/// HTTP remotes go through the agent's own transport (rustls, no OpenSSL):
/// what can go wrong is named, with the remote, and never with the token.
#[test]
fn http_failures_are_named() {
    use ferry_test_support::git_http::GitHttp;
    use ferry_test_support::http::StaticServer;
    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    deploy.release("web1", WEB1_A);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();

    // No repository at that path.
    let server = GitHttp::start(dir.path(), "s3cret");
    let url = server.url("absent.git");
    let source = Source::open(&dir.path().join("a.git"), &url, "deploy", Some(&token)).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert!(err.to_string().contains("check source.url"), "{err}");

    // No token where one is needed.
    let anonymous = Source::open(
        &dir.path().join("b.git"),
        &server.url("deploy.git"),
        "deploy",
        None,
    )
    .unwrap();
    let err = anonymous.remote_tip().unwrap_err();
    assert!(
        err.to_string().contains("needs a token: set source.token_file"),
        "{err}"
    );

    // A plain web server is read as a static mirror (agent/tests/mirror.rs):
    // one without packs is named for what it lacks, the token never shown.
    let web = dir.path().join("web");
    std::fs::create_dir_all(web.join("deploy.git/info")).unwrap();
    std::fs::write(
        web.join("deploy.git/info/refs"),
        "0000000000000000000000000000000000000000\trefs/heads/deploy\n",
    )
    .unwrap();
    let static_server = StaticServer::start(&web);
    let url = format!("{}/deploy.git", static_server.url());
    let source = Source::open(&dir.path().join("c.git"), &url, "deploy", Some(&token)).unwrap();
    let tip = source.remote_tip().unwrap();
    let err = source.fetch(tip).unwrap_err();
    assert!(err.to_string().contains("objects/info/packs: HTTP 404"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    // A repository that moved on the same server: followed, POSTs included.
    let moved = Source::open(
        &dir.path().join("e.git"),
        &server.url("moved/deploy.git"),
        "deploy",
        Some(&token),
    )
    .unwrap();
    let tip = moved.remote_tip().unwrap();
    moved.fetch(tip).unwrap();

    // A redirect to another host (here `localhost` for `127.0.0.1`) is not
    // followed: the token must not travel there.
    let redirector = redirector(&format!("http://localhost:{}", server.port));
    let url = format!("http://127.0.0.1:{}/deploy.git", redirector.port);
    let source = Source::open(&dir.path().join("f.git"), &url, "deploy", Some(&token)).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(err.to_string().contains("another host"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    // Nothing listening.
    let port = ferry_test_support::free_port();
    let url = format!("https://127.0.0.1:{port}/deploy.git");
    let source = Source::open(&dir.path().join("d.git"), &url, "deploy", None).unwrap();
    let err = source.remote_tip().unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// An HTTPS remote whose certificate comes from a private CA: refused until
/// the host trusts that CA, then fetched and verified, through the real
/// `ferry-agent once` (rustls with the host's CA store; no OpenSSL).
#[test]
fn https_remote_with_a_private_ca() {
    use crate::common::tls::{Ca, TlsProxy};
    use ferry_test_support::git_http::GitHttp;
    let dir = tempfile::tempdir().unwrap();
    let deploy = DeployRepo::new(dir.path());
    deploy.release("web1", WEB1_A);
    let server = GitHttp::start(dir.path(), "s3cret");
    std::fs::create_dir_all(dir.path().join("ca")).unwrap();
    let ca = Ca::new(&dir.path().join("ca"));
    let proxy = TlsProxy::start(&ca, server.port);

    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let signers = dir.path().join("allowed_signers");
    std::fs::write(&signers, deploy.key.allowed_signers_line("ci@example.com")).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_toml(
            "web2",
            &dir.path().join("state"),
            &format!("https://127.0.0.1:{}/deploy.git", proxy.port),
            &signers,
            &format!("token_file = \"{}\"\n{UNUSED_CACHE}", token.display()),
        ),
    )
    .unwrap();
    let once = |ca_file: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"));
        cmd.arg("--config")
            .arg(&config)
            .arg("once")
            .env_remove("SSL_CERT_DIR");
        match ca_file {
            Some(f) => cmd.env("SSL_CERT_FILE", f),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (ok, text) = once(None);
    assert!(!ok, "{text}");
    assert!(
        text.contains("certificate"),
        "an untrusted certificate is named: {text}"
    );
    assert!(!text.contains("s3cret"), "{text}");

    // Trusting the CA: the release is fetched and verified over HTTPS (and
    // refused only because it has no entry for this host).
    let (ok, text) = once(Some(&ca.ca_cert));
    assert!(!ok, "{text}");
    assert!(
        text.contains("refused") && text.contains("has no entry for host web2"),
        "{text}"
    );
}

/// Answers every request with a redirect to the same path on `target`.
fn redirector(target: &str) -> ferry_test_support::http::PythonServer {
    let port = ferry_test_support::free_port();
    let script = format!(
        "import http.server\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(302); self.send_header('Location', '{target}' + self.path); self.send_header('Content-Length', '0'); self.end_headers()\n\
         \x20   do_POST = do_GET\n\
         \x20   def log_message(self, *a): pass\n\
         http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    );
    ferry_test_support::http::PythonServer::spawn(port, ["-c", &script])
}

/// A `git://` URL served by [`hostile_server`].
fn hostile_git_server(serve: fn(&str, &mut std::net::TcpStream) -> std::io::Result<()>) -> String {
    format!("git://127.0.0.1:{}/deploy.git", hostile_server(serve))
}

/// Writes a ref advertisement four times the 16 MiB cap, then stops.
fn endless_advertisement(_: &str, s: &mut std::net::TcpStream) -> std::io::Result<()> {
    let oid = "1".repeat(40);
    let first = format!("{oid} HEAD\0side-band-64k ofs-delta\n");
    std::io::Write::write_all(s, format!("{:04x}{first}", first.len() + 4).as_bytes())?;
    let mut sent = 0usize;
    let mut n = 0u64;
    while sent < 4 * (16 << 20) {
        let mut chunk = String::new();
        for _ in 0..1000 {
            let line = format!("{oid} refs/heads/x{n}\n");
            chunk.push_str(&format!("{:04x}{line}", line.len() + 4));
            n += 1;
        }
        std::io::Write::write_all(s, chunk.as_bytes())?;
        sent += chunk.len();
    }
    Ok(())
}

/// A `git://` server dripping its advertisement one byte at a time (each
/// read answered, so no per-read timeout fires) is cut off by the total
/// deadline of the operation.
#[test]
fn a_dripping_git_server_is_cut_off_by_the_operation_deadline() {
    use std::time::Duration;
    let url = hostile_git_server(|_, s| {
        std::io::Write::write_all(s, b"fff0")?;
        loop {
            std::io::Write::write_all(s, b"a")?;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None)
        .unwrap()
        .with_deadlines(Duration::from_secs(2), Duration::from_secs(2));
    let err = within("a tip check against a dripping server", move || {
        source.remote_tip().unwrap_err().to_string()
    });
    assert!(
        err.contains("timed out") && err.contains("total deadline"),
        "{err}"
    );
}

/// A `git://` server advertising refs without end (here: four times the cap,
/// then it hangs up) is refused at the advertisement cap, not read whole.
#[test]
fn an_endless_git_advertisement_is_refused_at_the_cap() {
    let url = hostile_git_server(endless_advertisement);
    let dir = tempfile::tempdir().unwrap();
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None).unwrap();
    let err = within("a tip check against an endless advertisement", move || {
        source.remote_tip().unwrap_err().to_string()
    });
    assert!(err.contains("ref advertisement exceeded 16777216 bytes"), "{err}");
}

/// The same over smart HTTP: refused, naming the limit.
#[test]
fn an_endless_http_advertisement_is_refused_naming_the_cap() {
    let port = hostile_server(|request, s| {
        std::io::Write::write_all(
            s,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nConnection: close\r\n\r\n001e# service=git-upload-pack\n0000",
        )?;
        endless_advertisement(request, s)
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/deploy.git");
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None).unwrap();
    let err = within("a tip check against an endless HTTP advertisement", move || {
        source.remote_tip().unwrap_err().to_string()
    });
    assert!(err.contains("ref advertisement exceeded 16777216 bytes"), "{err}");
}

/// The header of a smart HTTP ref advertisement, its body left to the caller.
const ADVERTISEMENT_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nConnection: close\r\n\r\n001e# service=git-upload-pack\n0000";

/// Starts a pkt-line of 65,520 bytes with `start` (a sideband number, or
/// nothing) and sends its body one byte every 100 ms: each read is answered,
/// so only a deadline on the whole operation stops it.
fn drip(s: &mut std::net::TcpStream, start: &[u8]) -> std::io::Result<()> {
    std::io::Write::write_all(s, b"fff0")?;
    std::io::Write::write_all(s, start)?;
    loop {
        std::io::Write::write_all(s, b"a")?;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A smart HTTP server dripping the body of its ref advertisement is cut
/// off by the tip check's total deadline, named in the error.
#[test]
fn a_dripping_http_advertisement_is_cut_off_by_the_operation_deadline() {
    use std::time::Duration;
    let port = hostile_server(|_, s| {
        std::io::Write::write_all(s, ADVERTISEMENT_HEAD)?;
        drip(s, b"")
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/deploy.git");
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None)
        .unwrap()
        .with_deadlines(Duration::from_secs(2), Duration::from_secs(2));
    let err = within("a tip check against a dripping HTTP server", move || {
        source.remote_tip().unwrap_err().to_string()
    });
    assert!(
        err.contains("did not finish within 2s") && err.contains("total deadline"),
        "{err}"
    );
}

/// A smart HTTP server that advertises a branch and then drips the pack is
/// cut off by the fetch's total deadline (every round together, not per
/// round).
#[test]
fn a_dripping_http_pack_is_cut_off_by_the_fetch_deadline() {
    use std::time::Duration;
    let port = hostile_server(|request, s| {
        if request.starts_with("GET") {
            let oid = "1".repeat(40);
            let line = format!("{oid} refs/heads/deploy\0multi_ack_detailed side-band-64k ofs-delta\n");
            std::io::Write::write_all(s, ADVERTISEMENT_HEAD)?;
            std::io::Write::write_all(s, format!("{:04x}{line}0000", line.len() + 4).as_bytes())?;
            return Ok(());
        }
        std::io::Write::write_all(
            s,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nConnection: close\r\n\r\n0008NAK\n",
        )?;
        // Progress messages (sideband 2) that never end.
        drip(s, b"\x02")
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/deploy.git");
    let source = Source::open(&dir.path().join("clone.git"), &url, "deploy", None)
        .unwrap()
        .with_deadlines(Duration::from_secs(2), Duration::from_secs(2));
    let err = within("a fetch from a server dripping the pack", move || {
        let oid = git2::Oid::from_str(&"1".repeat(40)).unwrap();
        source.fetch(oid).unwrap_err().to_string()
    });
    assert!(
        err.contains("did not finish within 2s") && err.contains("total deadline"),
        "{err}"
    );
}
