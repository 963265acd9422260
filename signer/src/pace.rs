//! How often the fleet commands (`wait`, `rollout`) read a release's
//! statuses: as often as asked, unless reading the fleet's pages that often
//! would spend more than half of what the forge says the token has left
//! before its window resets. The other half stays for the agents and for
//! anyone else sharing the token. Pure: the client measures, this decides.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::forge::{LimitHeaders, ReadCost, RATE_LIMIT_MAX_WAIT};

/// The share of a token's remaining requests one fleet command may spend:
/// 1 in this many.
pub const SHARE: u64 = 2;

/// What a forge says is left of the token's requests, from the
/// `x-ratelimit-remaining`/`x-ratelimit-reset` headers (GitHub, Gitea) or
/// `ratelimit-remaining`/`ratelimit-reset` (GitLab) of its last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub remaining: u64,
    /// When the window resets and `remaining` is full again.
    pub reset: DateTime<Utc>,
}

impl Budget {
    /// The budget an answer's headers tell, when they tell both halves.
    pub fn from_headers(headers: &LimitHeaders) -> Option<Self> {
        let remaining = headers.remaining.as_deref()?.trim().parse().ok()?;
        let reset = headers.reset.as_deref()?.trim().parse::<i64>().ok()?;
        Some(Self {
            remaining,
            reset: DateTime::from_timestamp(reset, 0)?,
        })
    }
}

/// The pace decided for the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The interval asked for fits the budget (or the forge tells none).
    Asked(Duration),
    /// Slower than asked, so that the reads fit.
    Stretched {
        every: Duration,
        counted: u32,
        budget: Budget,
    },
}

impl Pace {
    /// The time until the next read.
    pub fn interval(&self) -> Duration {
        match self {
            Self::Asked(d) => *d,
            Self::Stretched { every, .. } => *every,
        }
    }
}

impl fmt::Display for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Asked(d) => write!(f, "reading the forge every {}", humantime::format_duration(*d)),
            Self::Stretched {
                every,
                counted,
                budget,
            } => write!(
                f,
                "reading the forge every {} instead: a read costs {counted} request(s), \
                 and the forge allows this token {} more until {}",
                humantime::format_duration(*every),
                budget.remaining,
                budget.reset.format("%H:%M:%S UTC"),
            ),
        }
    }
}

/// What the fleet commands last told of their pace, so that each change
/// is said once: the first read slower than asked, and the return to the
/// asked pace.
#[derive(Debug, Default)]
pub struct Told {
    stretched: bool,
}

impl Told {
    /// `pace`, when it is news.
    pub fn news<'p>(&mut self, pace: &'p Pace) -> Option<&'p Pace> {
        let stretched = matches!(pace, Pace::Stretched { .. });
        let news = stretched != self.stretched;
        self.stretched = stretched;
        news.then_some(pace)
    }
}

/// The pace after a read that cost `cost`, at `now`, when `asked` is the
/// interval asked for: reads spaced so that, repeated until the budget's
/// reset, they spend at most 1/[`SHARE`] of what remains. A read that cost
/// nothing the forge counts, or a forge that tells no budget, keeps the
/// asked pace. Never longer than until the reset (then the budget is full
/// again), nor than [`RATE_LIMIT_MAX_WAIT`]; whole seconds.
pub fn pace(asked: Duration, cost: &ReadCost, now: DateTime<Utc>) -> Pace {
    let Some(budget) = Budget::from_headers(&cost.limit) else {
        return Pace::Asked(asked);
    };
    if cost.counted == 0 {
        return Pace::Asked(asked);
    }
    let window = (budget.reset - now)
        .to_std()
        .unwrap_or_default()
        .clamp(Duration::from_secs(1), RATE_LIMIT_MAX_WAIT);
    let reads = budget.remaining / SHARE / u64::from(cost.counted);
    let every = match reads {
        // Not one more read fits before the reset: the first after it.
        0 => window,
        n => window / u32::try_from(n).unwrap_or(u32::MAX),
    };
    let every = Duration::from_secs(every.as_secs_f64().ceil() as u64);
    if every <= asked {
        return Pace::Asked(asked);
    }
    Pace::Stretched {
        every,
        counted: cost.counted,
        budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cost(counted: u32, remaining: u64, reset: &str) -> ReadCost {
        ReadCost {
            requests: counted,
            counted,
            limit: LimitHeaders {
                retry_after: None,
                remaining: Some(remaining.to_string()),
                reset: Some(at(reset).timestamp().to_string()),
            },
        }
    }

    const NOW: &str = "2027-01-06T12:00:00Z";
    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn a_small_fleet_reads_at_the_asked_pace() {
        // 1 page, 4,900 left for 50 minutes: 2,450 reads fit.
        let c = cost(1, 4_900, "2027-01-06T12:50:00Z");
        assert_eq!(pace(TEN_S, &c, at(NOW)), Pace::Asked(TEN_S));
    }

    #[test]
    fn ten_thousand_hosts_on_github_read_every_two_and_a_half_minutes() {
        // 100 pages a read, a fresh hour of 5,000: 25 reads in an hour.
        let c = cost(100, 5_000, "2027-01-06T13:00:00Z");
        let p = pace(TEN_S, &c, at(NOW));
        assert_eq!(p.interval(), Duration::from_secs(144));
        assert!(matches!(p, Pace::Stretched { counted: 100, .. }), "{p:?}");
        assert_eq!(
            p.to_string(),
            "reading the forge every 2m 24s instead: a read costs 100 request(s), \
             and the forge allows this token 5000 more until 13:00:00 UTC"
        );
    }

    #[test]
    fn the_pace_follows_what_is_left() {
        // Late in the window with little left: slower; near its end: faster.
        let little = cost(10, 100, "2027-01-06T12:30:00Z");
        assert_eq!(pace(TEN_S, &little, at(NOW)).interval(), Duration::from_secs(360));
        let ending = cost(10, 100, "2027-01-06T12:01:00Z");
        assert_eq!(pace(TEN_S, &ending, at(NOW)).interval(), Duration::from_secs(12));
    }

    #[test]
    fn nothing_left_waits_for_the_reset_and_no_longer() {
        let c = cost(3, 4, "2027-01-06T12:20:00Z");
        assert_eq!(pace(TEN_S, &c, at(NOW)).interval(), Duration::from_secs(1_200));
        // A reset far away (a bad header) is not believed past an hour.
        let far = cost(3, 0, "2027-02-06T12:00:00Z");
        assert_eq!(pace(TEN_S, &far, at(NOW)).interval(), RATE_LIMIT_MAX_WAIT);
        // A reset in the past: a second, then the asked pace once it shows.
        let past = cost(3, 0, "2027-01-06T11:00:00Z");
        assert_eq!(pace(TEN_S, &past, at(NOW)), Pace::Asked(TEN_S));
    }

    #[test]
    fn unchanged_pages_and_forges_without_a_budget_keep_the_asked_pace() {
        let mut c = cost(0, 10, "2027-01-06T13:00:00Z");
        c.requests = 100;
        assert_eq!(pace(TEN_S, &c, at(NOW)), Pace::Asked(TEN_S));
        let gitea = ReadCost {
            requests: 200,
            counted: 200,
            limit: LimitHeaders::default(),
        };
        assert_eq!(pace(TEN_S, &gitea, at(NOW)), Pace::Asked(TEN_S));
    }

    #[test]
    fn a_budget_needs_both_headers_as_numbers() {
        let h = |remaining: Option<&str>, reset: Option<&str>| LimitHeaders {
            retry_after: None,
            remaining: remaining.map(str::to_owned),
            reset: reset.map(str::to_owned),
        };
        assert_eq!(
            Budget::from_headers(&h(Some("4999"), Some("1798545600"))),
            Some(Budget {
                remaining: 4_999,
                reset: at("2026-12-29T12:00:00Z"),
            })
        );
        assert_eq!(Budget::from_headers(&h(Some("4999"), None)), None);
        assert_eq!(Budget::from_headers(&h(None, Some("1798545600"))), None);
        assert_eq!(Budget::from_headers(&h(Some("-1"), Some("1798545600"))), None);
        assert_eq!(Budget::from_headers(&h(Some("10"), Some("soon"))), None);
    }
}
