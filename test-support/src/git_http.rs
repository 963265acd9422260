//! Smart HTTP git on loopback: real `git http-backend` as a CGI behind a tiny
//! HTTP/1.1 server that demands Basic authentication with a given password
//! (the token) and answers 401 otherwise, as a private forge does.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;

#[derive(Debug)]
pub struct GitHttp {
    pub port: u16,
    /// Requests refused for want of the right token.
    pub refused: Arc<AtomicUsize>,
    /// While false, connections are dropped unanswered (the server is "down").
    pub up: Arc<AtomicBool>,
    /// While true, fetches (`git-upload-pack` POSTs) are held until it is false.
    pub hold_fetches: Arc<AtomicBool>,
    /// Fetches currently held.
    pub held: Arc<AtomicUsize>,
}

impl GitHttp {
    /// Serves the repositories under `root`; `token` is the password required.
    pub fn start(root: &Path, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let hold_fetches = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let (root, token, counter, is_up) = (root.to_owned(), token.to_owned(), refused.clone(), up.clone());
        let (hold, holding) = (hold_fetches.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if !is_up.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let (root, token, counter) = (root.clone(), token.clone(), counter.clone());
                let (hold, holding) = (hold.clone(), holding.clone());
                std::thread::spawn(move || serve(stream, &root, &token, &counter, &hold, &holding));
            }
        });
        Self {
            port,
            refused,
            up,
            hold_fetches,
            held,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

fn serve(
    mut stream: std::net::TcpStream,
    root: &PathBuf,
    token: &str,
    refused: &AtomicUsize,
    hold: &AtomicBool,
    held: &AtomicUsize,
) {
    let Some(crate::http::Request {
        method,
        target,
        headers,
        body,
    }) = crate::http::read_request(&stream)
    else {
        return;
    };
    let authorised = headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|userpass| userpass.split_once(':').is_some_and(|(_, pass)| pass == token));
    if !authorised {
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    // A moved repository: `/moved/X` answers with a redirect to `/X`, only
    // for the ref advertisement (as forges redirect a renamed repository).
    if let Some(rest) = path.strip_prefix("/moved") {
        let response = if method == "GET" {
            format!("HTTP/1.1 301 Moved Permanently\r\nLocation: {rest}?{query}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        };
        let _ = stream.write_all(response.as_bytes());
        return;
    }
    if method == "POST" && path.ends_with("/git-upload-pack") && hold.load(Ordering::SeqCst) {
        held.fetch_add(1, Ordering::SeqCst);
        while hold.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        held.fetch_sub(1, Ordering::SeqCst);
    }
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "ferry")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cgi.stdin.take().unwrap().write_all(&body).unwrap();
    let out = cgi.wait_with_output().unwrap();
    // CGI output: headers, a blank line, the body. `Status:` sets the code.
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    let split = split.or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((at, sep)) = split else { return };
    let head = String::from_utf8_lossy(&out.stdout[..at]).into_owned();
    let content = &out.stdout[at + sep..];
    let mut status = "200 OK".to_owned();
    let mut response = String::new();
    for h in head.lines() {
        match h.split_once(": ") {
            Some(("Status", s)) => status = s.to_owned(),
            Some(_) => response.push_str(&format!("{h}\r\n")),
            None => {}
        }
    }
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    let _ = stream.write_all(content);
}
