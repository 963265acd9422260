//! `ferry-agent run`: the daemon loop. Reconciles every poll interval (plus
//! random jitter, so a fleet does not stampede the forge), backs off on
//! transient failures, reloads the configuration and allowed_signers when
//! they change (keeping the old ones if the new ones are invalid), and
//! notices the system profile changing outside Ferry. It serves the metrics
//! endpoint (`metrics.listen`) for as long as it runs, and exits for systemd
//! to start it again when a switch replaced its own unit or executable. A
//! stop (SIGTERM, SIGINT) ends it at once, in the middle of a deploy too:
//! the deploy's phase is on disk, and the next start resumes it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use ferry_signer::AllowedSigners;
use notify::{RecursiveMode, Watcher};
use rand_core::RngCore;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::app::lock::AgentLock;
use crate::app::status::{note_pass, NEXT_POLL_FILE};
use crate::config::Config;
use crate::reconcile::{Agent, Pass};

/// Where this agent's own unit lives on NixOS (a link into the store that
/// changes whenever the unit or the agent's package changes).
const OWN_UNIT: &str = "/etc/systemd/system/ferry-agent.service";

/// What identifies the agent that runs: the file its executable was
/// started from, and its unit file. Either changes when a switch (a deploy,
/// a rollback, a hand-made `nixos-rebuild`) installs another agent: another
/// store path in the unit, or another file at the executable's path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    exe: Option<(PathBuf, u64, u64)>,
    unit: Option<Vec<u8>>,
}

fn own_identity() -> Identity {
    use std::os::unix::fs::MetadataExt;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| std::fs::canonicalize(e).ok())
        .and_then(|e| {
            let meta = std::fs::metadata(&e).ok()?;
            Some((e, meta.dev(), meta.ino()))
        });
    Identity {
        exe,
        unit: std::fs::read(OWN_UNIT).ok(),
    }
}

/// The first retry after a transient failure; doubles up to the poll interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The delay before the next poll: the interval plus up to `jitter`.
pub fn next_delay(interval: Duration, jitter: Duration) -> Duration {
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    let extra = if jitter_ms == 0 {
        0
    } else {
        rand_core::OsRng.next_u64() % jitter_ms
    };
    interval + Duration::from_millis(extra)
}

/// The metrics endpoint, when `metrics.listen` is set. One that cannot
/// listen (the port is taken) is reported, and deploys go on without it.
async fn metrics_endpoint(agent: &Agent) -> Option<crate::metrics::Endpoint> {
    let addr = agent.config.metrics.listen?;
    match crate::metrics::serve(addr, agent.metrics.page()).await {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            error!(
                "{}; the metrics are not served",
                crate::app::logging::error_chain(e.as_ref())
            );
            None
        }
    }
}

/// Logs what a reconcile did; the waits the reconcile itself announced when
/// they began are not said again at every poll.
fn log_pass(pass: &Pass) {
    match pass {
        Pass::UpToDate | Pass::WaitingForWindow { .. } | Pass::RebootScheduled { .. } | Pass::Held { .. } => {
        }
        Pass::WaitingForClosure { serial, until } => {
            info!("release {serial}: waiting for its closure in the binary cache (until {until})")
        }
        other => info!("reconcile: {other:?}"),
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(config_path: PathBuf, shutdown: impl Future<Output = ()>) -> Result<()> {
    let config = Config::load(&config_path)?;
    // Held until the process ends: no `once` can run beside the daemon.
    let _lock = AgentLock::acquire(&config.state_dir)?;
    let mut agent = crate::app::live::agent(config)?;
    // Metrics at start, from what the state says, before the first poll.
    agent.update_metrics(false);
    let _endpoint = metrics_endpoint(&agent).await;
    // The NixOS module sets restartIfChanged = false, so a switch never kills
    // a deploy in progress; the agent restarts itself (exiting for systemd's
    // Restart=always) when a deploy changed its own unit or executable.
    let identity = own_identity();
    let (tx, mut events) = mpsc::channel::<PathBuf>(64);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes matter: reading a file (as a reload does) must not
        // trigger another reload.
        if let Ok(event) = res {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let _ = tx.try_send(path);
            }
        }
    })?;
    let mut watched = watch_all(&mut watcher, &config_path, &agent.config);
    let exe = identity
        .exe
        .as_ref()
        .map_or_else(|| "?".into(), |(e, _, _)| e.display().to_string());
    info!(
        host = %agent.config.host, url = %agent.config.source.url, branch = %agent.config.source.branch,
        "ferry-agent started ({exe}, state extension format {})",
        crate::state::EXTENSION_FORMAT
    );

    tokio::pin!(shutdown);
    let mut delay = Duration::ZERO;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        // Informational only (for `status`): a plain write, no fsync on the idle path.
        let _ = std::fs::write(agent.config.state_dir.join(NEXT_POLL_FILE), next.to_rfc3339());
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                info!("ferry-agent stopping");
                return Ok(());
            }
            _ = &mut sleep => {}
            Some(path) = events.recv() => {
                // Collect a burst of events (editors write several) into one reload.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut paths = vec![path];
                while let Ok(p) = events.try_recv() {
                    paths.push(p);
                }
                if let Some(mut new) = on_change(&paths, &config_path, &mut agent) {
                    if new.config.metrics.listen != agent.config.metrics.listen {
                        warn!("metrics.listen changed: it takes effect when ferry-agent restarts");
                    }
                    new.metrics.share_page(&agent.metrics);
                    agent = new;
                    watched = watch_all(&mut watcher, &config_path, &agent.config).max(watched);
                    delay = Duration::ZERO;
                } else {
                    // Keep waiting the rest of the interval.
                    delay = sleep.deadline().saturating_duration_since(tokio::time::Instant::now());
                }
                continue;
            }
        }
        let interval = agent.config.source.poll_interval;
        let started = std::time::Instant::now();
        // A stop does not wait for the reconcile: it is dropped where it is,
        // as a kill would end it (every phase is written before its step,
        // so the next start resumes it), and the Nix command or health
        // check it runs is killed with it. A switch or rollback goes on in
        // its own unit and is followed after the restart.
        let reconciled = tokio::select! {
            biased;
            _ = &mut shutdown => {
                let phase = agent.state.load().ok().and_then(|s| s.in_flight).map(|f| f.phase.name());
                match phase {
                    Some(phase) => info!(
                        ferry_phase = phase,
                        "ferry-agent stopping in the middle of a deploy: it resumes in phase {phase} at the next start"
                    ),
                    None => info!("ferry-agent stopping"),
                }
                return Ok(());
            }
            reconciled = agent.reconcile() => reconciled,
        };
        // What one poll costs (bench/ reads this at RUST_LOG=ferry_agent::app::daemon=debug).
        debug!(elapsed_us = started.elapsed().as_micros() as u64, "poll finished");
        note_pass(
            &agent.config.state_dir,
            reconciled
                .as_ref()
                .map_err(|e| crate::app::logging::error_chain(e)),
            Utc::now(),
        );
        match reconciled {
            Ok(outcome) => {
                backoff = FIRST_BACKOFF;
                log_pass(&outcome);
                delay = next_delay(interval, agent.config.source.jitter);
            }
            Err(e) => {
                warn!(
                    "reconcile failed, retrying in {}s: {}",
                    backoff.as_secs(),
                    crate::app::logging::error_chain(&e)
                );
                delay = backoff;
                backoff = (backoff * 2).min(interval.max(FIRST_BACKOFF));
            }
        }
        // Whatever the pass did (deployed, rolled back, failed half-way, or
        // nothing while someone switched by hand), the state is on disk: an
        // agent whose unit or executable was replaced under it hands over
        // now, rather than run on as the agent of a system that is gone.
        if own_identity() != identity {
            info!(
                "ferry-agent's own unit or executable changed (a switch installed another agent): \
                 restarting into the one installed now"
            );
            return Ok(());
        }
    }
}

/// Watches the directories holding the config, allowed_signers and the
/// system profile (directories, because editors and Nix replace files by
/// renaming). Returns how many could be watched.
fn watch_all(watcher: &mut impl Watcher, config_path: &Path, config: &Config) -> usize {
    let mut n = 0;
    for file in [
        config_path,
        &config.source.allowed_signers,
        &config.switch.profile,
    ]
    .into_iter()
    .chain(config.approvals.allowed_signers.as_deref())
    {
        if let Some(dir) = file.parent() {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => n += 1,
                Err(e) => warn!("cannot watch {} for changes: {e}", dir.display()),
            }
        }
    }
    n
}

/// Reacts to changed files. Returns a new agent when the configuration was
/// replaced by a valid one.
fn on_change(paths: &[PathBuf], config_path: &Path, agent: &mut Agent) -> Option<Agent> {
    let touched = |file: &Path| {
        paths
            .iter()
            .any(|p| p == file || p.file_name() == file.file_name() && p.parent() == file.parent())
    };
    if touched(config_path) {
        match Config::load(config_path) {
            Ok(new) if new == agent.config => {}
            Ok(new) if new.state_dir != agent.config.state_dir => error!(
                "new configuration {} moves state_dir to {}, keeping the old one: \
                 the running agent holds the lock on {}; restart ferry-agent to move it",
                config_path.display(),
                new.state_dir.display(),
                agent.config.state_dir.display()
            ),
            Ok(new) => match crate::app::live::agent(new) {
                Ok(a) => {
                    info!("configuration {} reloaded", config_path.display());
                    return Some(a);
                }
                Err(e) => error!(
                    "new configuration {} rejected, keeping the old one: {}",
                    config_path.display(),
                    crate::app::logging::error_chain(e.as_ref())
                ),
            },
            Err(e) => error!("new configuration rejected, keeping the old one: {e}"),
        }
    }
    if touched(&agent.config.source.allowed_signers) {
        match AllowedSigners::load(&agent.config.source.allowed_signers) {
            Ok(signers) => {
                info!(signers = signers.entries().len(), "allowed_signers reloaded");
                agent.set_signers(signers);
            }
            Err(e) => error!("new allowed_signers rejected, keeping the old one: {e}"),
        }
    }
    if let Some(approvers) = agent.config.approvals.allowed_signers.clone() {
        if touched(&approvers) {
            match AllowedSigners::load(&approvers) {
                Ok(signers) => {
                    info!(
                        signers = signers.entries().len(),
                        "approvers' allowed_signers reloaded"
                    );
                    agent.set_approver_signers(signers);
                }
                Err(e) => error!("new approvers' allowed_signers rejected, keeping the old one: {e}"),
            }
        }
    }
    if paths
        .iter()
        .any(|p| p.parent() == agent.config.switch.profile.parent())
    {
        if let Ok(state) = agent.state.load() {
            let running = agent.ports.store.running_system();
            let profile = agent.ports.store.profile_system();
            if let Some(drift) = crate::policy::drift::drift(&state, running.as_ref(), profile.as_ref()) {
                warn!(ferry_phase = "drift", ferry_outcome = "drift", "{drift}");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        let i = Duration::from_secs(60);
        for _ in 0..100 {
            let d = next_delay(i, Duration::from_secs(10));
            assert!(d >= i && d < i + Duration::from_secs(10));
        }
        assert_eq!(next_delay(i, Duration::ZERO), i);
    }
}
