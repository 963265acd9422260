//! `ferry-agent`: the host side of Ferry. It follows a signed deploy branch and
//! switches this NixOS host to the system its release names. Verification of
//! releases is `ferry_signer`'s; this crate owns everything host-specific.
//!
//! # Layout
//! - [`config`]: `/etc/ferry/agent.toml`, parsed strictly and validated.
//! - [`state`]: durable state (anti-rollback anchor, in-flight deploy, last
//!   outcome) with atomic writes.
//! - [`narinfo`]: binary cache metadata, signature fingerprints, cache keys.
//! - [`cache`]: the binary cache client and the closure preflight.
//! - [`source`]: the deploy repository: cheap tip check, bounded fetch, ancestry.
//! - [`git_http`]: smart HTTP(S) for libgit2 over reqwest and rustls (no OpenSSL).
//! - [`decide`]: pure decisions: anti-rollback, host entry, rollback rules.
//! - [`report`]: commit statuses per forge and the durable outbox.

pub mod cache;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod durable;
pub mod forge;
pub mod git_http;
pub mod health;
pub mod logging;
pub mod narinfo;
pub mod reconcile;
pub mod report;
pub mod seams;
pub mod source;
pub mod state;
pub mod status;
pub mod store;
pub mod switch;
pub mod systemd;
