//! Fixtures shared by the agent's integration tests.

pub mod forge;
pub mod git;
pub mod git_http;
pub mod http;
pub mod nix;
pub mod systemd;
pub mod tls;

/// A string unique to this test run (process and time), for store path names.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}-{nanos}", std::process::id())
}

/// A single-threaded runtime, like the agent's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
