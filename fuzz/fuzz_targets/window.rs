//! Deploy and maintenance windows (`switch.window`, `reboot.window`): one
//! spec a line. Parsing never panics and refusals stay short; a window
//! prints back as a spec that parses to the same window; and on any fixed
//! offset a valid set of windows always has a current or next opening that
//! has not ended, at most a day long, with the reboot moment and the deploy
//! hold inside it.
#![no_main]
use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};
use ferry_agent::policy::window::{deploy_waits_until, Window, Windows};
use ferry_signer::{Action, HostName};
use libfuzzer_sys::fuzz_target;

/// Specs longer than this are refused (the parser's own limit).
const MAX_SPEC_CHARS: usize = 200;

fn check_zone<Tz: TimeZone>(windows: &Windows, now: DateTime<Utc>, tz: &Tz) {
    let opening = windows
        .current_or_next(now, tz)
        .expect("every valid window opens within a week");
    assert!(opening.start < opening.end, "{opening:?}");
    assert!(opening.end - opening.start <= Duration::hours(24), "{opening:?}");
    assert!(opening.end > now && opening.start <= now + Duration::days(8));
    assert_eq!(windows.contains(now, tz), opening.start <= now);
    let host: HostName = "web1".parse().unwrap();
    let moment = windows.reboot_moment(&host, now, tz).unwrap();
    assert!(
        opening.start.max(now) <= moment && moment < opening.end,
        "{moment}"
    );
    let waits = deploy_waits_until(Some(windows), Action::Switch, now, tz);
    assert_eq!(waits, (opening.start > now).then_some(opening.start));
    assert_eq!(deploy_waits_until(Some(windows), Action::Boot, now, tz), None);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let specs: Vec<&str> = text.lines().take(8).collect();
    for spec in &specs {
        match spec.parse::<Window>() {
            Ok(w) => {
                let printed = w.to_string();
                assert_eq!(printed.parse::<Window>().as_ref(), Ok(&w), "{spec}");
                assert!(printed.len() <= 45, "{printed}");
            }
            Err(e) => {
                let message = e.to_string();
                assert!(message.chars().count() <= 2 * MAX_SPEC_CHARS + 250, "{message}");
            }
        }
    }
    let Ok(windows) = Windows::parse(&specs) else {
        assert!(specs.is_empty() || specs.iter().any(|s| s.parse::<Window>().is_err()));
        return;
    };
    let again: Vec<String> = windows.to_string().split("; ").map(str::to_owned).collect();
    assert_eq!(Windows::parse(&again).as_ref(), Ok(&windows));
    // Instants from the input, anywhere in two weeks, on the hour and off it.
    let base = Utc.with_ymd_and_hms(2027, 1, 6, 11, 0, 0).unwrap();
    let spread = data
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let nows = [
        base,
        base + Duration::seconds((spread % (14 * 86_400)) as i64),
        base + Duration::minutes((spread % (14 * 1440)) as i64),
    ];
    for now in nows {
        check_zone(&windows, now, &Utc);
        for offset in [5 * 3600 + 1800, -9 * 3600 - 1800, 14 * 3600] {
            check_zone(&windows, now, &FixedOffset::east_opt(offset).unwrap());
        }
    }
});
