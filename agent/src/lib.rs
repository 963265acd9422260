//! `ferry-agent`: the host side of Ferry. It follows a signed deploy branch and
//! switches this NixOS host to the system its release names. Verification of
//! releases is `ferry_signer`'s; this crate owns everything host-specific.
//!
//! # Layout
//! - [`config`]: `/etc/ferry/agent.toml`, parsed strictly and validated.
//! - [`reconcile`]: one reconcile as a typed state machine; the only module
//!   that sequences effects.
//! - [`decide`]: pure decisions: anti-rollback, host entry, severity of a
//!   refusal, what a finished switch and health check mean, rollback rules.
//! - [`window`]: maintenance and deploy windows (pure) and the reboot policy.
//! - [`seams`]: the traits a reconcile reaches the outside through, and their
//!   live implementations.
//! - [`state`]: durable state (anti-rollback anchor, the deploy in flight and
//!   its phase, last outcome) and its file format.
//! - [`durable`]: atomic file replacement.
//! - [`lock`]: one agent per state directory.
//! - [`narinfo`]: binary cache metadata, signature fingerprints, cache keys.
//! - [`cache`]: the binary cache client and the closure preflight;
//!   [`credentials`]: netrc and bearer tokens for private caches;
//!   [`cache_serve`]: the loopback cache the realise step reads through;
//!   [`s3`]: `s3://` caches: URLs, SigV4, AWS credentials, S3 errors;
//!   [`http_line`]: the request line of the relay and the metrics endpoint.
//! - [`source`]: the deploy repository: cheap tip check, bounded fetch, ancestry.
//! - [`git_http`]: smart HTTP(S) for libgit2 over reqwest and rustls (no OpenSSL).
//! - [`git_daemon`]: `git://` for libgit2, with a total deadline and size cap.
//! - [`store`]: Nix commands: realise, profile, running and booted systems.
//! - [`systemd`]: the only D-Bus code; [`switch`]: switch units;
//!   [`health`]: failed units and health commands after a switch.
//! - [`report`]: commit statuses per forge and the durable outbox;
//!   [`forge`]: delivering them.
//! - [`metrics`]: Prometheus metrics, for node_exporter's textfile collector
//!   and a loopback endpoint.
//! - [`status`], [`daemon`], [`logging`]: the `status` and `run` commands,
//!   the journal.

pub mod cache;
pub mod cache_serve;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod decide;
pub mod durable;
pub mod forge;
pub mod git_daemon;
pub mod git_http;
pub mod health;
pub mod http_line;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod narinfo;
pub mod reconcile;
pub mod report;
pub mod s3;
pub mod seams;
pub mod source;
pub mod state;
pub mod status;
pub mod store;
pub mod switch;
pub mod systemd;
pub mod window;
