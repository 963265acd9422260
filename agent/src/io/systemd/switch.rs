//! Activating a system: `<toplevel>/bin/switch-to-configuration <action>` run
//! as a transient systemd service (so it survives the agent's own restart),
//! awaited with a timeout, its outcome read over D-Bus — and also written by
//! the unit's `ExecStopPost` to a file in the state directory, so an agent
//! killed mid-switch finds the outcome when it starts again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_signer::{Action, StorePath};

use serde::Deserialize;

use crate::config::value::{absolute, secs, HumanDuration, Invalid};
use crate::io::durable::{atomic_write, FileError};
use crate::io::systemd::bus::{Command, ServiceOutcome, Systemd, SystemdError, TransientService, UnitState};

/// Environment variables passed to switch-to-configuration when set, as
/// nixos-rebuild does.
const PASSED_ENV: &[&str] = &["LOCALE_ARCHIVE", "NIXOS_INSTALL_BOOTLOADER"];

/// The `[switch]` section of the configuration, validated.
pub(crate) fn validate(switch: SwitchFile) -> Result<SwitchConfig, Invalid> {
    let profile = absolute(switch.profile, "profile").map_err(|p| Invalid::new("switch.profile", p))?;
    if switch.unit.is_empty()
        || !switch
            .unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
    {
        return Err(Invalid::new(
            "switch.unit",
            format!("`{}` is not a valid unit name (without .service)", switch.unit),
        ));
    }
    Ok(SwitchConfig {
        profile,
        unit: switch.unit.trim_end_matches(".service").to_owned(),
        timeout: switch.timeout.0,
        rollback: switch.rollback,
    })
}

/// Runs and observes switch units.
#[derive(Debug, Clone)]
pub struct Switcher {
    pub systemd: Systemd,
    /// Unit name prefix (`ferry-switch`); each attempt gets its own unit.
    pub unit_prefix: String,
    pub timeout: Duration,
    /// Where `ExecStopPost` records outcomes (the state directory).
    pub record_dir: PathBuf,
    /// This agent's executable, which records the outcome.
    pub agent_exe: PathBuf,
}

/// One activation attempt: its unit and the file its outcome goes to. Names
/// derive from the release serial, so a restarted agent finds the unit of the
/// attempt it recorded, and a unit systemd has not collected yet never blocks
/// the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub unit: String,
    result_file: PathBuf,
}

/// What is known about an attempt after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Still running: wait for it.
    Running,
    /// Finished with this result.
    Finished(SwitchResult),
    /// No unit and no recorded outcome: it never started (or the machine lost
    /// power mid-switch); the caller decides from the running system.
    Unknown,
}

impl Switcher {
    /// The attempt that activates release `serial` (or rolls it back).
    pub fn attempt(&self, serial: u64, rollback: bool) -> Attempt {
        let unit = match rollback {
            false => format!("{}-{serial}", self.unit_prefix),
            true => format!("{}-{serial}-rollback", self.unit_prefix),
        };
        let result_file = self.record_dir.join(format!("{unit}.result"));
        Attempt { unit, result_file }
    }

    /// Starts switch-to-configuration for `toplevel`. Refuses while any
    /// switch unit of this agent is active: the prefix is the lock.
    pub async fn start(
        &self,
        attempt: &Attempt,
        toplevel: &StorePath,
        action: Action,
    ) -> Result<(), SystemdError> {
        if let Some(busy) = self
            .systemd
            .active_units(&format!("{}-*.service", self.unit_prefix))
            .await?
            .first()
        {
            return Err(SystemdError::Busy { unit: busy.clone() });
        }
        // Synced: a result of an earlier attempt brought back by a power cut
        // would be taken for this one's.
        // (A file that cannot be removed is overwritten by the unit's own.)
        let _ = crate::io::durable::remove_file(&attempt.result_file);
        let program = format!("{toplevel}/bin/switch-to-configuration");
        let record = Command::new(
            self.agent_exe.display().to_string(),
            &["record-switch-result", &attempt.result_file.display().to_string()],
        );
        let environment = PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
            .collect();
        let service = TransientService {
            name: attempt.unit.clone(),
            description: format!("Ferry: switch-to-configuration {action} {}", toplevel.name()),
            exec_start: Command::new(program, &[action.as_str()]),
            exec_stop_post: Some(record),
            environment,
            runtime_max: self.timeout,
        };
        self.systemd.start(&service).await
    }

    /// Waits for the attempt to end. Past the timeout (plus a margin for
    /// systemd's own `RuntimeMaxSec` stop) the unit is stopped.
    pub async fn wait(&self, attempt: &Attempt) -> Result<SwitchResult, SystemdError> {
        let bound = self.timeout + Duration::from_secs(30);
        let outcome = match self.systemd.wait(&attempt.unit, bound).await {
            Ok(outcome) => outcome,
            Err(SystemdError::Timeout { .. }) => {
                self.systemd.stop(&attempt.unit).await?;
                let _ = self.systemd.wait(&attempt.unit, Duration::from_secs(90)).await;
                let _ = self.systemd.release(&attempt.unit).await;
                return Ok(SwitchResult::Aborted { timed_out: true });
            }
            Err(e) => return Err(e),
        };
        let result = match outcome {
            Some(o) => classify(&o),
            None => attempt
                .recorded()
                .unwrap_or(SwitchResult::Aborted { timed_out: false }),
        };
        self.systemd.release(&attempt.unit).await?;
        Ok(result)
    }

    /// After a restart: is the attempt running, finished, or unknown?
    pub async fn observe(&self, attempt: &Attempt) -> Result<Observed, SystemdError> {
        match self.systemd.state(&attempt.unit).await? {
            UnitState::Running => Ok(Observed::Running),
            UnitState::Finished(o) => {
                let _ = self.systemd.release(&attempt.unit).await;
                Ok(Observed::Finished(classify(&o)))
            }
            UnitState::Absent => Ok(attempt.recorded().map_or(Observed::Unknown, Observed::Finished)),
        }
    }
}

impl Attempt {
    /// The outcome `ExecStopPost` wrote, if any.
    fn recorded(&self) -> Option<SwitchResult> {
        parse_result_file(&std::fs::read_to_string(&self.result_file).ok()?)
    }
}

/// Maps systemd's view of the finished unit to what the decision needs.
/// The main process's exit decides: a unit can end `exit-code` because a
/// control process (our `ExecStopPost` recorder) failed although
/// switch-to-configuration itself exited 0.
pub fn classify(o: &ServiceOutcome) -> SwitchResult {
    const EXITED: i32 = 1;
    match (o.result.as_str(), o.code, o.status) {
        ("timeout", _, _) => SwitchResult::Aborted { timed_out: true },
        (_, EXITED, 0) => SwitchResult::Ok,
        (_, EXITED, 100) => SwitchResult::RebootRequired,
        (_, EXITED, code) => SwitchResult::Failed { code },
        ("success", _, _) => SwitchResult::Ok,
        _ => SwitchResult::Aborted { timed_out: false },
    }
}

/// Parses `"$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS"` as written by
/// [`record_switch_result`].
pub fn parse_result_file(text: &str) -> Option<SwitchResult> {
    let mut it = text.split_whitespace();
    let result = it.next()?;
    let code = match it.next().unwrap_or("") {
        "exited" => 1,
        "killed" => 2,
        "dumped" => 3,
        _ => 0,
    };
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
    Some(classify(&ServiceOutcome {
        result: result.to_owned(),
        code,
        status,
    }))
}

/// The body of `ferry-agent record-switch-result FILE`, run by the switch
/// unit's `ExecStopPost`: records systemd's verdict durably.
pub fn record_switch_result(file: &Path) -> Result<(), FileError> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let line = format!(
        "{} {} {}\n",
        var("SERVICE_RESULT"),
        var("EXIT_CODE"),
        var("EXIT_STATUS")
    );
    atomic_write(file, line.as_bytes()).map_err(|source| FileError::Write {
        path: file.to_owned(),
        source,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct SwitchConfig {
    /// The system profile (`/nix/var/nix/profiles/system`).
    pub profile: PathBuf,
    /// Name of the transient unit running switch-to-configuration (also a lock).
    pub unit: String,
    /// How long switch-to-configuration may run before it is stopped.
    pub timeout: Duration,
    /// Roll back automatically when the switch or a health check fails.
    pub rollback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SwitchFile {
    pub(crate) profile: PathBuf,
    pub(crate) unit: String,
    pub(crate) timeout: HumanDuration,
    pub(crate) rollback: bool,
    /// The deploy window, as written: validated by `policy::window`
    /// (`Config::deploy_window`), since it is a hold, not a switch setting.
    pub(crate) window: Vec<String>,
}

impl Default for SwitchFile {
    fn default() -> Self {
        Self {
            profile: "/nix/var/nix/profiles/system".into(),
            unit: "ferry-switch".into(),
            timeout: secs::<900>(),
            rollback: true,
            window: Vec::new(),
        }
    }
}

/// What the switch unit reported, reduced to what matters for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchResult {
    /// Exit 0.
    Ok,
    /// Exit 100: activated, but the new kernel/initrd needs a reboot.
    RebootRequired,
    /// Any other exit status (4: some units failed to start).
    Failed { code: i32 },
    /// Killed by a signal or stopped for running too long.
    Aborted { timed_out: bool },
}

impl SwitchResult {
    /// Plain words for logs and statuses.
    pub fn describe(self) -> String {
        match self {
            SwitchResult::Ok => "switch succeeded".into(),
            SwitchResult::RebootRequired => "switch succeeded; reboot required".into(),
            SwitchResult::Failed { code } => format!("switch-to-configuration failed (exit {code})"),
            SwitchResult::Aborted { timed_out: true } => {
                "switch-to-configuration timed out and was stopped".into()
            }
            SwitchResult::Aborted { timed_out: false } => "switch-to-configuration was killed".into(),
        }
    }

    /// A compact form for the state file.
    pub fn encode(self) -> String {
        match self {
            SwitchResult::Ok => "ok".into(),
            SwitchResult::RebootRequired => "reboot-required".into(),
            SwitchResult::Failed { code } => format!("failed:{code}"),
            SwitchResult::Aborted { timed_out } => format!("aborted:{timed_out}"),
        }
    }

    /// Inverse of [`SwitchResult::encode`].
    pub fn decode(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "ok" => Some(SwitchResult::Ok),
            None if s == "reboot-required" => Some(SwitchResult::RebootRequired),
            Some(("failed", code)) => code.parse().ok().map(|code| SwitchResult::Failed { code }),
            Some(("aborted", t)) => t
                .parse()
                .ok()
                .map(|timed_out| SwitchResult::Aborted { timed_out }),
            _ => None,
        }
    }
}

impl SwitchResult {
    /// Whether the new system was activated (possibly wanting a reboot).
    pub fn activated(self) -> bool {
        matches!(self, SwitchResult::Ok | SwitchResult::RebootRequired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(result: &str, code: i32, status: i32) -> ServiceOutcome {
        ServiceOutcome {
            result: result.into(),
            code,
            status,
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(classify(&o("success", 1, 0)), SwitchResult::Ok);
        assert_eq!(classify(&o("exit-code", 1, 100)), SwitchResult::RebootRequired);
        assert_eq!(classify(&o("exit-code", 1, 4)), SwitchResult::Failed { code: 4 });
        assert_eq!(
            classify(&o("timeout", 2, 15)),
            SwitchResult::Aborted { timed_out: true }
        );
        // The recorder (a control process) failed; the switch did not.
        assert_eq!(classify(&o("exit-code", 1, 0)), SwitchResult::Ok);
        assert_eq!(
            classify(&o("signal", 2, 9)),
            SwitchResult::Aborted { timed_out: false }
        );
    }

    #[test]
    fn result_files() {
        assert_eq!(parse_result_file("success exited 0\n"), Some(SwitchResult::Ok));
        assert_eq!(
            parse_result_file("exit-code exited 100"),
            Some(SwitchResult::RebootRequired)
        );
        assert_eq!(
            parse_result_file("exit-code exited 4"),
            Some(SwitchResult::Failed { code: 4 })
        );
        assert_eq!(
            parse_result_file("timeout killed TERM"),
            Some(SwitchResult::Aborted { timed_out: true })
        );
        assert_eq!(parse_result_file(""), None);
    }

    #[test]
    fn switch_results_encode_round_trip() {
        use SwitchResult::*;
        for r in [
            Ok,
            RebootRequired,
            Failed { code: 4 },
            Aborted { timed_out: true },
            Aborted { timed_out: false },
        ] {
            assert_eq!(SwitchResult::decode(&r.encode()), Some(r));
        }
        assert_eq!(SwitchResult::decode("nonsense"), None);
    }
}
