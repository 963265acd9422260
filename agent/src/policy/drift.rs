//! Drift: whether the system differs from what Ferry last deployed, and how
//! (the profile or the running system changed outside Ferry). Pure: `status`
//! and the metrics bring what the store says.

use ferry_signer::StorePath;

use crate::state::{OutcomeKind, State};

/// Whether the system differs from what Ferry last deployed, and how.
pub fn drift(state: &State, running: Option<&StorePath>, profile: Option<&StorePath>) -> Option<String> {
    if state.in_flight.is_some() {
        return None;
    }
    let outcome = state.last_success.as_ref()?;
    let deployed = outcome.toplevel.as_ref()?;
    if profile.is_some_and(|p| p != deployed) {
        return Some(format!(
            "the system profile points at {}, not {} which Ferry deployed (release {}): changed outside Ferry",
            profile.map_or("nothing".into(), |p| p.to_string()),
            deployed,
            outcome.serial
        ));
    }
    // After a `boot` deploy the running system lags until the reboot.
    let boot_pending = outcome.result == OutcomeKind::Installed;
    if !boot_pending && running.is_some_and(|r| r != deployed) {
        return Some(format!(
            "the running system is {}, not {} which Ferry deployed (release {}): switched outside Ferry",
            running.map_or("unknown".into(), |r| r.to_string()),
            deployed,
            outcome.serial
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    use crate::state::Outcome;

    fn p(c: char) -> StorePath {
        format!("/nix/store/{}-nixos-system-web1", c.to_string().repeat(32))
            .parse()
            .unwrap()
    }

    fn deployed(kind: OutcomeKind) -> State {
        State {
            last_success: Some(Outcome {
                commit: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap(),
                serial: 3,
                toplevel: Some(p('a')),
                result: kind,
                description: String::new(),
                at: Utc::now(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn drift_rules() {
        let s = deployed(OutcomeKind::Success);
        assert_eq!(drift(&s, Some(&p('a')), Some(&p('a'))), None);
        assert!(drift(&s, Some(&p('b')), Some(&p('a')))
            .unwrap()
            .contains("switched outside Ferry"));
        assert!(drift(&s, Some(&p('a')), Some(&p('b')))
            .unwrap()
            .contains("profile points at"));
        // A boot deploy waits for a reboot: the running system may differ.
        let boot = deployed(OutcomeKind::Installed);
        assert_eq!(drift(&boot, Some(&p('z')), Some(&p('a'))), None);
        // A switch that wants a reboot still switched: the running system counts.
        let reboot = deployed(OutcomeKind::SuccessRebootRequired);
        assert!(drift(&reboot, Some(&p('z')), Some(&p('a'))).is_some());
        // A fresh host has nothing to drift from.
        assert_eq!(drift(&State::default(), Some(&p('b')), None), None);
    }
}
