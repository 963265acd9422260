//! Real git fixtures: a deploy repository with releases made by the
//! `ferry_signer` library, served by `git daemon` on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use ferry_signer::keys::SigningKey;
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::{Action, HostEntry};

use crate::{free_port, git, wait_for_port};

/// A bare deploy repository and the key that signs its releases.
#[derive(Debug)]
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
#[derive(Debug)]
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
        wait_for_port(port).expect("git daemon listens");
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
