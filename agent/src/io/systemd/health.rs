//! Health after a switch: units that failed once things settled, and the
//! operator's own check commands, each bounded by its timeout.

use std::time::Duration;

use serde::Deserialize;

use crate::config::value::{secs, HumanDuration};
use crate::io::systemd::bus::{Systemd, SystemdError};

/// The `[health]` section of the configuration: a command without its own
/// timeout gets 60 seconds.
pub(crate) fn validate(health: HealthFile) -> HealthConfig {
    HealthConfig {
        settle: health.settle.0,
        commands: health
            .commands
            .into_iter()
            .map(|c| match c {
                HealthCommandFile::Shell(command) => HealthCommand {
                    command,
                    timeout: Duration::from_secs(60),
                },
                HealthCommandFile::Table { command, timeout } => HealthCommand {
                    command,
                    timeout: timeout.0,
                },
            })
            .collect(),
    }
}

/// What the health check found; healthy when both lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub failed_units: Vec<String>,
    /// (command, why it failed)
    pub failed_commands: Vec<(String, String)>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.failed_units.is_empty() && self.failed_commands.is_empty()
    }

    /// Only the failures the deploy can be blamed for: not the units of
    /// switch attempts (`<switch_unit>-*`, this one's or earlier ones'),
    /// which are not the system's health, and not units that had already
    /// failed before the switch.
    pub fn new_since(mut self, switch_unit: &str, failed_before: &[String]) -> Self {
        let prefix = format!("{switch_unit}-");
        self.failed_units
            .retain(|u| !u.starts_with(&prefix) && !failed_before.contains(u));
        self
    }

    /// Plain words for a status description.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.failed_units.is_empty() {
            parts.push(format!("failed units: {}", self.failed_units.join(", ")));
        }
        for (cmd, why) in &self.failed_commands {
            parts.push(format!("check `{cmd}` {why}"));
        }
        parts.join("; ")
    }
}

/// Waits `settle`, then lists failed units and runs each health command.
pub async fn check(
    systemd: &Systemd,
    settle: Duration,
    commands: &[HealthCommand],
) -> Result<Health, SystemdError> {
    tokio::time::sleep(settle).await;
    let failed_units = systemd.failed_units().await?;
    let mut failed_commands = Vec::new();
    for c in commands {
        if let Err(why) = run_check(c).await {
            failed_commands.push((c.command.clone(), why));
        }
    }
    Ok(Health {
        failed_units,
        failed_commands,
    })
}

async fn run_check(c: &HealthCommand) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&c.command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(c.timeout, cmd.output()).await {
        Err(_) => Err(format!("timed out after {}s", c.timeout.as_secs())),
        Ok(Err(e)) => Err(format!("could not run: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "exited with {}",
            out.status.code().map_or("a signal".into(), |c| c.to_string())
        )),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// How long to let units settle after a switch before looking for failures.
    pub settle: Duration,
    pub commands: Vec<HealthCommand>,
}

/// An extra health check: a shell command that must exit 0 within its timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCommand {
    pub command: String,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthFile {
    pub(crate) settle: HumanDuration,
    pub(crate) commands: Vec<HealthCommandFile>,
}

impl Default for HealthFile {
    fn default() -> Self {
        Self {
            settle: secs::<10>(),
            commands: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum HealthCommandFile {
    Shell(String),
    Table { command: String, timeout: HumanDuration },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(c: &str, secs: u64) -> HealthCommand {
        HealthCommand {
            command: c.into(),
            timeout: Duration::from_secs(secs),
        }
    }

    #[tokio::test]
    async fn commands_pass_fail_and_time_out() {
        assert!(run_check(&cmd("true", 5)).await.is_ok());
        assert_eq!(run_check(&cmd("exit 3", 5)).await.unwrap_err(), "exited with 3");
        let slow = HealthCommand {
            command: "sleep 5".into(),
            timeout: Duration::from_millis(200),
        };
        assert!(run_check(&slow).await.unwrap_err().starts_with("timed out"));
    }

    #[test]
    fn only_new_failures_count() {
        let h = Health {
            failed_units: vec![
                "ferry-switch-7.service".into(),
                "old.service".into(),
                "nginx.service".into(),
                "ferry-switchboard.service".into(),
            ],
            failed_commands: vec![],
        };
        let h = h.new_since("ferry-switch", &["old.service".into()]);
        assert_eq!(h.failed_units, ["nginx.service", "ferry-switchboard.service"]);
    }

    #[test]
    fn summary_names_everything() {
        let h = Health {
            failed_units: vec!["nginx.service".into()],
            failed_commands: vec![("curl x".into(), "exited with 7".into())],
        };
        assert!(!h.is_healthy());
        assert_eq!(
            h.summary(),
            "failed units: nginx.service; check `curl x` exited with 7"
        );
    }
}
