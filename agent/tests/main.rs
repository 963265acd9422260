//! Integration tests for ferry-agent against the real things: Nix (store,
//! binary cache, signatures), git, and later systemd. One binary to keep link
//! time down.

mod common;

mod architecture;
mod deploy;
mod fleet;
mod forge;
mod key_types;
mod metrics;
mod nix_cache;
mod preflight;
mod private_cache;
mod reference;
mod s3_cache;
mod snippets;
mod source;
mod systemd;
mod upload_wait;
