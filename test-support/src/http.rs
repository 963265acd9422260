//! HTTP on loopback for tests: a static file server (Python's `http.server`)
//! serving a binary cache directory the way any HTTP cache serves it, and a
//! minimal HTTP/1.1 request reader for the fixtures that answer by hand.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{free_port, wait_for_port};

/// A Python helper process listening on a loopback port; killed on drop.
#[derive(Debug)]
pub struct PythonServer {
    child: Child,
    pub port: u16,
}

impl PythonServer {
    /// Runs `python3 ARGS…`, which must listen on `port`, and waits for it.
    pub fn spawn<I, S>(port: u16, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = Command::new("python3")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed (scripts/install-deps)");
        wait_for_port(port).expect("the python3 server listens");
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python's `http.server` serving a directory.
#[derive(Debug)]
pub struct StaticServer(PythonServer);

impl StaticServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    /// Starts on a given port (to bring a "down" cache back up).
    pub fn start_on(dir: &Path, port: u16) -> Self {
        Self(PythonServer::spawn::<_, &OsStr>(
            port,
            [
                "-m".as_ref(),
                "http.server".as_ref(),
                "--bind".as_ref(),
                "127.0.0.1".as_ref(),
                "--directory".as_ref(),
                dir.as_os_str(),
                port.to_string().as_ref(),
            ],
        ))
    }
}

impl std::ops::Deref for StaticServer {
    type Target = PythonServer;
    fn deref(&self) -> &PythonServer {
        &self.0
    }
}

/// One HTTP/1.1 request, as read by [`read_request`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads one request (line, headers, `Content-Length` body) from `stream`.
pub fn read_request(stream: &std::net::TcpStream) -> Option<Request> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}
