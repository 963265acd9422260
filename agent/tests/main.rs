//! Integration tests of the agent library against the real things: git
//! (`git daemon`, smart HTTP, TLS), Nix (store, binary caches, signatures),
//! caches served by HTTP, nginx and S3, the forges' status APIs and
//! systemd's D-Bus API. One binary to keep link time down. The suites that
//! run the agent program itself in a testbed, with `ferry-signer`, or check
//! the documentation are the end-to-end ones in `tests/` at the top level.

mod common;

mod architecture;
mod forge;
mod key_types;
mod mirror;
mod nix_cache;
mod preflight;
mod private_cache;
mod receipts;
mod s3_cache;
mod source;
mod systemd;
mod upload_wait;
