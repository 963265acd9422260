//! A private binary cache on loopback: serves a directory `nix copy` wrote,
//! but only to requests carrying the expected `Authorization` (HTTP Basic as
//! from a netrc, or a bearer token as Attic and Cachix take), answering 401
//! otherwise, and recording every request. It can send narinfo requests to
//! another server by redirect, as caches send NARs to a CDN.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub target: String,
    pub authorization: Option<String>,
}

pub struct PrivateCache {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// `Authorization: Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

impl PrivateCache {
    /// Serves `dir` to requests whose Authorization is `expected` (`None`:
    /// to everyone); narinfo requests are redirected to `redirect` if set.
    pub fn start(dir: &Path, expected: Option<String>, redirect: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (dir, log) = (dir.to_owned(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, log, expected, redirect) =
                    (dir.clone(), log.clone(), expected.clone(), redirect.clone());
                std::thread::spawn(move || serve(stream, &dir, &log, expected, redirect));
            }
        });
        Self { port, seen }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut stream: std::net::TcpStream,
    dir: &Path,
    log: &Mutex<Vec<Seen>>,
    expected: Option<String>,
    redirect: Option<String>,
) {
    let Some(request) = super::http::read_request(&stream) else {
        return;
    };
    let authorization = request.headers.get("authorization").cloned();
    log.lock().unwrap().push(Seen {
        target: request.target.clone(),
        authorization: authorization.clone(),
    });
    let mut answer = |status: &str, extra: &str, body: &[u8], head: bool| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        if !head {
            let _ = stream.write_all(body);
        }
    };
    let head = request.method == "HEAD";
    if expected.is_some() && authorization != expected {
        return answer(
            "401 Unauthorized",
            "WWW-Authenticate: Basic realm=\"cache\"\r\n",
            b"",
            head,
        );
    }
    let name = request.target.trim_start_matches('/');
    if let Some(to) = redirect.filter(|_| name.ends_with(".narinfo")) {
        return answer("302 Found", &format!("Location: {to}/{name}\r\n"), b"", head);
    }
    if name.contains("..") {
        return answer("404 Not Found", "", b"", head);
    }
    match std::fs::read(dir.join(name)) {
        Ok(body) => answer("200 OK", "", &body, head),
        Err(_) => answer("404 Not Found", "", b"", head),
    }
}
