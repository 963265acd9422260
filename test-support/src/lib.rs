//! Helpers shared by Ferry's tests (ferry-signer's, ferry-agent's and the
//! end-to-end suites of `tests/`) and its benchmarks, so each exists once:
//! git run in isolation from the user's and the system's configuration,
//! keys made by `ssh-keygen`, a software stand-in for a FIDO security key,
//! the check of `docs/cli.md` against the binaries' `--help`, loopback
//! ports, and the real parts the agent is tested against: deploy
//! repositories served by `git daemon` or smart HTTP, Nix toplevels and
//! signed binary caches, caches served over HTTP, by nginx behind
//! credentials or by an S3 server, the forges (one that speaks each forge's
//! status API, one that records what it is sent), a throwaway systemd, and
//! the check of a syscall trace against what a power cut keeps.
//! Not published; the tools it runs (git, ssh-keygen, nginx, openssl, Nix,
//! systemd, Python, moto, strace) are what `scripts/install-deps` installs.

pub mod cli_reference;
pub mod deploy_repo;
pub mod forge;
pub mod forge_recorder;
pub mod git_http;
pub mod http;
pub mod nginx;
pub mod nix;
pub mod s3;
pub mod sk;
pub mod strace;
pub mod systemd;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A `git` command that reads no system configuration, takes
/// `global_config` as its global one (`/dev/null` for none) and commits as
/// `name <email>`.
pub fn git_command(global_config: &Path, name: &str, email: &str) -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", global_config)
        .env("GIT_AUTHOR_NAME", name)
        .env("GIT_AUTHOR_EMAIL", email)
        .env("GIT_COMMITTER_NAME", name)
        .env("GIT_COMMITTER_EMAIL", email);
    cmd
}

/// Runs `cmd` (a git command) to completion: its trimmed stdout, or a panic
/// with its stderr.
pub fn run_git(mut cmd: Command, args: &[&str]) -> String {
    let out = cmd.output().expect("git is installed (scripts/install-deps)");
    assert_success(&out, args);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs git in `dir` with no configuration at all, as `t <t@example.com>`;
/// panics unless it succeeds.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let mut cmd = git_command(Path::new("/dev/null"), "t", "t@example.com");
    cmd.arg("-C").arg(dir).args(args);
    run_git(cmd, args)
}

/// An unencrypted key of `key_type` made by `ssh-keygen` in `dir`, with
/// `bits` (`""` for the type's default); returns the private key's path
/// (the public key is next to it, `.pub`).
pub fn ssh_keygen(dir: &Path, name: &str, key_type: &str, bits: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", key_type, "-N", "", "-C", name]);
    if !bits.is_empty() {
        cmd.args(["-b", bits]);
    }
    let status = cmd
        .arg("-f")
        .arg(&path)
        .status()
        .expect("ssh-keygen is installed (scripts/install-deps)");
    assert!(status.success(), "ssh-keygen -t {key_type} failed");
    path
}

/// The `<type> AAAA…` part of the public key next to the private key `key`.
pub fn public_key(key: &Path) -> String {
    let text = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The path of binary `bin` of workspace package `package`, built (once
/// per test process) by the cargo that runs the tests, in its profile. For
/// tests of one crate that run another crate's binary (the end-to-end
/// suites of `tests/` run `ferry-agent` and `ferry-signer`), which cargo
/// builds only for that crate's own tests.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    workspace_binary_with_features(package, bin, &[])
}

/// Like [`workspace_binary`], built with the package's `features`: another
/// real build of the same program (the agent as a future version would be,
/// for the upgrade tests). Each build is copied, under one lock, to a path
/// of its own (`target/<profile>/ferry-test-bins/<features>/<bin>`), since
/// cargo puts every build of a binary at the same `target/<profile>/<bin>`.
pub fn workspace_binary_with_features(package: &str, bin: &str, features: &[&str]) -> PathBuf {
    type Built = Vec<(String, PathBuf)>;
    static BUILT: std::sync::Mutex<Built> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let variant = if features.is_empty() {
        "default".to_owned()
    } else {
        features.join(",")
    };
    let key = format!("{package}/{bin}/{variant}");
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    // The test executable is target/<profile>/deps/<name>; binaries are in
    // target/<profile>.
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let build = |features: &[&str]| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
        if release {
            cmd.arg("--release");
        }
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        let out = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo (the one running these tests) can be run");
        assert!(
            out.status.success(),
            "cargo build -p {package} --bin {bin} --features {features:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = profile_dir.join(bin);
        assert!(
            path.exists(),
            "cargo built {bin}, but it is not at {}",
            path.display()
        );
        path
    };
    let built_at = build(features);
    let dir = profile_dir.join("ferry-test-bins").join(&variant);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(bin);
    // Renamed into place: a copy another test runs is never rewritten.
    let tmp = dir.join(format!(".{bin}.{}", std::process::id()));
    std::fs::copy(&built_at, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    if !features.is_empty() {
        // Cargo's own place holds the default build again, for whatever
        // runs it from there (another crate's tests).
        build(&[]);
    }
    built.push((key, path.clone()));
    path
}

/// A string unique to this test run (process and time), for store path
/// names and other names tests must not share.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}-{nanos}", std::process::id())
}

/// A loopback port nothing listens on right now, for a server about to be
/// started on it (or for an address where nothing answers).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Waits until something accepts connections on loopback `port`, for at
/// most 20 s; an error (`TimedOut`) if nothing did.
pub fn wait_for_port(port: u16) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing listens on 127.0.0.1:{port} after 20 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The cells of one row of a Markdown table (`| a | b |`), trimmed, for
/// the tests that check a table in docs/ against the code.
pub fn table_cells(row: &str) -> Vec<&str> {
    row.split(" | ")
        .map(|c| c.trim_matches(|c| c == '|' || c == ' '))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_ignores_the_users_configuration_and_commits_as_told() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["commit", "-q", "--allow-empty", "-m", "first"]);
        assert_eq!(
            git(dir.path(), &["log", "-1", "--format=%an <%ae>"]),
            "t <t@example.com>"
        );
    }

    #[test]
    fn a_free_port_is_waited_for_until_something_listens() {
        let port = free_port();
        let listener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            TcpListener::bind(("127.0.0.1", port)).unwrap()
        });
        wait_for_port(port).unwrap();
        drop(listener.join().unwrap());
    }

    #[test]
    fn keys_come_with_their_public_half() {
        let dir = tempfile::tempdir().unwrap();
        let key = ssh_keygen(dir.path(), "k", "ecdsa", "384");
        assert!(public_key(&key).starts_with("ecdsa-sha2-nistp384 AAAA"));
    }
}
