//! How a deploy in flight ends, decided from what was observed: after the
//! switch and the health check (roll back, or end, and whether a reboot is
//! needed), after a rollback, and after a reboot. Each [`Ending`] carries its
//! [`OutcomeKind`] and the plain words the journal, the state and the forge
//! show. Pure: no I/O.

use ferry_signer::{Action, HostName, StorePath};

use crate::io::forge::StatusState;
use crate::io::systemd::health::Health;
use crate::io::systemd::switch::SwitchResult;
use crate::policy::wording::{runs_release, runs_release_reboot_required, runs_release_rebooted};
use crate::state::OutcomeKind;

/// The commit status an ended deploy is reported with.
pub fn outcome_status(kind: OutcomeKind) -> StatusState {
    match kind {
        OutcomeKind::Success | OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed => {
            StatusState::Success
        }
        OutcomeKind::Refused | OutcomeKind::Failed => StatusState::Failure,
        OutcomeKind::Error => StatusState::Error,
    }
}

/// How a deploy ends: the outcome and its plain words (for the state file,
/// the journal and the commit status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub kind: OutcomeKind,
    pub description: String,
}

impl Ending {
    fn new(kind: OutcomeKind, description: String) -> Self {
        Self { kind, description }
    }
}

/// Whether to roll back after a switch and a health check.
pub fn needs_rollback(action: Action, switch: SwitchResult, healthy: bool, rollback_enabled: bool) -> bool {
    if !rollback_enabled {
        return false;
    }
    // A `boot` deploy changes nothing running, so health is not its business.
    let unhealthy = !healthy && action != Action::Boot;
    !switch.activated() || unhealthy
}

/// Whether health is checked after this switch: only a system that was
/// activated, and not for `boot` (nothing running changed).
pub fn checks_health(action: Action, switch: SwitchResult) -> bool {
    switch.activated() && action != Action::Boot
}

/// Everything known once the switch ended and health was checked.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    pub host: &'a HostName,
    pub serial: u64,
    pub action: Action,
    pub switch: SwitchResult,
    /// What the health check found (empty when it did not run, see
    /// [`checks_health`]).
    pub health: &'a Health,
    /// Whether the new system's kernel, initrd or modules differ from the
    /// booted system's (only asked for `switch`).
    pub kernel_changed: bool,
    pub rollback_enabled: bool,
    /// The system running before the deploy.
    pub previous: Option<&'a StorePath>,
}

/// What to do once the switch ended and health was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCheck {
    /// Roll back to `to` because of `problem`.
    RollBack { to: StorePath, problem: String },
    /// The deploy ends here.
    End(Ending),
}

/// Decides what a finished switch and its health check mean.
pub fn after_check(c: &Checked<'_>) -> AfterCheck {
    let problem = if c.switch.activated() {
        c.health.summary()
    } else {
        c.switch.describe()
    };
    if needs_rollback(c.action, c.switch, c.health.is_healthy(), c.rollback_enabled) {
        return match c.previous {
            Some(previous) => AfterCheck::RollBack {
                to: previous.clone(),
                problem,
            },
            None => AfterCheck::End(Ending::new(
                OutcomeKind::Failed,
                format!("{problem}; no previous system to roll back to"),
            )),
        };
    }
    if !c.switch.activated() || !c.health.is_healthy() {
        return AfterCheck::End(Ending::new(
            OutcomeKind::Failed,
            format!("{problem}; rollback disabled"),
        ));
    }
    let reboot = c.switch == SwitchResult::RebootRequired || (c.action == Action::Switch && c.kernel_changed);
    AfterCheck::End(match (c.action, reboot) {
        (Action::Boot, _) | (_, true) => reboot_required(c.host, c.serial, c.action),
        (_, false) => Ending::new(OutcomeKind::Success, runs_release(c.host, c.serial)),
    })
}

/// How a deploy that needs a reboot ends without one: `boot` installed
/// (active after a reboot), else running and needing a reboot.
pub fn reboot_required(host: &HostName, serial: u64, action: Action) -> Ending {
    match action {
        Action::Boot => Ending::new(
            OutcomeKind::Installed,
            format!("release {serial} installed; active after reboot"),
        ),
        _ => Ending::new(
            OutcomeKind::SuccessRebootRequired,
            runs_release_reboot_required(host, serial),
        ),
    }
}

/// Whether an ending is one a reboot policy reboots for.
pub fn needs_reboot(kind: OutcomeKind) -> bool {
    matches!(kind, OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed)
}

/// How a deploy ends once the host rebooted into release `serial`, whose
/// system is `toplevel`, and `booted` is what booted: its system is a
/// success; anything else (the boot loader fell back, someone picked
/// another generation) a failure naming it.
pub fn after_reboot(
    host: &HostName,
    serial: u64,
    toplevel: &StorePath,
    booted: Option<&StorePath>,
) -> Ending {
    match booted {
        Some(b) if b == toplevel => Ending::new(
            OutcomeKind::Success,
            runs_release_rebooted(host, serial),
        ),
        Some(b) => Ending::new(
            OutcomeKind::Failed,
            format!("release {serial} did not boot (boot loader fallback, or another generation chosen): booted {b}"),
        ),
        None => Ending::new(
            OutcomeKind::Failed,
            format!("rebooted, but /run/booted-system names no system; release {serial} is not confirmed"),
        ),
    }
}

/// How a deploy ends once the rollback to `to` (because of `problem`) ended
/// with `result`: failed either way, in words that say whether the previous
/// system is back.
pub fn after_rollback(problem: &str, to: &StorePath, result: SwitchResult) -> Ending {
    let description = if result.activated() {
        format!("{problem}; rolled back to {}", to.name())
    } else {
        format!("{problem}; rollback failed too: {}", result.describe())
    };
    Ending::new(OutcomeKind::Failed, description)
}

/// The action that puts the previous system back.
pub fn rollback_action(action: Action) -> Action {
    match action {
        Action::Test => Action::Test,
        _ => Action::Switch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostName {
        "web1".parse().unwrap()
    }

    #[test]
    fn rollback_rules() {
        use SwitchResult::*;
        assert!(!needs_rollback(Action::Switch, Ok, true, true));
        assert!(!needs_rollback(Action::Switch, RebootRequired, true, true));
        assert!(needs_rollback(Action::Switch, Failed { code: 4 }, true, true));
        assert!(needs_rollback(
            Action::Switch,
            Aborted { timed_out: true },
            true,
            true
        ));
        assert!(needs_rollback(Action::Switch, Ok, false, true));
        assert!(needs_rollback(Action::Test, Ok, false, true));
        assert!(!needs_rollback(Action::Boot, Ok, false, true));
        assert!(!needs_rollback(Action::Switch, Failed { code: 1 }, false, false));
    }

    fn checked<'a>(
        host: &'a HostName,
        switch: SwitchResult,
        health: &'a Health,
        previous: Option<&'a StorePath>,
    ) -> Checked<'a> {
        Checked {
            host,
            serial: 4,
            action: Action::Switch,
            switch,
            health,
            kernel_changed: false,
            rollback_enabled: true,
            previous,
        }
    }

    fn concluded(a: AfterCheck) -> (OutcomeKind, String) {
        match a {
            AfterCheck::End(c) => (c.kind, c.description),
            other => panic!("expected an ending, got {other:?}"),
        }
    }

    #[test]
    fn what_a_finished_switch_means() {
        let web1 = host();
        let checked = |switch, health, previous| checked(&web1, switch, health, previous);
        let healthy = Health::default();
        let sick = Health {
            failed_units: vec!["nginx.service".into()],
            failed_commands: vec![],
        };
        let prev = path('a');
        let ok = checked(SwitchResult::Ok, &healthy, Some(&prev));
        assert_eq!(
            concluded(after_check(&ok)),
            (OutcomeKind::Success, "web1 runs release 4".into())
        );
        let exit100 = checked(SwitchResult::RebootRequired, &healthy, Some(&prev));
        assert_eq!(
            concluded(after_check(&exit100)),
            (
                OutcomeKind::SuccessRebootRequired,
                "web1 runs release 4; reboot required".into()
            )
        );
        let new_kernel = Checked {
            kernel_changed: true,
            ..ok
        };
        assert_eq!(
            concluded(after_check(&new_kernel)).0,
            OutcomeKind::SuccessRebootRequired
        );
        // `test` never needs a reboot for a kernel: nothing is installed.
        let test = Checked {
            action: Action::Test,
            ..new_kernel
        };
        assert_eq!(concluded(after_check(&test)).0, OutcomeKind::Success);
        let boot = Checked {
            action: Action::Boot,
            ..ok
        };
        assert_eq!(
            concluded(after_check(&boot)),
            (
                OutcomeKind::Installed,
                "release 4 installed; active after reboot".into()
            )
        );
        assert_eq!(
            after_check(&checked(SwitchResult::Ok, &sick, Some(&prev))),
            AfterCheck::RollBack {
                to: prev.clone(),
                problem: "failed units: nginx.service".into()
            }
        );
        assert_eq!(
            after_check(&checked(SwitchResult::Failed { code: 4 }, &healthy, Some(&prev))),
            AfterCheck::RollBack {
                to: prev.clone(),
                problem: "switch-to-configuration failed (exit 4)".into()
            }
        );
        assert_eq!(
            concluded(after_check(&checked(SwitchResult::Ok, &sick, None))),
            (
                OutcomeKind::Failed,
                "failed units: nginx.service; no previous system to roll back to".into()
            )
        );
        let no_rollback = Checked {
            rollback_enabled: false,
            ..checked(SwitchResult::Aborted { timed_out: true }, &healthy, Some(&prev))
        };
        assert_eq!(
            concluded(after_check(&no_rollback)),
            (
                OutcomeKind::Failed,
                "switch-to-configuration timed out and was stopped; rollback disabled".into()
            )
        );
    }

    #[test]
    fn what_a_rollback_means() {
        let to = path('a');
        let back = after_rollback("failed units: x.service", &to, SwitchResult::Ok);
        assert_eq!(back.kind, OutcomeKind::Failed);
        assert_eq!(
            back.description,
            format!("failed units: x.service; rolled back to {}", to.name())
        );
        let stuck = after_rollback("p", &to, SwitchResult::Failed { code: 1 });
        assert_eq!(
            stuck.description,
            "p; rollback failed too: switch-to-configuration failed (exit 1)"
        );
        assert_eq!(rollback_action(Action::Test), Action::Test);
        assert_eq!(rollback_action(Action::Boot), Action::Switch);
    }

    fn path(c: char) -> StorePath {
        format!("/nix/store/{}-nixos-system-web1", c.to_string().repeat(32))
            .parse()
            .unwrap()
    }
}
