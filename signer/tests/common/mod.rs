//! Shared test fixtures: an isolated directory with git configured, keys from
//! `ssh-keygen`, and helpers to run git and the `ferry-signer` binary.

pub use ferry_test_support::{cli_reference, sk};

pub use ferry_test_support::forge;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const WEB1: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11";
pub const WEB1_V2: &str = "/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11";
pub const DB1: &str = "/nix/store/9zqmb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-db1-25.11";

/// A scratch directory whose git never reads the user's or system config.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.path("gitconfig"))
            .env("GIT_AUTHOR_NAME", "Release Manager")
            .env("GIT_AUTHOR_EMAIL", "rm@example.com")
            .env("GIT_COMMITTER_NAME", "Release Manager")
            .env("GIT_COMMITTER_EMAIL", "rm@example.com")
            .env_remove("FERRY_SIGNER_PASSPHRASE")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("FERRY_FORGE")
            .env_remove("FERRY_FORGE_API_URL")
            .env_remove("FERRY_FORGE_REPOSITORY")
            .env_remove("FERRY_FORGE_TOKEN")
            .env_remove("FERRY_FORGE_TOKEN_FILE")
            .env_remove("FERRY_STATUS_CONTEXT")
            .env_remove("FERRY_RECEIPTS")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    }

    /// Runs git in `repo`; panics with its stderr unless it succeeds.
    pub fn git(&self, repo: &Path, args: &[&str]) -> String {
        let out = self.git_output(repo, args, &[]);
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn git_output(&self, repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("git");
        self.env(&mut cmd);
        cmd.arg("-C").arg(repo).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("git is installed (scripts/install-deps)")
    }

    /// A new empty repository (bare or with a work tree).
    pub fn repo(&self, name: &str, bare: bool) -> PathBuf {
        let path = self.path(name);
        let mut args = vec!["init", "-q", "-b", "main"];
        if bare {
            args.push("--bare");
        }
        args.push(path.to_str().unwrap());
        self.git(self.dir.path(), &args);
        path
    }

    /// An unencrypted key of `key_type` made by ssh-keygen; returns the private key path.
    pub fn ssh_keygen(&self, name: &str, key_type: &str) -> PathBuf {
        ferry_test_support::ssh_keygen(self.dir.path(), name, key_type, "")
    }

    /// An unencrypted key of `key_type` with `bits` ("" for the default).
    pub fn ssh_keygen_bits(&self, name: &str, key_type: &str, bits: &str) -> PathBuf {
        ferry_test_support::ssh_keygen(self.dir.path(), name, key_type, bits)
    }

    /// The `ssh-ed25519 AAAA…` part of KEY.pub.
    pub fn public_key(&self, key: &Path) -> String {
        ferry_test_support::public_key(key)
    }

    /// Writes an allowed_signers file with the given lines.
    pub fn allowed_signers(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    /// Runs the ferry-signer binary.
    pub fn signer(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-signer"));
        self.env(&mut cmd);
        cmd.args(args).stdin(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// `ferry-signer release --repo REPO --key KEY EXTRA…`.
    pub fn release(&self, repo: &str, key: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec!["release", "--repo", repo, "--key", key];
        args.extend(extra);
        self.signer(&args, env)
    }

    /// `ferry-signer verify --signature-only` of `rev` against `allowed`.
    pub fn verify_signature_only(&self, repo: &Path, rev: &str, allowed: &Path) -> Output {
        self.signer(
            &[
                "verify",
                "--signature-only",
                "--repo",
                repo.to_str().unwrap(),
                "--rev",
                rev,
                "--allowed-signers",
                allowed.to_str().unwrap(),
            ],
            &[],
        )
    }

    /// `git verify-commit` with an allowed_signers file: (success, stderr).
    pub fn git_verify(&self, repo: &Path, rev: &str, allowed: &Path) -> (bool, String) {
        let out = self.git_output(
            repo,
            &[
                "-c",
                &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
                "verify-commit",
                rev,
            ],
            &[],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Commits `release.toml` with the given content in a work-tree repo,
    /// signed by `key` (ssh format) when given. Returns the commit id.
    pub fn git_commit_release(
        &self,
        repo: &Path,
        content: &str,
        key: Option<&Path>,
        env: &[(&str, &str)],
    ) -> String {
        std::fs::write(repo.join("release.toml"), content).unwrap();
        self.git(repo, &["add", "release.toml"]);
        let mut args = vec!["-c", "gpg.format=ssh", "-c", "commit.gpgsign=false"];
        let signing;
        if let Some(key) = key {
            signing = format!("user.signingkey={}", key.display());
            args.extend(["-c", &signing, "commit", "-S"]);
        } else {
            args.push("commit");
        }
        args.extend(["-q", "--allow-empty", "-m", "release"]);
        let out = self.git_output(repo, &args, env);
        assert!(
            out.status.success(),
            "git commit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.git(repo, &["rev-parse", "HEAD"])
    }
}

/// A minimal valid release.toml.
pub fn release_toml(serial: u64, toplevel: &str) -> String {
    format!("format = 1\nserial = {serial}\ncreated = 2026-11-21T23:00:00Z\n\n[hosts.web1]\ntoplevel = \"{toplevel}\"\n")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command failed and its stderr contains `needle`.
#[track_caller]
pub fn assert_refused(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        stdout(out)
    );
    let err = stderr(out);
    assert!(err.contains(needle), "stderr does not mention `{needle}`:\n{err}");
}

#[track_caller]
pub fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", stderr(out));
    stdout(out)
}
