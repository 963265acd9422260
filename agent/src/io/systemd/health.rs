//! Health after a switch: units that failed once things settled, and the
//! operator's own check commands, each bounded by its timeout and run with
//! `health.path` before the agent's own `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::value::{absolute, secs, HumanDuration, Invalid};
use crate::io::systemd::bus::{Systemd, SystemdError};

/// The `[health]` section of the configuration: a command without its own
/// timeout gets 60 seconds; `health.path` must hold absolute directories
/// that can stand in a `PATH` (no `:`).
pub(crate) fn validate(health: HealthFile) -> Result<HealthConfig, Invalid> {
    let mut path = Vec::with_capacity(health.path.len());
    for dir in health.path {
        let dir =
            absolute(dir, "each directory of health.path").map_err(|p| Invalid::new("health.path", p))?;
        if dir.as_os_str().as_encoded_bytes().contains(&b':') {
            return Err(Invalid::new(
                "health.path",
                format!(
                    "`{}` holds a `:`, which separates PATH entries: name each directory as its own list item",
                    dir.display()
                ),
            ));
        }
        path.push(dir);
    }
    Ok(HealthConfig {
        settle: health.settle.0,
        commands: health
            .commands
            .into_iter()
            .map(|c| match c {
                HealthCommandFile::Shell(command) => HealthCommand {
                    command,
                    timeout: Duration::from_secs(60),
                    path: path.clone(),
                },
                HealthCommandFile::Table { command, timeout } => HealthCommand {
                    command,
                    timeout: timeout.0,
                    path: path.clone(),
                },
            })
            .collect(),
    })
}

/// The `PATH` a health command runs with: `extra` (from `health.path`),
/// then the agent's own `inherited` one. `None`: leave the agent's as it is.
fn command_path(extra: &[PathBuf], inherited: Option<OsString>) -> Option<OsString> {
    if extra.is_empty() {
        return None;
    }
    let inherited = inherited.unwrap_or_default();
    let rest = std::env::split_paths(&inherited).filter(|p| !p.as_os_str().is_empty());
    // Validation refused any `:` in `extra`, and the inherited entries came
    // out of a PATH: joining cannot fail.
    std::env::join_paths(extra.iter().cloned().chain(rest)).ok()
}

/// What the health check found; healthy when both lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub failed_units: Vec<String>,
    /// (command, why it failed)
    pub failed_commands: Vec<(String, CheckFailure)>,
}

/// How a health command did not pass. A command killed by a signal is kept
/// apart: whether that is the release's fault (a crash) or an interruption
/// (someone stopped it, as `systemctl stop` of the agent stops its whole
/// cgroup) is decided by `policy::faults::stop_signal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// It exited with this non-zero code.
    Exited(i32),
    /// A signal ended it.
    Killed(i32),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// It could not be started.
    CouldNotRun(String),
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckFailure::Exited(code) => write!(f, "exited with {code}"),
            CheckFailure::Killed(signal) => {
                write!(f, "was killed by {}", crate::io::nix::signal_name(*signal))
            }
            CheckFailure::TimedOut(t) => write!(f, "timed out after {}s", t.as_secs()),
            CheckFailure::CouldNotRun(e) => write!(f, "could not run: {e}"),
        }
    }
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

    /// The health commands a signal ended, with the signal.
    pub fn killed(&self) -> impl Iterator<Item = (&str, i32)> {
        self.failed_commands.iter().filter_map(|(c, f)| match f {
            CheckFailure::Killed(signal) => Some((c.as_str(), *signal)),
            _ => None,
        })
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

/// Kills a health command's whole process group when dropped: the shell
/// and whatever it started, whether the check timed out or the agent
/// stops in the middle of it. Nothing of a check outlives it.
struct ProcessGroup(Option<rustix::process::Pid>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // Gone already (it ended by itself): nothing to do.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

async fn run_check(c: &HealthCommand) -> Result<(), CheckFailure> {
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&c.command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A group of its own, so that all of it can be killed.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(path) = command_path(&c.path, std::env::var_os("PATH")) {
        cmd.env("PATH", path);
    }
    let child = cmd
        .spawn()
        .map_err(|e| CheckFailure::CouldNotRun(e.to_string()))?;
    let _group = ProcessGroup(
        child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
    );
    match tokio::time::timeout(c.timeout, child.wait_with_output()).await {
        Err(_) => Err(CheckFailure::TimedOut(c.timeout)),
        Ok(Err(e)) => Err(CheckFailure::CouldNotRun(e.to_string())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(match (out.status.code(), out.status.signal()) {
            (Some(code), _) => CheckFailure::Exited(code),
            (None, Some(signal)) => CheckFailure::Killed(signal),
            (None, None) => CheckFailure::CouldNotRun(out.status.to_string()),
        }),
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
    /// `health.path`: directories searched for programs before the agent's
    /// own `PATH`, for this command only.
    pub path: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthFile {
    pub(crate) settle: HumanDuration,
    pub(crate) commands: Vec<HealthCommandFile>,
    pub(crate) path: Vec<PathBuf>,
}

impl Default for HealthFile {
    fn default() -> Self {
        Self {
            settle: secs::<10>(),
            commands: Vec::new(),
            path: Vec::new(),
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
            path: Vec::new(),
        }
    }

    /// A program that is only in a directory of `health.path` is found by
    /// a health command given that path, and not without it; the agent's
    /// own `PATH` still follows (the shell's `true` below needs nothing,
    /// but `cat` must come from the inherited PATH).
    #[tokio::test]
    async fn a_command_finds_a_program_only_through_health_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("bin");
        std::fs::create_dir(&tools).unwrap();
        let probe = tools.join("ferry-health-probe");
        std::fs::write(&probe, "#!/bin/sh\necho ok | cat\n").unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();

        let without = cmd("ferry-health-probe", 5);
        // 127: the shell's "command not found".
        assert_eq!(run_check(&without).await.unwrap_err(), CheckFailure::Exited(127));

        let file: HealthFile = toml::from_str(&format!(
            "commands = [\"ferry-health-probe\"]\npath = [\"{}\"]\n",
            tools.display()
        ))
        .unwrap();
        let config = validate(file).unwrap();
        assert_eq!(config.commands[0].path, std::slice::from_ref(&tools));
        assert_eq!(run_check(&config.commands[0]).await, Ok(()));
    }

    #[test]
    fn health_path_comes_before_the_agents_path() {
        let joined = command_path(
            &["/nix/store/x-curl/bin".into()],
            Some("/run/current-system/sw/bin:/bin".into()),
        );
        assert_eq!(
            joined.unwrap(),
            "/nix/store/x-curl/bin:/run/current-system/sw/bin:/bin"
        );
        assert_eq!(command_path(&[], Some("/bin".into())), None);
        assert_eq!(command_path(&["/opt/bin".into()], None).unwrap(), "/opt/bin");
    }

    #[test]
    fn health_path_refuses_relative_directories_and_colons() {
        let refuse = |path: &str| {
            let file: HealthFile = toml::from_str(&format!("path = [{path}]\n")).unwrap();
            validate(file).unwrap_err()
        };
        let relative = refuse("\"bin\"");
        assert_eq!(relative.key, "health.path");
        assert!(
            relative.problem.contains("`bin` is not an absolute path"),
            "{}",
            relative.problem
        );
        let colon = refuse("\"/a/bin:/b/bin\"");
        assert_eq!(colon.key, "health.path");
        assert!(colon.problem.contains("its own list item"), "{}", colon.problem);
    }

    #[tokio::test]
    async fn commands_pass_fail_and_time_out() {
        assert!(run_check(&cmd("true", 5)).await.is_ok());
        assert_eq!(
            run_check(&cmd("exit 3", 5)).await.unwrap_err(),
            CheckFailure::Exited(3)
        );
        let slow = HealthCommand {
            command: "sleep 5".into(),
            timeout: Duration::from_millis(200),
            path: Vec::new(),
        };
        assert!(matches!(
            run_check(&slow).await.unwrap_err(),
            CheckFailure::TimedOut(_)
        ));
        // A shell killed by a signal, as `systemctl stop` kills the agent's
        // whole cgroup: the signal is kept, not "exited with …".
        let killed = run_check(&cmd("kill -TERM $$", 5)).await.unwrap_err();
        assert_eq!(killed, CheckFailure::Killed(15));
        assert_eq!(killed.to_string(), "was killed by SIGTERM");
    }

    /// A check that times out is killed with everything it started: nothing
    /// of it is left running.
    #[tokio::test]
    async fn a_check_that_times_out_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let slow = HealthCommand {
            command: format!("sleep 600 & echo $! > {}; wait", pid_file.display()),
            timeout: Duration::from_millis(500),
            path: Vec::new(),
        };
        assert!(matches!(
            run_check(&slow).await.unwrap_err(),
            CheckFailure::TimedOut(_)
        ));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = rustix::process::Pid::from_raw(pid.trim().parse().unwrap()).unwrap();
        // Killed, so at most a zombie until it is reaped; waited for
        // (bounded), never assumed.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z'))
            })
        };
        for _ in 0..100 {
            if gone() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the check's `sleep 600` still runs");
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
            failed_commands: vec![
                ("curl x".into(), CheckFailure::Exited(7)),
                ("crash".into(), CheckFailure::Killed(11)),
            ],
        };
        assert!(!h.is_healthy());
        assert_eq!(
            h.summary(),
            "failed units: nginx.service; check `curl x` exited with 7; check `crash` was killed by SIGSEGV"
        );
        assert_eq!(h.killed().collect::<Vec<_>>(), [("crash", 11)]);
    }
}
