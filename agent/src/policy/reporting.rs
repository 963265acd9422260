//! Which of a host's commit statuses reach the forge (`report.statuses`):
//! without receipts every one, as always; with receipts the host's signed
//! receipts say everything, and the forge gets only what a person should
//! see there — failures and errors (`failures`, the default), and whatever
//! follows one on the same commit, so a host that recovers does not stay
//! red — or nothing at all (`none`), leaving the fleet's aggregated
//! statuses (`ferry-signer wait`/`rollout`) to speak for it.

use std::time::Duration;

use ferry_signer::forge::Statuses;

use crate::io::forge::StatusState;

/// Whether a status of `state` reaches the forge under `statuses`, when
/// this host's last status on the forge for the same commit was red
/// (a failure or an error) or not.
pub fn to_forge(statuses: Statuses, red: bool, state: StatusState) -> bool {
    match statuses {
        Statuses::All => true,
        Statuses::None => false,
        Statuses::Failures => red || is_red(state),
    }
}

/// Where a status may go at most: the forge, the receipt (each still as
/// [`to_forge`] and the receipt settings say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub forge: bool,
    pub receipt: bool,
}

impl Default for Route {
    fn default() -> Self {
        Self {
            forge: true,
            receipt: true,
        }
    }
}

/// Where the refusal of a release that does not name this host goes: a
/// rollout's wave releases name a few hosts, and every other host refuses
/// each. Without receipts (or with `all`), to the forge as always; with
/// receipts, never as a receipt (the release is not this host's), and not
/// to the forge either under `failures` or `none` — 10,000 hosts would
/// otherwise post a "failure" on every wave.
pub fn not_named(statuses: Statuses, receipts: bool) -> Route {
    Route {
        forge: !receipts || statuses == Statuses::All,
        receipt: false,
    }
}

/// A failure or an error: red on the forge.
pub fn is_red(state: StatusState) -> bool {
    matches!(state, StatusState::Failure | StatusState::Error)
}

/// The pause before the bucket is asked again after `failures` drains in
/// a row stopped at a fault: 5 s doubling up to 5 minutes, each between
/// half and all of that (`random` spreads a fleet that failed together).
pub fn receipt_retry(failures: u32, random: u64) -> Duration {
    let full = Duration::from_secs(5)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(300));
    let half = full / 2;
    half + Duration::from_millis(random % (half.as_millis() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatusState::*;

    #[test]
    fn what_reaches_the_forge() {
        for state in [Pending, Success, Failure, Error] {
            assert!(to_forge(Statuses::All, false, state));
            assert!(!to_forge(Statuses::None, false, state));
            assert!(!to_forge(Statuses::None, true, state));
        }
        // Only failures, until one was posted: then what follows too.
        assert!(!to_forge(Statuses::Failures, false, Pending));
        assert!(!to_forge(Statuses::Failures, false, Success));
        assert!(to_forge(Statuses::Failures, false, Failure));
        assert!(to_forge(Statuses::Failures, false, Error));
        assert!(to_forge(Statuses::Failures, true, Pending));
        assert!(to_forge(Statuses::Failures, true, Success));
    }

    #[test]
    fn a_release_that_does_not_name_the_host_is_not_its_to_report() {
        let forge_only = Route {
            forge: true,
            receipt: false,
        };
        assert_eq!(not_named(Statuses::All, false), forge_only);
        assert_eq!(not_named(Statuses::All, true), forge_only);
        for quiet in [Statuses::Failures, Statuses::None] {
            assert_eq!(
                not_named(quiet, true),
                Route {
                    forge: false,
                    receipt: false
                }
            );
        }
    }

    #[test]
    fn a_failing_bucket_is_left_alone_longer_each_time_with_jitter() {
        let secs = |failures, random| receipt_retry(failures, random).as_secs_f64();
        assert_eq!(secs(0, 0), 2.5);
        assert_eq!(secs(0, u64::MAX), 2.5 + (u64::MAX % 2501) as f64 / 1000.0);
        assert_eq!(secs(1, 0), 5.0);
        assert_eq!(secs(5, 0), 80.0);
        assert_eq!(secs(6, 0), 150.0);
        assert_eq!(secs(60, 0), 150.0);
        for random in [0, 1, 77, u64::MAX] {
            assert!((150.0..=300.0).contains(&secs(40, random)));
        }
    }
}
