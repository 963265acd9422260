//! A static HTTP file server on loopback (Python's `http.server`), serving a
//! binary cache directory the way any HTTP cache serves it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::git::{free_port, wait_for_port};

pub struct StaticServer {
    child: Child,
    pub port: u16,
}

impl StaticServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    /// Starts on a given port (to bring a "down" cache back up).
    pub fn start_on(dir: &Path, port: u16) -> Self {
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed (scripts/install-deps)");
        wait_for_port(port);
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
