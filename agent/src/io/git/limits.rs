//! Every bound on talking to the deploy repository, in one place: the total
//! deadline of a tip check and of a fetch, the connect timeout, the caps on
//! a ref advertisement and a fetch, and the per-thread deadline that both
//! transports (`http`, `daemon`) read, bodies and name resolution included.
//! It imports nothing else of the crate.

use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A tip check (the ref advertisement, its body included) must finish within
/// this, on every transport.
pub const LS_TIMEOUT: Duration = Duration::from_secs(60);

/// A whole fetch, every negotiation round and the pack included, must finish
/// within this (a pack at the 512 MiB fetch cap needs only 300 KB/s).
pub const PACK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A ref advertisement longer than this is refused (endless-data defence; a
/// deploy repository advertises a handful of refs).
pub const MAX_ADVERTISEMENT_BYTES: u64 = 16 << 20;

static CONNECT_TIMEOUT: Mutex<Duration> = Mutex::new(Duration::from_secs(10));

/// Sets the connect timeout for HTTP remotes (before the first connection).
pub fn set_connect_timeout(timeout: Duration) {
    *CONNECT_TIMEOUT.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
}

/// The connect timeout for remotes.
pub(crate) fn connect_timeout() -> Duration {
    *CONNECT_TIMEOUT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fetches that would transfer more than this are aborted (endless-data defence).
pub const MAX_FETCH_BYTES: usize = 512 << 20;

thread_local! {
    /// The deadline of the remote operation running on this thread.
    static DEADLINE: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// Runs `f` (one libgit2 remote operation) with `limit` as the total time
/// it may take: its `git://` connection, name resolution included, and its
/// smart HTTP requests (`git_http.rs`), bodies included.
pub fn with_deadline<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(Instant, Duration)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(Some((Instant::now() + limit, limit)))));
    f()
}

/// The deadline of the remote operation running on this thread and its
/// length, if one was set with [`with_deadline`].
pub(crate) fn current_deadline() -> Option<(Instant, Duration)> {
    DEADLINE.with(|d| d.get())
}

/// The message of an operation that ran past its deadline of `limit`.
pub(crate) fn past_deadline(server: &str, limit: Duration) -> String {
    format!(
        "timed out: the {server} server did not finish within {}s (a total deadline per operation)",
        limit.as_secs()
    )
}
