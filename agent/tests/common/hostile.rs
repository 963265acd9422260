//! Loopback servers that misbehave on purpose (drip, send without end,
//! hang), and a bounded wait for the code under test to give up on them.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// A loopback server that reads the client's request (up to 4 KiB), then
/// runs `serve` with its text, until the client hangs up; its port.
pub fn hostile_server(serve: fn(&str, &mut TcpStream) -> std::io::Result<()>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let n = stream.read(&mut request).unwrap_or(0);
                let _ = serve(&String::from_utf8_lossy(&request[..n]), &mut stream);
            });
        }
    });
    port
}

/// Runs `f` on its own thread and waits a bounded time for its answer: a
/// failure (not a hang) when the code under test is not bounded.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what} was not bounded: still running after 120 s"))
}

/// A binary cache directory served over HTTP (Python's `http.server`, like
/// [`ferry_test_support::http::StaticServer`]), except that the body of every file whose
/// URL path contains `marker` (`.narinfo`, `/nar/`) is dripped one
/// byte every 100 ms after honest headers.
pub fn dripping_cache(dir: &std::path::Path, marker: &str) -> ferry_test_support::http::PythonServer {
    let port = ferry_test_support::free_port();
    let script = format!(
        "import http.server, os, sys, time\n\
         root = sys.argv[1]\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       path = os.path.join(root, self.path.split('?')[0].lstrip('/'))\n\
         \x20       if not os.path.isfile(path):\n\
         \x20           self.send_response(404); self.send_header('Content-Length', '0'); self.end_headers(); return\n\
         \x20       data = open(path, 'rb').read()\n\
         \x20       self.send_response(200); self.send_header('Content-Length', str(len(data))); self.end_headers()\n\
         \x20       if '{marker}' not in self.path:\n\
         \x20           self.wfile.write(data); return\n\
         \x20       for b in data:\n\
         \x20           self.wfile.write(bytes([b])); self.wfile.flush(); time.sleep(0.1)\n\
         \x20   def log_message(self, *a): pass\n\
         http.server.ThreadingHTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    );
    ferry_test_support::http::PythonServer::spawn(port, ["-c".as_ref(), script.as_ref(), dir.as_os_str()])
}
