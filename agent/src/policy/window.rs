//! Maintenance and deploy windows, as pure functions: parsing a window
//! ("Sat,Sun 02:00-04:00"), whether an instant lies in one, when the next one
//! opens, and the moment inside it at which a host reboots — spread
//! deterministically across the window by a hash of the host name, so a
//! fleet does not reboot at once. Windows are days and times on the host's
//! wall clock (its time zone, with daylight saving time): every function
//! takes the zone as a parameter, so the rules are tested with any zone and
//! the agent passes its clock's [`HostZone`] (the system's zone on a host, a
//! fixed offset in tests). Also the `[reboot]` section of
//! agent.toml (the reboot policy).
//!
//! Wall-clock rules: a window whose end is not after its start crosses
//! midnight and ends the next day ("Fri 22:00-02:00" ends Saturday 02:00);
//! its days are the days it opens. A start or end that does not exist on
//! that day (skipped by a DST change) moves to the first minute that does;
//! one that exists twice (the hour repeated in autumn) is the first of the
//! two. So a window may be an hour shorter or longer on the two DST days.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use ferry_signer::HostName;
use sha2::{Digest, Sha256};

use crate::config::value::Invalid;

/// Days of the week in the order [`chrono::Weekday::num_days_from_monday`]
/// counts them, as windows spell them.
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;
/// A window spec longer than this is refused before it is looked at.
const MAX_SPEC_CHARS: usize = 200;

/// One window: the days it opens on and its wall-clock times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Indexed from Monday.
    days: [bool; 7],
    /// Minutes after midnight, `0..1440`.
    start: u16,
    /// Minutes after midnight, `1..=1440`; not after `start`: the next day.
    end: u16,
}

/// One or more windows (validated: never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows(Vec<Window>);

/// One occurrence of a window, as instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Why a window spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("`{spec}` is not a window: expected days and times like \"Sat,Sun 02:00-04:00\", \"Mon-Fri 22:00-02:00\" or \"03:00-04:00\" (every day)")]
    Shape { spec: String },
    #[error("`{day}` in `{spec}` is not a day: expected Mon, Tue, Wed, Thu, Fri, Sat or Sun, or a range like Mon-Fri")]
    Day { spec: String, day: String },
    #[error("`{time}` in `{spec}` is not a time of day: expected HH:MM between 00:00 and 24:00")]
    Time { spec: String, time: String },
    #[error("`{spec}` starts and ends at the same time: write 00:00-24:00 for a whole day")]
    Empty { spec: String },
    #[error("a window is longer than {MAX_SPEC_CHARS} characters")]
    TooLong,
    #[error("no window given: add at least one, e.g. [\"Sat,Sun 02:00-04:00\"]")]
    None,
}

impl std::str::FromStr for Window {
    type Err = WindowError;

    fn from_str(spec: &str) -> Result<Self, WindowError> {
        if spec.chars().count() > MAX_SPEC_CHARS {
            return Err(WindowError::TooLong);
        }
        let shape = || WindowError::Shape { spec: spec.into() };
        let words: Vec<&str> = spec.split_whitespace().collect();
        let (days, times) = match words.as_slice() {
            [times] => ([true; 7], *times),
            [days, times] => (parse_days(spec, days)?, *times),
            _ => return Err(shape()),
        };
        let (start, end) = times.split_once('-').ok_or_else(shape)?;
        let (start, end) = (parse_time(spec, start)?, parse_time(spec, end)?);
        if start == end {
            return Err(WindowError::Empty { spec: spec.into() });
        }
        if start == MINUTES_PER_DAY {
            return Err(WindowError::Time {
                spec: spec.into(),
                time: "24:00".into(),
            });
        }
        Ok(Window { days, start, end })
    }
}

fn parse_days(spec: &str, text: &str) -> Result<[bool; 7], WindowError> {
    let day = |d: &str| {
        DAYS.iter()
            .position(|n| n.eq_ignore_ascii_case(d))
            .ok_or_else(|| WindowError::Day {
                spec: spec.into(),
                day: d.into(),
            })
    };
    let mut days = [false; 7];
    for item in text.split(',') {
        match item.split_once('-') {
            // A range wraps over the week's end: Fri-Mon is Fri, Sat, Sun, Mon.
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(item)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(spec: &str, text: &str) -> Result<u16, WindowError> {
    let bad = || WindowError::Time {
        spec: spec.into(),
        time: text.into(),
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = (0..7).filter(|&d| self.days[d]).map(|d| DAYS[d]).collect();
        if days.len() < 7 {
            write!(f, "{} ", days.join(","))?;
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl Windows {
    /// Parses each spec; at least one is needed.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, WindowError> {
        if specs.is_empty() {
            return Err(WindowError::None);
        }
        specs
            .iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Windows)
    }

    /// The window open at `now`, or else the next one to open (`None` only
    /// if none opens within a week, which a valid window always does).
    pub fn current_or_next<Tz: TimeZone>(&self, now: DateTime<Utc>, tz: &Tz) -> Option<Opening> {
        let today = now.with_timezone(tz).date_naive();
        // From yesterday (a window crossing midnight may still be open) to a
        // week ahead (every window opens within one).
        (-1..=7)
            .filter_map(|d| today.checked_add_signed(Duration::days(d)))
            .flat_map(|date| self.0.iter().filter_map(move |w| w.on(date, tz)))
            .filter(|o| o.end > now)
            .min_by_key(|o| o.start)
    }

    /// Whether a window is open at `now`.
    pub fn contains<Tz: TimeZone>(&self, now: DateTime<Utc>, tz: &Tz) -> bool {
        self.current_or_next(now, tz).is_some_and(|o| o.start <= now)
    }

    /// When `host` reboots, asked at `now`: in the window open now or the
    /// next to open, at a point spread by a hash of the host name across
    /// what is left of it, so hosts that learn of a release at the same
    /// moment reboot at different moments, and a host always picks the same
    /// point of a given window.
    pub fn reboot_moment<Tz: TimeZone>(
        &self,
        host: &HostName,
        now: DateTime<Utc>,
        tz: &Tz,
    ) -> Option<DateTime<Utc>> {
        let opening = self.current_or_next(now, tz)?;
        let from = opening.start.max(now);
        let span = (opening.end - from).num_seconds().max(0) as u128;
        let offset = (span * u128::from(host_fraction(host))) >> 64;
        Some(from + Duration::seconds(offset as i64))
    }
}

impl std::fmt::Display for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let specs: Vec<String> = self.0.iter().map(|w| w.to_string()).collect();
        f.write_str(&specs.join("; "))
    }
}

impl Window {
    /// This window's occurrence opening on `date`, if it opens that day.
    fn on<Tz: TimeZone>(&self, date: NaiveDate, tz: &Tz) -> Option<Opening> {
        if !self.days[date.weekday().num_days_from_monday() as usize] {
            return None;
        }
        let end_date = if self.end <= self.start {
            date.succ_opt()?
        } else {
            date
        };
        Some(Opening {
            start: wall_clock(tz, date, self.start)?,
            end: wall_clock(tz, end_date, self.end)?,
        })
    }
}

/// The instant of `minutes` after midnight of `date` on `tz`'s wall clock:
/// the first of two (a repeated hour), or the first minute after a gap.
fn wall_clock<Tz: TimeZone>(tz: &Tz, date: NaiveDate, minutes: u16) -> Option<DateTime<Utc>> {
    let midnight = date.and_time(NaiveTime::MIN);
    // Gaps are at most a few hours; a day bounds the search.
    (0..i64::from(MINUTES_PER_DAY)).find_map(|late| {
        let local = midnight + Duration::minutes(i64::from(minutes) + late);
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// A host's fixed place in any window, as a fraction of 2^64: the first
/// eight bytes of SHA-256 of its name (stable across versions and machines,
/// unlike `std`'s hasher).
fn host_fraction(host: &HostName) -> u64 {
    let digest = Sha256::digest(host.as_str().as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

/// Until when a release with `action` waits, at `now`, for the deploy
/// `window` (`None`: it goes ahead). `boot` releases change nothing running
/// and never wait.
pub fn deploy_waits_until<Tz: TimeZone>(
    window: Option<&Windows>,
    action: ferry_signer::Action,
    now: DateTime<Utc>,
    tz: &Tz,
) -> Option<DateTime<Utc>> {
    let window = window?;
    if action == ferry_signer::Action::Boot {
        return None;
    }
    let opening = window.current_or_next(now, tz)?;
    (opening.start > now).then_some(opening.start)
}

/// `t` on `tz`'s wall clock, for statuses and the journal: `2027-01-09 02:37 +01:00`.
pub fn wall_clock_text<Tz: TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz).format("%Y-%m-%d %H:%M %:z").to_string()
}

/// When the agent reboots a host whose release needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RebootPolicy {
    /// Never: the release is reported as needing a reboot, and a person
    /// reboots (the default).
    #[default]
    Never,
    /// In a maintenance window.
    InWindow(Windows),
}

/// The `[reboot]` section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RebootFile {
    pub(crate) policy: String,
    pub(crate) window: Vec<String>,
}

impl Default for RebootFile {
    fn default() -> Self {
        Self {
            policy: "never".into(),
            window: Vec::new(),
        }
    }
}

/// Validates the `[reboot]` section.
pub(crate) fn validate_reboot(file: RebootFile) -> Result<RebootPolicy, Invalid> {
    match file.policy.as_str() {
        "never" if file.window.is_empty() => Ok(RebootPolicy::Never),
        "never" => Err(Invalid::new(
            "reboot.window",
            "a window is set but `reboot.policy` is \"never\": set policy = \"in-window\" to reboot in it, or remove the window",
        )),
        "in-window" => Windows::parse(&file.window)
            .map(RebootPolicy::InWindow)
            .map_err(|e| Invalid::new("reboot.window", e.to_string())),
        other => Err(Invalid::new(
            "reboot.policy",
            format!("`{other}` is not a reboot policy: expected \"never\" or \"in-window\""),
        )),
    }
}

/// Validates `switch.window` (the deploy window): none means any time.
pub(crate) fn validate_deploy_window(specs: &[String]) -> Result<Option<Windows>, Invalid> {
    if specs.is_empty() {
        return Ok(None);
    }
    Windows::parse(specs)
        .map(Some)
        .map_err(|e| Invalid::new("switch.window", e.to_string()))
}

/// The host's time zone, as the clock port gives it: the system's own
/// (`/etc/localtime`, what NixOS's `time.timeZone` sets) on a host, a fixed
/// offset in tests, so no test depends on the machine's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostZone {
    Local,
    Fixed(chrono::FixedOffset),
}

impl TimeZone for HostZone {
    type Offset = chrono::FixedOffset;

    fn from_offset(offset: &chrono::FixedOffset) -> Self {
        HostZone::Fixed(*offset)
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> chrono::LocalResult<chrono::FixedOffset> {
        match self {
            HostZone::Local => local.and_hms_opt(0, 0, 0).map_or(chrono::LocalResult::None, |t| {
                chrono::Local.offset_from_local_datetime(&t)
            }),
            HostZone::Fixed(o) => chrono::LocalResult::Single(*o),
        }
    }

    fn offset_from_local_datetime(
        &self,
        local: &chrono::NaiveDateTime,
    ) -> chrono::LocalResult<chrono::FixedOffset> {
        match self {
            HostZone::Local => chrono::Local.offset_from_local_datetime(local),
            HostZone::Fixed(o) => chrono::LocalResult::Single(*o),
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> chrono::FixedOffset {
        match self {
            HostZone::Local => utc
                .and_hms_opt(0, 0, 0)
                .map_or(chrono::FixedOffset::east_opt(0).expect("zero offset"), |t| {
                    chrono::Local.offset_from_utc_datetime(&t)
                }),
            HostZone::Fixed(o) => *o,
        }
    }

    fn offset_from_utc_datetime(&self, utc: &chrono::NaiveDateTime) -> chrono::FixedOffset {
        match self {
            HostZone::Local => chrono::Local.offset_from_utc_datetime(utc),
            HostZone::Fixed(o) => *o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, LocalResult, NaiveDateTime, Offset};

    /// Central European time for 2027: +01:00, and +02:00 from Sunday 28
    /// March 02:00 (clocks jump to 03:00) to Sunday 31 October 03:00
    /// (clocks go back to 02:00) — the rules of Europe/Berlin, written out
    /// so the tests need no time zone database.
    #[derive(Debug, Clone, Copy)]
    struct Berlin2027;

    impl Berlin2027 {
        fn summer_utc() -> (NaiveDateTime, NaiveDateTime) {
            let at = |s| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
            (at("2027-03-28 01:00"), at("2027-10-31 01:00"))
        }
        fn offset(summer: bool) -> FixedOffset {
            FixedOffset::east_opt(if summer { 7200 } else { 3600 }).unwrap()
        }
    }

    impl TimeZone for Berlin2027 {
        type Offset = FixedOffset;
        fn from_offset(_: &FixedOffset) -> Self {
            Berlin2027
        }
        fn offset_from_local_date(&self, _: &NaiveDate) -> LocalResult<FixedOffset> {
            unimplemented!("not used by windows")
        }
        fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<FixedOffset> {
            let fits = |summer| {
                let o = Self::offset(summer);
                let utc = *local - Duration::seconds(o.fix().local_minus_utc().into());
                (self.offset_from_utc_datetime(&utc) == o).then_some(o)
            };
            match (fits(false), fits(true)) {
                (Some(a), Some(b)) => LocalResult::Ambiguous(b, a),
                (Some(o), None) | (None, Some(o)) => LocalResult::Single(o),
                (None, None) => LocalResult::None,
            }
        }
        fn offset_from_utc_date(&self, _: &NaiveDate) -> FixedOffset {
            unimplemented!("not used by windows")
        }
        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            let (from, to) = Self::summer_utc();
            Self::offset(*utc >= from && *utc < to)
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn windows(specs: &[&str]) -> Windows {
        Windows::parse(specs).unwrap()
    }

    fn host(name: &str) -> HostName {
        name.parse().unwrap()
    }

    #[test]
    fn parses_days_ranges_and_times() {
        let w: Window = "Sat,Sun 02:00-04:00".parse().unwrap();
        assert_eq!(w.to_string(), "Sat,Sun 02:00-04:00");
        let w: Window = "mon-fri 22:00-02:00".parse().unwrap();
        assert_eq!(w.to_string(), "Mon,Tue,Wed,Thu,Fri 22:00-02:00");
        let w: Window = "Fri-Mon 00:00-24:00".parse().unwrap();
        assert_eq!(w.to_string(), "Mon,Fri,Sat,Sun 00:00-24:00");
        let w: Window = "03:00-04:30".parse().unwrap();
        assert_eq!(w.to_string(), "03:00-04:30");
        let all: Window = "Mon-Sun 03:00-04:30".parse().unwrap();
        assert_eq!(all, w);
    }

    #[test]
    fn refuses_bad_windows_naming_the_part() {
        let cases = [
            ("", "expected days and times"),
            ("Sat Sun 02:00-04:00", "expected days and times"),
            ("Sat 0200-0400", "`0200` in"),
            ("Sa 02:00-04:00", "`Sa` in `Sa 02:00-04:00` is not a day"),
            ("Sat,,Sun 02:00-04:00", "`` in"),
            ("Sat 2:00-04:00", "`2:00` in"),
            ("Sat 02:00-24:01", "`24:01`"),
            ("Sat 02:60-04:00", "`02:60`"),
            ("Sat 24:00-02:00", "`24:00`"),
            ("Sat +1:00-04:00", "`+1:00`"),
            ("Sat 02:00-02:00", "write 00:00-24:00 for a whole day"),
        ];
        for (spec, expected) in cases {
            let err = spec.parse::<Window>().unwrap_err().to_string();
            assert!(err.contains(expected), "{spec}: {err}");
        }
        let long = format!("Sat 02:00-04:00{}", " ".repeat(300));
        assert_eq!(long.parse::<Window>().unwrap_err(), WindowError::TooLong);
        assert_eq!(Windows::parse::<&str>(&[]).unwrap_err(), WindowError::None);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        let alphabet = [
            "Sat", "sun", "-", ",", " ", ":", "0", "2", "4", "9", "24", "x", "é",
        ];
        let mut spec = String::new();
        for i in 0..20_000u32 {
            spec.clear();
            let mut n = i;
            while n > 0 {
                spec.push_str(alphabet[(n % alphabet.len() as u32) as usize]);
                n /= alphabet.len() as u32;
            }
            if let Ok(w) = spec.parse::<Window>() {
                // What parses prints back as something that parses the same.
                assert_eq!(w.to_string().parse::<Window>().unwrap(), w, "{spec}");
            }
        }
    }

    #[test]
    fn open_and_next_on_plain_days() {
        let w = windows(&["Sat,Sun 02:00-04:00"]);
        // Wed 6 Jan 2027, 12:00 in Berlin (+01:00).
        let wed = utc("2027-01-06T11:00:00Z");
        assert!(!w.contains(wed, &Berlin2027));
        let next = w.current_or_next(wed, &Berlin2027).unwrap();
        assert_eq!(next.start, utc("2027-01-09T01:00:00Z"));
        assert_eq!(next.end, utc("2027-01-09T03:00:00Z"));
        let inside = utc("2027-01-09T02:30:00Z");
        assert!(w.contains(inside, &Berlin2027));
        assert_eq!(w.current_or_next(inside, &Berlin2027).unwrap(), next);
        // The end is not inside; Sunday's window is next.
        assert!(!w.contains(next.end, &Berlin2027));
        assert_eq!(
            w.current_or_next(next.end, &Berlin2027).unwrap().start,
            utc("2027-01-10T01:00:00Z")
        );
        // On another zone's clock the same instant is another time of day.
        let early = utc("2027-01-09T01:30:00Z");
        assert!(w.contains(early, &Berlin2027));
        assert!(!w.contains(early, &Utc));
    }

    #[test]
    fn a_window_crossing_midnight_is_open_after_midnight() {
        let w = windows(&["Fri 22:00-02:00"]);
        // Saturday 01:00 in Berlin: opened Friday, still open.
        let sat = utc("2027-01-09T00:00:00Z");
        assert!(w.contains(sat, &Berlin2027));
        let open = w.current_or_next(sat, &Berlin2027).unwrap();
        assert_eq!(open.start, utc("2027-01-08T21:00:00Z"));
        assert_eq!(open.end, utc("2027-01-09T01:00:00Z"));
        // Saturday 03:00: closed until next Friday.
        let later = utc("2027-01-09T02:00:00Z");
        assert!(!w.contains(later, &Berlin2027));
        assert_eq!(
            w.current_or_next(later, &Berlin2027).unwrap().start,
            utc("2027-01-15T21:00:00Z")
        );
    }

    #[test]
    fn several_windows_take_the_earliest() {
        let w = windows(&["Sun 03:00-04:00", "Wed 01:00-02:00"]);
        let mon = utc("2027-01-04T12:00:00Z");
        assert_eq!(
            w.current_or_next(mon, &Berlin2027).unwrap().start,
            utc("2027-01-06T00:00:00Z")
        );
        let thu = utc("2027-01-07T12:00:00Z");
        assert_eq!(
            w.current_or_next(thu, &Berlin2027).unwrap().start,
            utc("2027-01-10T02:00:00Z")
        );
    }

    #[test]
    fn daylight_saving_days_shorten_and_lengthen_windows() {
        let w = windows(&["Sun 02:00-04:00"]);
        // 28 March 2027: 02:00-03:00 does not exist; the window opens at
        // 03:00 summer time (01:00Z) and ends at 04:00 (02:00Z): one hour.
        let spring = w
            .current_or_next(utc("2027-03-27T12:00:00Z"), &Berlin2027)
            .unwrap();
        assert_eq!(spring.start, utc("2027-03-28T01:00:00Z"));
        assert_eq!(spring.end, utc("2027-03-28T02:00:00Z"));
        // 31 October 2027: 02:00-03:00 happens twice; the window opens at the
        // first 02:00 (00:00Z) and ends at 04:00 winter time (03:00Z): three hours.
        let autumn = w
            .current_or_next(utc("2027-10-30T12:00:00Z"), &Berlin2027)
            .unwrap();
        assert_eq!(autumn.start, utc("2027-10-31T00:00:00Z"));
        assert_eq!(autumn.end, utc("2027-10-31T03:00:00Z"));
        // A week later, the plain two hours again.
        let after = w.current_or_next(autumn.end, &Berlin2027).unwrap();
        assert_eq!(after.end - after.start, Duration::hours(2));
    }

    #[test]
    fn reboot_moments_are_spread_across_the_window_and_stable() {
        let w = windows(&["Sat 02:00-04:00"]);
        let wed = utc("2027-01-06T11:00:00Z");
        let open = w.current_or_next(wed, &Berlin2027).unwrap();
        let moments: Vec<_> = (1..=50)
            .map(|i| {
                w.reboot_moment(&host(&format!("web{i}")), wed, &Berlin2027)
                    .unwrap()
            })
            .collect();
        for m in &moments {
            assert!(open.start <= *m && *m < open.end, "{m}");
        }
        // Spread: every half hour of the window gets some of fifty hosts.
        for quarter in 0..4 {
            let from = open.start + Duration::minutes(30 * quarter);
            let to = from + Duration::minutes(30);
            assert!(
                moments.iter().any(|m| from <= *m && *m < to),
                "no host in quarter {quarter}: {moments:?}"
            );
        }
        // Stable: asked again, later the same day, the same moment.
        let again = w
            .reboot_moment(&host("web1"), wed + Duration::hours(3), &Berlin2027)
            .unwrap();
        assert_eq!(again, moments[0]);
        // Asked inside the window: spread over what is left of it.
        let late = open.start + Duration::minutes(90);
        for i in 1..=20 {
            let m = w
                .reboot_moment(&host(&format!("web{i}")), late, &Berlin2027)
                .unwrap();
            assert!(late <= m && m < open.end, "{m}");
        }
    }

    #[test]
    fn deploys_wait_for_the_window_but_boot_releases_do_not() {
        use ferry_signer::Action;
        let w = windows(&["Mon-Fri 09:00-17:00"]);
        let sat = utc("2027-01-09T11:00:00Z");
        let monday_nine = utc("2027-01-11T08:00:00Z");
        for action in [Action::Switch, Action::Test] {
            assert_eq!(
                deploy_waits_until(Some(&w), action, sat, &Berlin2027),
                Some(monday_nine)
            );
            assert_eq!(
                deploy_waits_until(Some(&w), action, monday_nine, &Berlin2027),
                None
            );
        }
        assert_eq!(deploy_waits_until(Some(&w), Action::Boot, sat, &Berlin2027), None);
        assert_eq!(deploy_waits_until(None, Action::Switch, sat, &Berlin2027), None);
        assert_eq!(
            wall_clock_text(monday_nine, &Berlin2027),
            "2027-01-11 09:00 +01:00"
        );
    }

    #[test]
    fn the_reboot_section_is_validated() {
        let file = |policy: &str, window: &[&str]| RebootFile {
            policy: policy.into(),
            window: window.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(validate_reboot(RebootFile::default()), Ok(RebootPolicy::Never));
        assert_eq!(
            validate_reboot(file("in-window", &["Sat 02:00-04:00"])),
            Ok(RebootPolicy::InWindow(windows(&["Sat 02:00-04:00"])))
        );
        let err = validate_reboot(file("in-window", &[])).unwrap_err();
        assert_eq!(err.key, "reboot.window");
        assert!(err.problem.contains("add at least one"), "{}", err.problem);
        let err = validate_reboot(file("never", &["Sat 02:00-04:00"])).unwrap_err();
        assert!(
            err.problem.contains("set policy = \"in-window\""),
            "{}",
            err.problem
        );
        let err = validate_reboot(file("always", &[])).unwrap_err();
        assert_eq!(err.key, "reboot.policy");
        assert!(err.problem.contains("expected \"never\" or \"in-window\""));
        let err = validate_deploy_window(&["Sat".into()]).unwrap_err();
        assert_eq!(err.key, "switch.window");
        assert_eq!(validate_deploy_window(&[]), Ok(None));
    }
}
