//! Adapters: one module per system outside the agent, each hiding its client
//! behind a small Ferry type. Nothing here decides what a deploy does; the
//! reconcile reaches these modules only through its ports, and nothing here
//! imports the layers above (`state`, `policy`, `config`, `metrics`,
//! `reconcile`, `app`).
//!
//! - [`git`]: the deploy repository (libgit2, its HTTP and `git://`
//!   transports, and their limits).
//! - [`cache`]: binary caches: narinfo, credentials, S3, the client and
//!   closure preflight, and the loopback relay Nix realises through.
//! - [`nix`]: Nix commands: realise, profile, running and booted systems.
//! - [`systemd`]: D-Bus, the switch unit, and health after a switch.
//! - [`forge`]: the `[report]` section, status requests and their delivery.
//! - [`receipts`]: the receipt settings of `[report]`, and signed receipts
//!   written to a bucket.
//! - [`durable`]: atomic file replacement; [`http_line`]: the request line
//!   of the agent's two loopback servers; [`body`]: bounded reads of answers.

pub mod body;
pub mod cache;
pub mod durable;
pub mod forge;
pub mod git;
pub mod http_line;
pub mod nix;
pub mod receipts;
pub mod systemd;
