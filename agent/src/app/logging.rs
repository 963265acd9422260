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

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose
/// text the line already shows (our error messages often name their cause
/// themselves, so anyhow's `{:#}` would print it twice).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        cause = c.source();
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach {url}: {source}")]
    struct Unreachable {
        url: String,
        source: std::io::Error,
    }

    #[test]
    fn causes_already_shown_are_not_repeated() {
        let inner = std::io::Error::other("cannot connect (invalid peer certificate: UnknownIssuer)");
        let err = anyhow::Error::new(Unreachable {
            url: "https://git.example.com/deploy.git".into(),
            source: inner,
        })
        .context("reconcile");
        assert_eq!(
            error_chain(err.as_ref()),
            "reconcile: cannot reach https://git.example.com/deploy.git: cannot connect (invalid peer certificate: UnknownIssuer)"
        );
        let plain = anyhow::anyhow!("outer").context("top");
        assert_eq!(error_chain(plain.as_ref()), "top: outer");
    }
}
