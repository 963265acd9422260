//! The durable receipt queue: receipts waiting for the bucket, one file per
//! release in `<state_dir>/receipts/<release>.receipt`, holding the receipt
//! document exactly as it is signed (`ferry_signer::receipt`, a format
//! pinned by the signer's tests), unsigned: it is signed with the host key
//! when written, so a key that cannot be read delays receipts and nothing
//! else. A newer receipt of the same release replaces the older one (the
//! bucket keeps only the newest per host and release anyway), so a crash
//! and a repeated queueing never write one twice. [`drain`] writes them
//! oldest first: a network failure, a slow or a 5xx bucket stops the drain
//! (retried later), a receipt the bucket refuses for good is dropped.

use std::path::{Path, PathBuf};

use ferry_signer::receipt::Receipt;

use crate::io::durable::{atomic_write, create_dir, remove_file};
use crate::io::receipts::{ReceiptWriter, Written};
use crate::state::StateError;

/// Oldest receipts are dropped beyond this many waiting (with a log line).
pub const MAX_QUEUED_RECEIPTS: usize = 100;

const SUFFIX: &str = ".receipt";

/// Receipts waiting for the bucket.
#[derive(Debug, Clone)]
pub struct ReceiptQueue {
    dir: PathBuf,
}

/// A receipt waiting, and its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedReceipt {
    pub path: PathBuf,
    pub receipt: Receipt,
}

impl ReceiptQueue {
    /// Opens (creating) `<state_dir>/receipts`.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("receipts");
        create_dir(&dir, 0o700).map_err(|source| StateError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Queues `receipt` durably, replacing any older one of its release;
    /// returns how many of other releases were dropped to stay within
    /// [`MAX_QUEUED_RECEIPTS`].
    pub fn put(&self, receipt: &Receipt) -> Result<usize, StateError> {
        let path = self.dir.join(format!("{}{SUFFIX}", receipt.release));
        atomic_write(&path, receipt.render().as_bytes()).map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })?;
        let waiting = self.waiting()?;
        let excess = waiting.len().saturating_sub(MAX_QUEUED_RECEIPTS);
        for queued in waiting.iter().take(excess) {
            let _ = remove_file(&queued.path);
        }
        Ok(excess)
    }

    /// The receipts waiting, oldest first. Unreadable files are removed
    /// (they could never be written) and counted in the error's place: the
    /// rest are still returned.
    pub fn waiting(&self) -> Result<Vec<QueuedReceipt>, StateError> {
        let read_err = |source| StateError::Read {
            path: self.dir.clone(),
            source,
        };
        let mut queued = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if !path.to_str().is_some_and(|p| p.ends_with(SUFFIX)) {
                continue;
            }
            let receipt = std::fs::read(&path)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| Receipt::parse(&t).ok());
            match receipt {
                Some(receipt) => queued.push(QueuedReceipt { path, receipt }),
                None => {
                    tracing::warn!("removed {}: not a receipt", path.display());
                    let _ = remove_file(&path);
                }
            }
        }
        queued.sort_by(|a, b| (a.receipt.time, &a.path).cmp(&(b.receipt.time, &b.path)));
        Ok(queued)
    }

    /// Removes a written receipt, unless a newer one of its release was
    /// queued since (then that one waits).
    pub fn remove(&self, written: &QueuedReceipt) -> Result<(), StateError> {
        let now = std::fs::read(&written.path).ok();
        if now.as_deref() != Some(written.receipt.render().as_bytes()) {
            return Ok(());
        }
        remove_file(&written.path).map_err(|source| StateError::Write {
            path: written.path.clone(),
            source,
        })
    }

    /// How many receipts wait.
    pub fn len(&self) -> Result<usize, StateError> {
        Ok(self.waiting()?.len())
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }
}

/// What a drain of the receipt queue achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptDrain {
    pub written: usize,
    pub dropped: usize,
    /// Why the drain stopped early, if it did.
    pub stopped: Option<Written>,
}

/// Writes the receipts waiting in `queue` through `writer`, oldest first,
/// until none waits or a write must wait.
pub async fn drain(queue: &ReceiptQueue, writer: &ReceiptWriter) -> Result<ReceiptDrain, StateError> {
    let mut drain = ReceiptDrain {
        written: 0,
        dropped: 0,
        stopped: None,
    };
    for queued in queue.waiting()? {
        match writer.put(&queued.receipt).await {
            Written::Written => {
                queue.remove(&queued)?;
                drain.written += 1;
            }
            Written::Rejected(why) => {
                tracing::warn!("receipt for release {} dropped: {why}", queued.receipt.release);
                queue.remove(&queued)?;
                drain.dropped += 1;
            }
            other => {
                drain.stopped = Some(other);
                return Ok(drain);
            }
        }
    }
    Ok(drain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_signer::forge::StatusState;
    use ferry_signer::CommitId;

    fn receipt(release: char, state: StatusState, second: u32) -> Receipt {
        Receipt {
            release: release.to_string().repeat(40).parse::<CommitId>().unwrap(),
            source: None,
            host: "web1".parse().unwrap(),
            state,
            time: format!("2026-12-06T10:00:{second:02}Z").parse().unwrap(),
            toplevel: None,
            boot: None,
            description: format!("{} release", state.as_str()),
        }
    }

    #[test]
    fn the_newest_receipt_of_a_release_waits_oldest_release_first() {
        let dir = tempfile::tempdir().unwrap();
        let queue = ReceiptQueue::open(dir.path()).unwrap();
        queue.put(&receipt('b', StatusState::Pending, 1)).unwrap();
        queue.put(&receipt('a', StatusState::Pending, 2)).unwrap();
        queue.put(&receipt('b', StatusState::Success, 3)).unwrap();
        // The same again (a flush repeated after a crash): nothing more waits.
        queue.put(&receipt('b', StatusState::Success, 3)).unwrap();
        // A restart sees the same.
        let again = ReceiptQueue::open(dir.path()).unwrap();
        let waiting = again.waiting().unwrap();
        let states: Vec<_> = waiting
            .iter()
            .map(|q| {
                (
                    q.receipt.release.as_str().chars().next().unwrap(),
                    q.receipt.state,
                )
            })
            .collect();
        assert_eq!(states, [('a', StatusState::Pending), ('b', StatusState::Success)]);
        // The file is the document as signed.
        assert_eq!(
            std::fs::read_to_string(&waiting[1].path).unwrap(),
            receipt('b', StatusState::Success, 3).render()
        );
        // Written while a newer one was queued: the newer one stays.
        let old = waiting[0].clone();
        again.put(&receipt('a', StatusState::Failure, 4)).unwrap();
        again.remove(&old).unwrap();
        assert_eq!(again.len().unwrap(), 2);
        again.remove(&again.waiting().unwrap()[1]).unwrap();
        assert_eq!(again.waiting().unwrap()[0].receipt.state, StatusState::Success);
    }

    #[test]
    fn the_queue_is_bounded_and_unreadable_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let queue = ReceiptQueue::open(dir.path()).unwrap();
        std::fs::write(
            dir.path()
                .join("receipts")
                .join(format!("{}.receipt", "c".repeat(40))),
            "junk",
        )
        .unwrap();
        assert_eq!(queue.len().unwrap(), 0);
        let mut dropped = 0;
        for i in 0..MAX_QUEUED_RECEIPTS + 2 {
            let mut r = receipt('a', StatusState::Pending, 0);
            r.release = format!("{i:040x}").parse().unwrap();
            r.time += chrono::Duration::seconds(i as i64);
            dropped += queue.put(&r).unwrap();
        }
        assert_eq!(dropped, 2);
        assert_eq!(queue.len().unwrap(), MAX_QUEUED_RECEIPTS);
        assert_eq!(
            queue.waiting().unwrap()[0].receipt.release.as_str(),
            format!("{:040x}", 2)
        );
    }
}
