//! The local Nix store and the system profile, through Nix's own commands:
//! realising a closure from the pinned substituters with signatures required,
//! holding it with a GC root, setting the system profile, and reading which
//! system is running and which was booted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_signer::StorePath;
use tokio::process::Command;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the GC root directory {path}: {source}")]
    GcRoots { path: PathBuf, source: std::io::Error },
    #[error("cannot run {program}: {source} (is Nix installed and on PATH?)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: &'static str,
        status: String,
        stderr: String,
    },
    /// Nix failed, and the relay saw the binary cache fail first: `cache`
    /// says how, `summary` in a status's words.
    #[error("{nix}; the binary cache behind it: {cache}")]
    Cache {
        nix: Box<StoreError>,
        cache: String,
        summary: String,
    },
    #[error("cannot serve the binary caches to Nix on loopback: {0}")]
    Relay(std::io::Error),
    /// Asked to realise a `.drv`, which Nix would build: never done (the
    /// judge refuses such an entry first).
    #[error("{0} is a derivation, not a built system; hosts never build")]
    Derivation(StorePath),
    /// The closure could not be walked again before realising: what the
    /// caches answered (a fault the preflight would have met too).
    #[error("the closure cannot be read from the binary caches: {0}")]
    Closure(#[source] crate::io::cache::client::CacheError),
    #[error("{program} did not finish within {}s", .timeout.as_secs())]
    Timeout {
        program: &'static str,
        timeout: Duration,
    },
    /// Nix was stopped before it finished (a signal, as `systemctl stop`
    /// sends the agent's whole cgroup): nothing the release did.
    #[error("{program} was interrupted ({how}); the step is taken again at the next start")]
    Interrupted { program: &'static str, how: String },
    /// The file system holding the store is full.
    #[error("{program}: the Nix store's file system is full: {line}; free space (e.g. nix-collect-garbage) and the deploy goes on")]
    NoSpace { program: &'static str, line: String },
}

impl StoreError {
    /// What went wrong, cause first and without Nix's own `error:` prefix,
    /// for a status description (the journal gets the whole error): Nix's
    /// last `error:` line rather than its progress output, and what the
    /// binary cache answered before what Nix made of it.
    pub fn reason(&self) -> String {
        match self {
            StoreError::Failed { program, stderr, .. } => format!("{program}: {}", nix_reason(stderr)),
            StoreError::Cache { nix, cache, .. } => format!("{cache} ({})", nix.reason()),
            StoreError::NoSpace { program, line } => format!("{program}: the store is full: {line}"),
            StoreError::Closure(e) => e.summary(),
            other => other.to_string(),
        }
    }

    /// The error a Nix command that did not succeed ended with: stopped by
    /// a signal or told to stop ([`StoreError::Interrupted`]), out of space
    /// anywhere in its output ([`StoreError::NoSpace`], which Nix often
    /// follows with a vaguer last line such as "build of … failed"), or
    /// failed ([`StoreError::Failed`], with its last lines). Pure.
    pub fn from_exit(program: &'static str, status: std::process::ExitStatus, stderr: &str) -> Self {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return StoreError::Interrupted {
                program,
                how: format!("killed by signal {}", signal_name(signal)),
            };
        }
        // Nix's own words when SIGINT, SIGTERM or SIGHUP reached it.
        if stderr.lines().any(|l| l.contains("interrupted by the user")) {
            return StoreError::Interrupted {
                program,
                how: "it was sent a signal to stop".into(),
            };
        }
        if let Some(line) = stderr.lines().find(|l| l.contains("No space left on device")) {
            let line = line.trim().trim_start_matches("error:").trim();
            return StoreError::NoSpace {
                program,
                line: line.chars().take(200).collect(),
            };
        }
        // The last lines say what went wrong; keep messages bounded.
        let tail: Vec<&str> = stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        StoreError::Failed {
            program,
            status: status.to_string(),
            stderr: tail.join(" | "),
        }
    }
}

/// A signal's name (`SIGTERM`), or its number.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return signal.to_string(),
    };
    name.into()
}

/// The part of Nix's output (its last lines, joined with ` | `) that says
/// what went wrong: the last line Nix starts with `error:`, without it.
fn nix_reason(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.split(" | ").map(str::trim).collect();
    let reason = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("error:"))
        .or_else(|| lines.iter().rev().copied().find(|l| !l.is_empty()))
        .unwrap_or("no output");
    reason.trim()
}

/// Where the running and booted systems are recorded.
pub const CURRENT_SYSTEM: &str = "/run/current-system";
pub const BOOTED_SYSTEM: &str = "/run/booted-system";

/// The store and profile this agent manages.
#[derive(Debug, Clone)]
pub struct Store {
    pub profile: PathBuf,
    /// Directory for the agent's GC roots (under the state directory).
    pub gc_roots: PathBuf,
    pub substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
    pub realise_timeout: Duration,
}

impl Store {
    /// Realises `toplevel`'s closure from the pinned substituters only, with
    /// signatures required, and roots it at `<gc_roots>/<name>`.
    pub async fn realise(&self, toplevel: &StorePath, root_name: &str) -> Result<(), StoreError> {
        self.realise_from(toplevel, root_name, &self.substituters).await
    }

    /// [`Store::realise`] from `substituters` (the loopback relay of the
    /// configured ones, see the relay, `io::cache::relay`).
    pub async fn realise_from(
        &self,
        toplevel: &StorePath,
        root_name: &str,
        substituters: &[String],
    ) -> Result<(), StoreError> {
        // Realising an output path only ever substitutes it; a derivation
        // would be built.
        if toplevel.is_derivation() {
            return Err(StoreError::Derivation(toplevel.clone()));
        }
        // Synced in the state directory, like every directory the agent makes.
        crate::io::durable::create_dir(&self.gc_roots, 0o755).map_err(|source| StoreError::GcRoots {
            path: self.gc_roots.clone(),
            source,
        })?;
        let root = self.gc_roots.join(root_name);
        let mut cmd = Command::new("nix-store");
        cmd.arg("--realise")
            .arg(toplevel.as_str())
            .arg("--add-root")
            .arg(&root)
            .args(["--option", "substituters", &substituters.join(" ")])
            .args([
                "--option",
                "trusted-public-keys",
                &self.trusted_public_keys.join(" "),
            ])
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "extra-substituters", ""])
            .args(["--option", "builders", ""])
            // Each relay's URLs are new (a session of its own in the path),
            // so Nix's narinfo cache, keyed by URL, never answers for an
            // earlier relay, and within this realise each narinfo is read
            // once. (A positive TTL of 0 made Nix read every narinfo about
            // five times.) A negative answer is still never kept: a path
            // missing at first may be uploaded by the next try.
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            // One download per object: the relay bounds each (a cache that
            // stalls is cut off and named), and the agent retries the whole
            // realise with backoff, rather than Nix asking a stalling cache
            // four times more.
            .args(["--option", "download-attempts", "1"]);
        // `max-jobs` is left as the host sets it. Nothing here can build: an
        // output path (never a `.drv`, checked above) is only substituted,
        // and there are no remote builders. Before Nix 2.16 it is also how
        // many paths Nix substitutes at once, so `max-jobs 0` (it was here
        // once) made every deploy fetch one path at a time even on hosts that
        // allow more, where `nix-store -r` does not.
        run("nix-store", cmd, self.realise_timeout).await.map(drop)
    }

    /// Which of `paths` Nix's database does not hold valid: absent, or
    /// present in the store directory but not registered (left by an
    /// interrupted copy or written by hand). Asked of Nix, never guessed
    /// from the file system.
    pub async fn invalid_paths(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, StoreError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = Command::new("nix-store");
        cmd.args(["--check-validity", "--print-invalid"])
            .args(paths.iter().map(StorePath::as_str));
        let out = run("nix-store", cmd, Duration::from_secs(120)).await?;
        Ok(paths
            .iter()
            .filter(|p| out.lines().any(|l| l.trim() == p.as_str()))
            .cloned()
            .collect())
    }

    /// Points the system profile at `toplevel` (a new generation).
    pub async fn set_profile(&self, toplevel: &StorePath) -> Result<(), StoreError> {
        let mut cmd = Command::new("nix-env");
        cmd.arg("-p")
            .arg(&self.profile)
            .arg("--set")
            .arg(toplevel.as_str());
        run("nix-env", cmd, Duration::from_secs(120)).await.map(drop)
    }

    /// The system the profile points at now.
    pub fn profile_system(&self) -> Option<StorePath> {
        resolve_system(&self.profile)
    }
}

/// The store path a system symlink (profile, /run/current-system) resolves to.
pub fn resolve_system(link: &Path) -> Option<StorePath> {
    let target = std::fs::canonicalize(link).ok()?;
    target.to_str()?.parse().ok()
}

/// Whether booting `new` would change the kernel, initrd or kernel modules
/// relative to the booted system (what `nixos-rebuild` checks for a reboot).
pub fn reboot_required(booted: &Path, new: &StorePath) -> bool {
    ["kernel", "initrd", "kernel-modules"].iter().any(|part| {
        let old = std::fs::canonicalize(booted.join(part)).ok();
        let new = std::fs::canonicalize(Path::new(new.as_str()).join(part)).ok();
        old != new
    })
}

async fn run(program: &'static str, mut cmd: Command, timeout: Duration) -> Result<String, StoreError> {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let child = cmd.output();
    let out = match tokio::time::timeout(timeout, child).await {
        Ok(r) => r.map_err(|source| StoreError::Spawn { program, source })?,
        Err(_) => return Err(StoreError::Timeout { program, timeout }),
    };
    if !out.status.success() {
        return Err(StoreError::from_exit(
            program,
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.drv` is refused before Nix runs (`nix-store --realise` would
    /// build it) and before anything is written.
    #[test]
    fn a_derivation_is_never_realised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store {
            profile: dir.path().join("profile"),
            gc_roots: dir.path().join("gcroots"),
            substituters: vec!["http://127.0.0.1:1".into()],
            trusted_public_keys: Vec::new(),
            realise_timeout: Duration::from_secs(1),
        };
        let drv: StorePath = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1.drv"
            .parse()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime.block_on(store.realise(&drv, "current")).unwrap_err();
        assert!(matches!(err, StoreError::Derivation(ref p) if p == &drv), "{err}");
        assert!(!store.gc_roots.exists(), "nothing is written for a refused path");
    }

    /// Nix's stderr of a realise that could not substitute, as the agent
    /// keeps it (the last five lines).
    #[test]
    fn a_nix_failure_is_told_by_its_error_line_once() {
        let e = StoreError::Failed {
            program: "nix-store",
            status: "exit status: 1".into(),
            stderr: "don't know how to build these paths: | \
                     /nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-with-a-long-name | \
                     copying path '/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-a' from 'http://127.0.0.1:1/0'... | \
                     error: cannot add path '/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-a' because it lacks a signature by a trusted key"
                .into(),
        };
        assert_eq!(
            e.reason(),
            "nix-store: cannot add path '/nix/store/1c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-a' because it lacks a signature by a trusted key"
        );
        let cached = StoreError::Cache {
            nix: Box::new(e),
            cache: "http://cache.example.com/nar/x.nar.xz: HTTP 500".into(),
            summary: "error: binary cache unreachable".into(),
        };
        assert!(cached
            .reason()
            .starts_with("http://cache.example.com/nar/x.nar.xz: HTTP 500 (nix-store: cannot add path"));
        let quiet = StoreError::Failed {
            program: "nix-env",
            status: "exit status: 1".into(),
            stderr: "something odd | ".into(),
        };
        assert_eq!(quiet.reason(), "nix-env: something odd");
    }

    /// How a Nix command that did not succeed is told apart: stopped, out of
    /// space (said anywhere, not only in its last line), or failed.
    #[test]
    fn a_stopped_nix_and_a_full_store_are_told_apart_from_a_failure() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        let killed = |signal: i32| std::process::ExitStatus::from_raw(signal);
        let e = StoreError::from_exit("nix-store", killed(15), "copying path ... |");
        assert!(
            matches!(&e, StoreError::Interrupted { how, .. } if how == "killed by signal SIGTERM"),
            "{e:?}"
        );
        let e = StoreError::from_exit(
            "nix-store",
            exited(1),
            "copying path '/nix/store/x-a' from 'http://127.0.0.1:1/0'...\nerror: interrupted by the user\n",
        );
        assert!(matches!(e, StoreError::Interrupted { .. }), "{e:?}");
        // Said once, then followed by vaguer lines (what the status used to keep).
        let full = "copying path '/nix/store/x-a' from 'http://127.0.0.1:1/0'...\n\
                    error: writing to file: No space left on device\n\
                    error: some substitutes for the outputs of derivation '/nix/store/y.drv' failed\n\
                    error: build of '/nix/store/x-a' failed\n";
        let e = StoreError::from_exit("nix-store", exited(1), full);
        assert!(
            matches!(&e, StoreError::NoSpace { line, .. } if line == "writing to file: No space left on device"),
            "{e:?}"
        );
        assert_eq!(
            e.reason(),
            "nix-store: the store is full: writing to file: No space left on device"
        );
        let e = StoreError::from_exit(
            "nix-store",
            exited(1),
            "a\nb\nc\nd\ne\nf\nerror: path is not valid\n",
        );
        match e {
            StoreError::Failed { stderr, status, .. } => {
                assert_eq!(stderr, "c | d | e | f | error: path is not valid");
                assert_eq!(status, "exit status: 1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reboot_is_required_when_kernel_or_initrd_differ() {
        let dir = tempfile::tempdir().unwrap();
        let booted = dir.path().join("booted");
        std::fs::create_dir(&booted).unwrap();
        for f in ["kernel", "initrd", "kernel-modules"] {
            std::fs::write(booted.join(f), f).unwrap();
        }
        // A store path that does not exist here has no kernel: a change.
        let new: StorePath = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
            .parse()
            .unwrap();
        assert!(reboot_required(&booted, &new));
    }
}
