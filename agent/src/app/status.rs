//! `ferry-agent status`: what this host runs, what Ferry last did, what waits
//! for the forge, whether someone changed the system outside Ferry (drift),
//! and when the daemon polls next. Reads state only; changes nothing.

use std::path::Path;

use chrono::{DateTime, Utc};
use ferry_signer::StorePath;

use crate::config::Config;
use crate::io::nix;
use crate::policy::drift::drift;
use crate::reconcile::Pass;
use crate::state::outbox::Outbox;
use crate::state::receipts::ReceiptQueue;
use crate::state::{State, StateDir};

/// Where the daemon records when it polls next.
pub const NEXT_POLL_FILE: &str = "next-poll";

/// Where a pass that waits (for approvals, an upload, a window, a reboot)
/// or a reconcile that failed and is retried leaves its words, for
/// `status`: `<RFC 3339 time>\t<words>`. Informational, like
/// [`NEXT_POLL_FILE`]; removed by a pass that ends or finds nothing to do.
pub const WAITING_FILE: &str = "waiting";

/// What the last pass left waiting, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub since: DateTime<Utc>,
    pub what: String,
}

/// How [`note_pass`] words a fault being retried.
const RETRYING: &str = "retrying: ";

impl Waiting {
    /// A fault being retried, rather than a release that waits.
    pub fn is_fault(&self) -> bool {
        self.what.starts_with(RETRYING)
    }
}

/// Notes what a pass found, for `status`: a release that waits, or a fault
/// being retried (`Err` with its words). A pass that found the tip
/// unchanged (`UpToDate`) keeps what an earlier pass noted, with its time;
/// any other pass clears it. A plain write, no fsync: losing it to a crash
/// loses only a line of `status` until the next poll.
pub fn note_pass(state_dir: &Path, pass: Result<&Pass, String>, now: DateTime<Utc>) {
    let path = state_dir.join(WAITING_FILE);
    let what = match pass {
        Ok(Pass::UpToDate) => return,
        Ok(p) if p.is_waiting() => p.to_string(),
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            return;
        }
        Err(words) => format!("{RETRYING}{words}"),
    };
    // The same words again keep their first time.
    if read_waiting(state_dir).is_some_and(|w| w.what == what) {
        return;
    }
    let _ = std::fs::write(&path, format!("{}\t{what}\n", now.to_rfc3339()));
}

/// What [`note_pass`] left, if anything readable.
pub fn read_waiting(state_dir: &Path) -> Option<Waiting> {
    let text = std::fs::read_to_string(state_dir.join(WAITING_FILE)).ok()?;
    let (since, what) = text.trim_end().split_once('\t')?;
    Some(Waiting {
        since: DateTime::parse_from_rfc3339(since).ok()?.with_timezone(&Utc),
        what: what.to_owned(),
    })
}

/// A snapshot for `status`.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub host: String,
    pub running: Option<StorePath>,
    pub profile: Option<StorePath>,
    pub state: State,
    pub outbox_pending: usize,
    /// Until when the forge rate-limits this agent's statuses, if it does now.
    pub rate_limited_until: Option<DateTime<Utc>>,
    /// With `report.receipts`: the receipts waiting for the bucket.
    pub receipts_pending: Option<usize>,
    pub drift: Option<String>,
    pub next_poll: Option<DateTime<Utc>>,
    /// What the release waits for, or the fault being retried.
    pub waiting: Option<Waiting>,
}

/// Reads everything `status` shows.
pub fn gather(config: &Config) -> anyhow::Result<StatusReport> {
    let state = StateDir::open(&config.state_dir)?.load()?;
    // Statuses still recorded in state.json (the disk was full) wait too.
    let outbox = Outbox::open(&config.state_dir)?;
    let outbox_pending = outbox.len()? + state.unsent.len();
    let rate_limited_until = outbox.limited_until().filter(|until| *until > Utc::now());
    let receipts_pending = match &config.report.receipts {
        Some(_) => Some(ReceiptQueue::open(&config.state_dir)?.len()?),
        None => None,
    };
    let running = nix::resolve_system(Path::new(nix::CURRENT_SYSTEM));
    let profile = nix::resolve_system(&config.switch.profile);
    let next_poll = std::fs::read_to_string(config.state_dir.join(NEXT_POLL_FILE))
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .map(|t| t.with_timezone(&Utc));
    let drift = drift(&state, running.as_ref(), profile.as_ref());
    let waiting = read_waiting(&config.state_dir);
    Ok(StatusReport {
        host: config.host.to_string(),
        running,
        profile,
        state,
        outbox_pending,
        rate_limited_until,
        receipts_pending,
        drift,
        next_poll,
        waiting,
    })
}

impl StatusReport {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
        let opt = |p: &Option<StorePath>| p.as_ref().map_or("unknown".into(), |p| p.to_string());
        line(&mut out, "host", self.host.clone());
        line(&mut out, "running", opt(&self.running));
        line(&mut out, "profile", opt(&self.profile));
        if let Some(a) = &self.state.anchor {
            line(
                &mut out,
                "last release",
                format!("{} (serial {})", a.commit, a.serial),
            );
        }
        if let Some(o) = &self.state.last_outcome {
            line(
                &mut out,
                "last outcome",
                format!(
                    "{} at {}: {}",
                    o.result.as_str(),
                    o.at.format("%Y-%m-%d %H:%M:%S UTC"),
                    o.description
                ),
            );
        }
        if let Some(f) = &self.state.in_flight {
            line(
                &mut out,
                "in progress",
                format!(
                    "release {} ({}), {} since {}",
                    f.target.serial,
                    f.action,
                    f.phase.name(),
                    f.started
                ),
            );
        }
        if let Some(w) = &self.waiting {
            // A fault being retried is dated from its first sighting, which
            // survives restarts; anything else from when it was first noted.
            let (label, since) = match &self.state.fault {
                _ if !w.is_fault() => ("waiting", w.since),
                Some(f) => ("fault", f.since),
                None => ("fault", w.since),
            };
            line(
                &mut out,
                label,
                format!("{} (since {})", w.what, since.format("%Y-%m-%d %H:%M UTC")),
            );
        }
        let queued = match self.rate_limited_until {
            Some(until) if self.outbox_pending > 0 => format!(
                "{}: the forge limits the rate of requests until {}",
                self.outbox_pending,
                until.format("%H:%M UTC")
            ),
            _ => self.outbox_pending.to_string(),
        };
        line(&mut out, "statuses queued", queued);
        if let Some(n) = self.receipts_pending {
            line(&mut out, "receipts queued", n.to_string());
        }
        line(
            &mut out,
            "drift",
            self.drift.clone().unwrap_or_else(|| "none".into()),
        );
        if let Some(t) = self.next_poll {
            line(
                &mut out,
                "next poll",
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            );
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let path = |p: &Option<StorePath>| p.as_ref().map(|p| p.to_string());
        serde_json::json!({
            "host": self.host,
            "running": path(&self.running),
            "profile": path(&self.profile),
            "last_release": self.state.anchor.as_ref().map(|a| serde_json::json!({"commit": a.commit.to_string(), "serial": a.serial})),
            "last_outcome": self.state.last_outcome.as_ref().map(|o| serde_json::json!({
                "commit": o.commit.to_string(), "serial": o.serial, "result": o.result.as_str(),
                "description": o.description, "at": o.at.to_rfc3339(),
                "toplevel": o.toplevel.as_ref().map(|t| t.to_string()),
            })),
            "in_progress": self.state.in_flight.as_ref().map(|f| serde_json::json!({
                "commit": f.target.commit.to_string(), "serial": f.target.serial,
                "toplevel": f.target.toplevel.to_string(), "action": f.action.as_str(), "phase": f.phase.name(),
            })),
            "statuses_queued": self.outbox_pending,
            "forge_rate_limited_until": self.rate_limited_until.map(|t| t.to_rfc3339()),
            "receipts_queued": self.receipts_pending,
            "drift": self.drift,
            "next_poll": self.next_poll.map(|t| t.to_rfc3339()),
            "waiting": self.waiting.as_ref().map(|w| serde_json::json!({
                "what": w.what, "since": w.since.to_rfc3339(),
            })),
            "fault_since": self.state.fault.as_ref().map(|f| f.since.to_rfc3339()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(queued: usize, limited: Option<&str>) -> StatusReport {
        StatusReport {
            host: "web1".into(),
            running: None,
            profile: None,
            state: State::default(),
            outbox_pending: queued,
            rate_limited_until: limited.map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)),
            receipts_pending: None,
            drift: None,
            next_poll: None,
            waiting: None,
        }
    }

    #[test]
    fn receipts_waiting_are_shown_only_with_receipts() {
        let plain = report(0, None);
        assert!(!plain.to_text().contains("receipts queued"));
        assert_eq!(plain.to_json()["receipts_queued"], serde_json::Value::Null);
        let with = StatusReport {
            receipts_pending: Some(3),
            ..report(0, None)
        };
        assert!(with.to_text().contains("receipts queued"));
        assert_eq!(with.to_json()["receipts_queued"], 3);
    }

    #[test]
    fn queued_statuses_say_until_when_the_forge_rate_limits_them() {
        let limited = report(4, Some("2026-12-06T10:42:07Z"));
        assert!(
            limited
                .to_text()
                .contains("statuses queued 4: the forge limits the rate of requests until 10:42 UTC"),
            "{}",
            limited.to_text()
        );
        assert_eq!(
            limited.to_json()["forge_rate_limited_until"],
            "2026-12-06T10:42:07+00:00"
        );
        assert!(report(4, None).to_text().contains("statuses queued 4\n"));
        assert!(report(0, Some("2026-12-06T10:42:07Z"))
            .to_text()
            .contains("statuses queued 0\n"));
        assert!(report(4, None).to_json()["forge_rate_limited_until"].is_null());
    }

    #[test]
    fn a_pass_that_waits_or_a_fault_is_shown_until_a_pass_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let awaiting = Pass::AwaitingApproval {
            serial: 2,
            approved: vec!["alice".into()],
            required: 2,
        };
        note_pass(dir.path(), Ok(&awaiting), at("2026-12-06T10:00:00Z"));
        // Polls that find the tip unchanged, or the same words, keep the time.
        note_pass(dir.path(), Ok(&Pass::UpToDate), at("2026-12-06T10:01:00Z"));
        note_pass(dir.path(), Ok(&awaiting), at("2026-12-06T10:02:00Z"));
        let waiting = read_waiting(dir.path()).unwrap();
        assert_eq!(waiting.what, "awaiting approval: release 2: 1 of 2 (alice)");
        assert_eq!(waiting.since, at("2026-12-06T10:00:00Z"));
        let mut r = report(0, None);
        r.waiting = Some(waiting);
        assert!(
            r.to_text().contains(
                "waiting         awaiting approval: release 2: 1 of 2 (alice) (since 2026-12-06 10:00 UTC)"
            ),
            "{}",
            r.to_text()
        );
        assert_eq!(r.to_json()["waiting"]["since"], "2026-12-06T10:00:00+00:00");

        // A fault being retried: dated from its first sighting in the state.
        note_pass(
            dir.path(),
            Err("binary cache cache.example.com: HTTP 401".into()),
            at("2026-12-06T10:05:00Z"),
        );
        let mut r = report(0, None);
        r.waiting = read_waiting(dir.path());
        r.state.fault = Some(crate::state::Sighting {
            commit: "1".repeat(40).parse().unwrap(),
            since: at("2026-12-06T09:30:00Z"),
        });
        assert!(
            r.to_text().contains(
                "fault           retrying: binary cache cache.example.com: HTTP 401 (since 2026-12-06 09:30 UTC)"
            ),
            "{}",
            r.to_text()
        );

        // A pass that ends something clears it.
        note_pass(
            dir.path(),
            Ok(&Pass::Deployed {
                reboot_required: false,
            }),
            at("2026-12-06T10:10:00Z"),
        );
        assert_eq!(read_waiting(dir.path()), None);
    }
}
