//! Durable file replacement, shared by everything the agent keeps on disk
//! (`state.json`, the status outbox, a switch unit's recorded result): a
//! crash or power loss leaves the old content or the new, never a mix. A
//! power cut keeps only what reached the disk, so every change is synced in
//! the order it is relied on: a file's data before the rename that makes it
//! appear, the rename (the directory) before the write returns; a directory
//! created or an entry removed, in its parent, before anything inside or
//! after it is written. In unit tests, [`faults`] stops the "process" right
//! before the Nth durable write, or fails writes as a full disk does.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file the agent keeps that could not be read or written, named.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// fsync, rename over `path`, fsync of the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, None)
}

/// Like [`atomic_write`], the file getting permission bits `mode` (whatever
/// the umask) before it appears under `path`: for files other users read,
/// such as the metrics node_exporter collects.
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, bytes, Some(mode))
}

fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    #[cfg(test)]
    faults::before_write(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Creates `dir` and any missing parents with permission bits `mode`
/// (whatever the umask; an existing `dir` gets them too), each new entry
/// synced in its parent, so the files written inside survive a power cut
/// with the directory that holds them.
pub fn create_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            // Made by someone else meanwhile: theirs to sync, but synced again here.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(d.parent().unwrap_or(Path::new("/")))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Removes `path` if it is there, the removal synced in its directory: once
/// this returns, a power cut cannot bring the file back.
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match sync_dir(path.parent().unwrap_or(Path::new("."))) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Syncs a directory's entries to the disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Fault injection for the reconcile tests, per test thread: a kill right
/// before the Nth durable write (a panic, caught by the test as the process
/// dying there), and writes failing with `ENOSPC` as on a full disk.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::RefCell;
    use std::path::Path;

    /// What the marker panic says: the test's sign that the agent was killed.
    pub const KILLED: &str = "killed before a durable write";

    #[derive(Debug, Default)]
    struct Plan {
        writes: usize,
        kill_at: Option<usize>,
        full: Option<&'static str>,
    }

    thread_local! {
        static PLAN: RefCell<Plan> = RefCell::new(Plan::default());
    }

    /// Durable writes so far on this thread.
    pub fn writes() -> usize {
        PLAN.with(|p| p.borrow().writes)
    }

    /// Kills the agent right before durable write number `n` (counting from
    /// 1 from now on).
    pub fn kill_before_write(n: usize) {
        PLAN.with(|p| {
            let mut p = p.borrow_mut();
            p.writes = 0;
            p.kill_at = Some(n);
        });
    }

    /// Fails every durable write whose path contains `part` with `ENOSPC`
    /// (`None`: the disk has room again).
    pub fn disk_full(part: Option<&'static str>) {
        PLAN.with(|p| p.borrow_mut().full = part);
    }

    pub(super) fn before_write(path: &Path) -> std::io::Result<()> {
        let kill = PLAN.with(|p| {
            let mut p = p.borrow_mut();
            p.writes += 1;
            if p.full.is_some_and(|part| path.to_string_lossy().contains(part)) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            Ok(p.kill_at == Some(p.writes) && {
                p.kill_at = None;
                true
            })
        })?;
        if kill {
            std::panic::panic_any(KILLED);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for text in ["one", "two", "three"] {
            atomic_write(&path, text.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn a_mode_is_set_before_the_file_appears() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.prom");
        atomic_write(&path, b"private").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        atomic_write_mode(&path, b"public", 0o644).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "public");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(atomic_write(&dir.path().join("absent/f"), b"x").is_err());
    }
}
