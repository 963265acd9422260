//! Fixtures of the end-to-end suites alone (the shared ones are in
//! `ferry_test_support`), and the programs they run.

use std::path::PathBuf;

pub mod prometheus;

/// The `ferry-agent` executable of this workspace, built by the cargo that
/// runs the tests (this crate is not the agent's, so cargo does not build
/// it for these tests by itself).
pub fn agent_binary() -> PathBuf {
    ferry_test_support::workspace_binary("ferry-agent", "ferry-agent")
}
