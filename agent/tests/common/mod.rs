//! Fixtures shared by the agent's integration tests.

pub mod forge;
pub mod git;
pub mod http;
pub mod nix;
pub mod systemd;
