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

/// How [`FaultyCache`] serves the body of a NAR (`/nar/…`) right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarFault {
    /// As any cache does.
    None,
    /// Holds the request, sending nothing (not even headers), until the
    /// fault is set to another; then serves it.
    Hold,
    /// Honest headers and half the body, then silence while the fault
    /// lasts; then the connection is closed, the body cut short.
    HalfThenSilence,
    /// Honest headers, then one byte a second while the fault lasts; then
    /// the rest.
    Drip,
}

impl NarFault {
    fn word(self) -> &'static str {
        match self {
            NarFault::None => "",
            NarFault::Hold => "hold",
            NarFault::HalfThenSilence => "half",
            NarFault::Drip => "drip",
        }
    }
}

/// A binary cache directory served over HTTP as [`StaticServer`] serves it,
/// except for the bodies of NARs, which it serves as the test says
/// ([`NarFault`], changed at any time, also while a request is held), and
/// it counts the NAR requests it was sent. Narinfos are always served at
/// once. Stops when dropped.
#[derive(Debug)]
pub struct FaultyCache {
    server: PythonServer,
    control: tempfile::TempDir,
}

const FAULTY_CACHE: &str = r#"
import http.server, os, sys, time
root, control = sys.argv[1], sys.argv[2]
def mode():
    try:
        return open(os.path.join(control, 'mode')).read().strip()
    except OSError:
        return ''
class H(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.answer(False)
    def do_GET(self):
        self.answer(True)
    def answer(self, body):
        path = os.path.join(root, self.path.split('?')[0].lstrip('/'))
        if not os.path.isfile(path):
            self.send_response(404); self.send_header('Content-Length', '0'); self.end_headers(); return
        data = open(path, 'rb').read()
        nar = '/nar/' in self.path
        if nar and body:
            with open(os.path.join(control, 'requests'), 'a') as f:
                f.write(self.path + '\n')
            while mode() == 'hold':
                time.sleep(0.05)
        self.send_response(200); self.send_header('Content-Length', str(len(data))); self.end_headers()
        if not body:
            return
        if not nar:
            self.wfile.write(data); return
        m = mode()
        if m == 'half':
            self.wfile.write(data[:len(data) // 2]); self.wfile.flush()
            while mode() == 'half':
                time.sleep(0.1)
            return
        if m == 'drip':
            sent = 0
            while sent < len(data) and mode() == 'drip':
                self.wfile.write(data[sent:sent + 1]); self.wfile.flush(); sent += 1
                time.sleep(1)
            self.wfile.write(data[sent:]); return
        self.wfile.write(data)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[3])), H).serve_forever()
"#;

impl FaultyCache {
    /// Serves `dir` on a free port, NARs as `fault` says.
    pub fn start(dir: &Path, fault: NarFault) -> Self {
        Self::start_on(dir, free_port(), fault)
    }

    /// Serves `dir` on `port` (where a cache was before), NARs as `fault` says.
    pub fn start_on(dir: &Path, port: u16, fault: NarFault) -> Self {
        let control = tempfile::tempdir().unwrap();
        let cache = Self {
            server: PythonServer::spawn::<_, &OsStr>(
                port,
                [
                    "-c".as_ref(),
                    FAULTY_CACHE.as_ref(),
                    dir.as_os_str(),
                    control.path().as_os_str(),
                    port.to_string().as_ref(),
                ],
            ),
            control,
        };
        cache.set(fault);
        cache
    }

    /// From now on, NAR bodies are served as `fault` says (requests held or
    /// stalled right now included).
    pub fn set(&self, fault: NarFault) {
        let path = self.control.path().join("mode");
        let next = self.control.path().join("mode.next");
        std::fs::write(&next, fault.word()).unwrap();
        std::fs::rename(next, path).unwrap();
    }

    /// How many NAR bodies were asked for so far.
    pub fn nar_requests(&self) -> usize {
        std::fs::read_to_string(self.control.path().join("requests"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl std::ops::Deref for FaultyCache {
    type Target = PythonServer;
    fn deref(&self) -> &PythonServer {
        &self.server
    }
}
