//! What the agent trusts about the time. The host's wall clock judges expiry,
//! windows and fault timers, and it can be wrong: hours or years off on a
//! machine without a battery-backed clock before NTP has synced. Two facts
//! bound it: a release's `created` time (signed, from CI's clock) is a floor
//! — the true time is after it — and a clock that moves back past a time the
//! agent wrote down has moved, not time. Pure: the time is an argument.

use chrono::{DateTime, Duration, Utc};

/// How far apart CI's clock and this host's may be before the host's is
/// taken for wrong: further than any two clocks that NTP keeps.
pub const TOLERANCE: Duration = Duration::minutes(5);

/// How far this host's clock (`now`) is behind a release `created` at that
/// time, when it is by more than [`TOLERANCE`]: the release cannot have been
/// made in this host's future, so the clock (or CI's) is wrong.
pub fn behind(now: DateTime<Utc>, created: DateTime<Utc>) -> Option<Duration> {
    let by = created - now;
    (by > TOLERANCE).then_some(by)
}

/// The journal's words for a clock [`behind`] a release.
pub fn behind_words(serial: u64, created: DateTime<Utc>, now: DateTime<Utc>, by: Duration) -> String {
    format!(
        "this host's clock looks wrong: release {serial} was created at {}, {} after this host's clock \
         says it is now ({}); expiry, windows and fault timers follow this clock: check NTP (timedatectl status)",
        created.format("%Y-%m-%d %H:%M:%S UTC"),
        humantime::format_duration(by.to_std().unwrap_or_default()),
        now.format("%Y-%m-%d %H:%M:%S UTC"),
    )
}

/// The first sighting of something (a fault, a missing closure) as it
/// stands at `now`: unchanged, unless the clock is now well before it —
/// then the clock was moved back (a first sync, a fix by hand), and the
/// sighting starts again now, so a timer neither fires at once nor waits for
/// the old time to come round again.
pub fn since(first: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    if first - now > TOLERANCE {
        now
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_release_from_this_hosts_future_says_its_clock_is_behind() {
        let created = at("2026-12-06T10:00:00Z");
        assert_eq!(behind(at("2026-12-06T10:00:00Z"), created), None);
        assert_eq!(
            behind(at("2026-12-06T09:56:00Z"), created),
            None,
            "within tolerance"
        );
        assert_eq!(
            behind(at("2031-01-01T00:00:00Z"), created),
            None,
            "ahead: no floor says so"
        );
        let six_years = behind(at("2020-12-06T10:00:00Z"), created).unwrap();
        assert_eq!(six_years.num_days(), 2191);
        let words = behind_words(7, created, at("2020-12-06T10:00:00Z"), six_years);
        assert!(words.starts_with("this host's clock looks wrong: release 7 was created at 2026-12-06 10:00:00 UTC, 5years 11months"), "{words}");
        assert!(words.contains("check NTP"), "{words}");
    }

    #[test]
    fn a_clock_moved_back_starts_a_sighting_again() {
        let first = at("2031-12-06T10:00:00Z");
        // Time going on, and a clock a little back (NTP slewing): kept.
        assert_eq!(since(first, at("2031-12-06T11:00:00Z")), first);
        assert_eq!(since(first, at("2031-12-06T09:58:00Z")), first);
        // Five years back: the clock was fixed; start again.
        let fixed = at("2026-12-06T10:00:00Z");
        assert_eq!(since(first, fixed), fixed);
    }
}
