//! Logging: to journald with structured fields whenever the journal socket
//! exists (plain stderr otherwise), and also to stderr when a person is
//! watching a terminal. Deploy events carry `ferry_commit`, `ferry_serial`,
//! `ferry_toplevel`, `ferry_phase` and `ferry_outcome`, which journald shows
//! as FERRY_COMMIT, FERRY_SERIAL, … so `journalctl FERRY_COMMIT=<sha>`
//! selects one deploy.

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sinks {
    pub journald: bool,
    pub stderr: bool,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`.
pub fn init() -> Sinks {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = tracing_journald::layer().ok().map(|l| {
        l.with_field_prefix(None)
            .with_syslog_identifier("ferry-agent".into())
    });
    let stderr_wanted = journald.is_none() || std::io::stderr().is_terminal();
    let sinks = Sinks {
        journald: journald.is_some(),
        stderr: stderr_wanted,
    };
    let fmt = stderr_wanted.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(fmt)
        .init();
    sinks
}
