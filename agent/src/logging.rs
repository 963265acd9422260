//! Logging: to journald with structured fields when the journal socket exists,
//! to stderr otherwise. Deploy events carry `ferry_commit`, `ferry_serial`,
//! `ferry_toplevel`, `ferry_phase` and `ferry_outcome`, which journald shows
//! as FERRY_COMMIT, FERRY_SERIAL, … so `journalctl FERRY_COMMIT=<sha>` selects
//! one deploy.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Where logs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info`.
pub fn init(prefer_journald: bool) -> Sink {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if prefer_journald {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("ferry-agent".into());
            tracing_subscriber::registry().with(filter).with(layer).init();
            return Sink::Journald;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    Sink::Stderr
}
