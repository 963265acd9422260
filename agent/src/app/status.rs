//! `ferry-agent status`: what this host runs, what Ferry last did, what waits
//! for the forge, whether someone changed the system outside Ferry (drift),
//! and when the daemon polls next. Reads state only; changes nothing.

use std::path::Path;

use chrono::{DateTime, Utc};
use ferry_signer::StorePath;

use crate::config::Config;
use crate::io::nix;
use crate::policy::drift::drift;
use crate::state::outbox::Outbox;
use crate::state::{State, StateDir};

/// Where the daemon records when it polls next.
pub const NEXT_POLL_FILE: &str = "next-poll";

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
    pub drift: Option<String>,
    pub next_poll: Option<DateTime<Utc>>,
}

/// Reads everything `status` shows.
pub fn gather(config: &Config) -> anyhow::Result<StatusReport> {
    let state = StateDir::open(&config.state_dir)?.load()?;
    // Statuses still recorded in state.json (the disk was full) wait too.
    let outbox = Outbox::open(&config.state_dir)?;
    let outbox_pending = outbox.len()? + state.unsent.len();
    let rate_limited_until = outbox.limited_until().filter(|until| *until > Utc::now());
    let running = nix::resolve_system(Path::new(nix::CURRENT_SYSTEM));
    let profile = nix::resolve_system(&config.switch.profile);
    let next_poll = std::fs::read_to_string(config.state_dir.join(NEXT_POLL_FILE))
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .map(|t| t.with_timezone(&Utc));
    let drift = drift(&state, running.as_ref(), profile.as_ref());
    Ok(StatusReport {
        host: config.host.to_string(),
        running,
        profile,
        state,
        outbox_pending,
        rate_limited_until,
        drift,
        next_poll,
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
        let queued = match self.rate_limited_until {
            Some(until) if self.outbox_pending > 0 => format!(
                "{}: the forge limits the rate of requests until {}",
                self.outbox_pending,
                until.format("%H:%M UTC")
            ),
            _ => self.outbox_pending.to_string(),
        };
        line(&mut out, "statuses queued", queued);
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
            "drift": self.drift,
            "next_poll": self.next_poll.map(|t| t.to_rfc3339()),
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
            drift: None,
            next_poll: None,
        }
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
}
