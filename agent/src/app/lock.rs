//! One agent per state directory: `run` and `once` hold an exclusive
//! `flock` on `<state_dir>/agent.lock` for the life of the process (the
//! kernel releases it when the process ends, however it ends). A second
//! agent is refused with the first one's PID and what to do, before it
//! reads any state: it never adopts a deploy the other is running.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::state::{StateDir, StateError};

/// The lock file in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// `ferry-agent once`'s exit code when another agent holds the lock
/// (`EX_TEMPFAIL`: try again later).
pub const EXIT_LOCKED: u8 = 75;

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another ferry-agent ({}) is running on {}: it deploys and reports by itself \
         (`ferry-agent status` shows what it is doing); to run `once`, stop it first \
         (`systemctl stop ferry-agent`)",
        pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}")),
        dir.display()
    )]
    Held { pid: Option<u32>, dir: PathBuf },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    /// Locks `state_dir` (creating it as [`StateDir::open`] does) for this
    /// process, or says which process holds it.
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        StateDir::open(state_dir)?;
        let path = state_dir.join(LOCK_FILE);
        let lock_err = |source| LockError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    pid: text.trim().parse().ok(),
                    dir: state_dir.to_owned(),
                });
            }
            Err(e) => return Err(lock_err(e.into())),
        }
        // Informational (for the refusal above): which process holds it.
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = AgentLock::acquire(&state).unwrap();
        // flock locks belong to the open file, so a second open in the same
        // process contends as another process would.
        let err = AgentLock::acquire(&state).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(&err, LockError::Held { pid: Some(p), .. } if *p == pid),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("another ferry-agent (pid {pid}) is running"))
                && text.contains("systemctl stop"),
            "{text}"
        );
        drop(first);
        AgentLock::acquire(&state).expect("free again");
    }
}
