//! Fixtures of the agent's integration tests alone; what the end-to-end
//! suites of `tests/` need too is in `ferry_test_support`.

pub mod hostile;
pub mod tls;

/// A single-threaded runtime, like the agent's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A Nix store for a realise under test: the profile and GC roots in `dir`,
/// Nix trusting `public_key` only.
pub fn store(
    dir: &std::path::Path,
    public_key: &str,
    realise_timeout: std::time::Duration,
) -> ferry_agent::io::nix::Store {
    ferry_agent::io::nix::Store {
        profile: dir.join("profile"),
        gc_roots: dir.join("gcroots"),
        substituters: Vec::new(),
        trusted_public_keys: vec![public_key.to_owned()],
        realise_timeout,
    }
}

/// A `[cache]` section for agents whose test never reaches the cache.
pub const UNUSED_CACHE: &str = "[cache]\nsubstituters = [\"http://127.0.0.1:9\"]\ntrusted_public_keys = [\"c-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n";

/// The text of an agent.toml for `host` following `url` with the given state
/// directory and allowed_signers file; `rest` follows the `[source]` keys
/// (more source keys, then the other sections, e.g. [`UNUSED_CACHE`]).
pub fn agent_toml(
    host: &str,
    state_dir: &std::path::Path,
    url: &str,
    allowed_signers: &std::path::Path,
    rest: &str,
) -> String {
    format!(
        "host = \"{host}\"\nstate_dir = \"{}\"\n[source]\nurl = \"{url}\"\nallowed_signers = \"{}\"\n{rest}",
        state_dir.display(),
        allowed_signers.display()
    )
}
