//! `ferry-agent`: the host side of Ferry. It follows a signed deploy branch and
//! switches this NixOS host to the system its release names. Verification of
//! releases is `ferry_signer`'s; this crate owns everything host-specific.
//!
//! # Layout
//! The folders are layers, listed from the bottom up; a module imports only
//! from the layers below it (a test holds the code to this list, which
//! `docs/architecture.md` repeats). Start at [`reconcile`].
//!
//! - [`config::value`]: the leaf every configuration section builds on.
//! - [`io`]: adapters, one per outside system: git, binary caches, Nix,
//!   systemd, the forge, durable files.
//! - [`state`]: what the agent keeps on disk — `state.json` (anchor, deploy in
//!   flight and its phase, outcomes) and the status outbox — and their formats.
//! - [`policy`]: pure decisions: judging a release, the one gate for every
//!   hold, how a deploy ends, faults, windows, the words of every status.
//! - [`metrics`] and [`config`]: the Prometheus metrics; the whole
//!   `agent.toml`, composed from the sections the modules below own.
//! - [`reconcile`]: the one sequencer — a reconcile as a typed state
//!   machine, reaching the outside only through its ports.
//! - [`app`]: the program: the daemon loop, `status`, the lock, the live
//!   wiring of the ports, logging.

pub mod app;
pub mod config;
pub mod io;
pub mod metrics;
pub mod policy;
pub mod reconcile;
pub mod state;
