//! Real git fixtures: a deploy repository with releases made by the
//! `ferry_signer` library, served by `git daemon` on loopback.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ferry_signer::keys::SigningKey;
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::{Action, HostEntry};

pub use ferry_test_support::git;

/// A bare deploy repository and the key that signs its releases.
pub struct DeployRepo {
    pub path: PathBuf,
    pub key: SigningKey,
}

impl DeployRepo {
    pub fn new(dir: &Path) -> Self {
        let path = dir.join("deploy.git");
        git(
            dir,
            &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()],
        );
        Self {
            path,
            key: SigningKey::generate("test-release-key").unwrap(),
        }
    }

    /// Publishes a release naming `host` → `toplevel`; returns the commit id.
    pub fn release(&self, host: &str, toplevel: &str) -> String {
        self.release_by(&self.key, host, toplevel, chrono::Utc::now())
    }

    /// [`Self::release`] signed by `signer` and dated `created`.
    pub fn release_by(
        &self,
        signer: &dyn ferry_signer::sshsig::GitSigner,
        host: &str,
        toplevel: &str,
        created: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let repo = git2::Repository::open(&self.path).unwrap();
        let changes = ReleaseChanges {
            hosts: [(
                host.parse().unwrap(),
                HostEntry {
                    toplevel: toplevel.parse().unwrap(),
                    action: Action::Switch,
                },
            )]
            .into(),
            ..Default::default()
        };
        publish::publish(&repo, "deploy", signer, &changes, None, created)
            .unwrap()
            .commit
            .to_string()
    }
}

/// `git daemon` serving a directory on a loopback port; killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Self {
        let port = free_port();
        // Run git-daemon itself: killing a `git daemon` wrapper would orphan it.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .spawn()
            .expect("git daemon");
        wait_for_port(port);
        Self { child, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something accepts connections on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
