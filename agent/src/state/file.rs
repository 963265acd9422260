//! `state.json` as written: the file format, an interface kept apart from
//! the domain types of [`super`]. Each version adds only what its states
//! need (1: the plain state; 2: first sightings and an approval tip; 3: the
//! reboot phases), and the version written is the oldest that holds the
//! state, so older agents read what they can and refuse the rest.

use serde::{Deserialize, Serialize};

use super::*;

/// Only the version, read before the rest.
#[derive(Deserialize)]
pub(super) struct VersionFile {
    pub(super) version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateFile {
    version: u32,
    last_seen_tip: Option<String>,
    anchor: Option<AnchorFile>,
    in_flight: Option<InFlightFile>,
    last_outcome: Option<OutcomeFile>,
    #[serde(default)]
    last_success: Option<OutcomeFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unsent: Vec<UnsentFile>,
    /// Absent from files written before it, and while empty (the usual case
    /// between releases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent_statuses: Vec<StatusFile>,
    /// Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closure_missing: Option<SightingFile>,
    /// Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fault: Option<SightingFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SightingFile {
    commit: String,
    since: DateTime<Utc>,
}

impl SightingFile {
    fn from_sighting(s: &Sighting) -> Self {
        SightingFile {
            commit: s.commit.to_string(),
            since: s.since,
        }
    }

    fn into_sighting(self) -> Result<Sighting, String> {
        Ok(Sighting {
            commit: self.commit.parse::<CommitId>().map_err(|e| e.to_string())?,
            since: self.since,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusFile {
    commit: String,
    state: String,
    context: String,
    description: String,
}

impl StatusFile {
    fn from_status(s: &CommitStatus) -> Self {
        StatusFile {
            commit: s.commit.to_string(),
            state: s.state.as_str().to_owned(),
            context: s.context.clone(),
            description: s.description.clone(),
        }
    }

    fn into_status(self) -> Result<CommitStatus, String> {
        Ok(CommitStatus {
            commit: self.commit.parse::<CommitId>().map_err(|e| e.to_string())?,
            state: StatusState::parse(&self.state)
                .ok_or_else(|| format!("unknown status state `{}`", self.state))?,
            context: self.context,
            description: self.description,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnsentFile {
    id: u64,
    commit: String,
    state: String,
    context: String,
    description: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnchorFile {
    commit: String,
    serial: u64,
}

/// A deploy in flight as written. `phase` is [`Phase::name`]; the phase's
/// data is spread over the fields hosts' files already have: `switch_result`
/// holds the encoded [`SwitchResult`] while `checking` and the problem being
/// rolled back while `rolling-back`, whose target is `previous`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InFlightFile {
    commit: String,
    /// Absent in files from before approvals: the tip was the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tip: Option<String>,
    serial: u64,
    source: Option<String>,
    toplevel: String,
    action: String,
    phase: String,
    previous: Option<String>,
    #[serde(default)]
    failed_before: Vec<String>,
    #[serde(default)]
    switch_result: Option<String>,
    /// `awaiting-reboot`: when the reboot is due (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reboot_at: Option<DateTime<Utc>>,
    /// `rebooting`: the boot the reboot was requested in (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot: Option<String>,
    started: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutcomeFile {
    commit: String,
    serial: u64,
    toplevel: Option<String>,
    result: String,
    description: String,
    at: DateTime<Utc>,
}

impl StateFile {
    pub(super) fn from_state(s: &State) -> Self {
        // What agents before format 2 cannot read: the first sightings, and
        // a deploy accepted at an approval above its release.
        let newer = s.closure_missing.is_some()
            || s.fault.is_some()
            || s.in_flight.as_ref().is_some_and(|f| f.tip != f.target.commit);
        // What agents before format 3 cannot read: the reboot phases.
        let reboots = s
            .in_flight
            .as_ref()
            .is_some_and(|f| matches!(f.phase, Phase::AwaitingReboot { .. } | Phase::Rebooting { .. }));
        StateFile {
            version: if reboots {
                STATE_VERSION_REBOOTS
            } else if newer {
                STATE_VERSION_SIGHTINGS
            } else {
                STATE_VERSION
            },
            last_seen_tip: s.last_seen_tip.as_ref().map(|c| c.to_string()),
            anchor: s.anchor.as_ref().map(|a| AnchorFile {
                commit: a.commit.to_string(),
                serial: a.serial,
            }),
            in_flight: s.in_flight.as_ref().map(InFlightFile::from_in_flight),
            last_outcome: s.last_outcome.as_ref().map(OutcomeFile::from_outcome),
            last_success: s.last_success.as_ref().map(OutcomeFile::from_outcome),
            unsent: s
                .unsent
                .iter()
                .map(|u| {
                    let StatusFile {
                        commit,
                        state,
                        context,
                        description,
                    } = StatusFile::from_status(&u.status);
                    UnsentFile {
                        id: u.id,
                        commit,
                        state,
                        context,
                        description,
                    }
                })
                .collect(),
            recent_statuses: s.recent_statuses.iter().map(StatusFile::from_status).collect(),
            closure_missing: s.closure_missing.as_ref().map(SightingFile::from_sighting),
            fault: s.fault.as_ref().map(SightingFile::from_sighting),
        }
    }

    pub(super) fn into_state(self) -> Result<State, String> {
        if !(STATE_VERSION..=STATE_VERSION_REBOOTS).contains(&self.version) {
            return Err(format!(
                "state version {} is not one of {STATE_VERSION} to {STATE_VERSION_REBOOTS}",
                self.version
            ));
        }
        let commit = |s: &str| s.parse::<CommitId>().map_err(|e| e.to_string());
        Ok(State {
            last_seen_tip: self.last_seen_tip.as_deref().map(commit).transpose()?,
            anchor: self
                .anchor
                .map(|a| {
                    Ok::<_, String>(Anchor {
                        commit: commit(&a.commit)?,
                        serial: a.serial,
                    })
                })
                .transpose()?,
            in_flight: self.in_flight.map(InFlightFile::into_in_flight).transpose()?,
            last_outcome: self.last_outcome.map(OutcomeFile::into_outcome).transpose()?,
            last_success: self.last_success.map(OutcomeFile::into_outcome).transpose()?,
            unsent: self
                .unsent
                .into_iter()
                .map(|u| {
                    let status = StatusFile {
                        commit: u.commit,
                        state: u.state,
                        context: u.context,
                        description: u.description,
                    };
                    Ok(Unsent {
                        id: u.id,
                        status: status.into_status()?,
                    })
                })
                .collect::<Result<_, String>>()?,
            recent_statuses: self
                .recent_statuses
                .into_iter()
                .map(StatusFile::into_status)
                .collect::<Result<_, String>>()?,
            closure_missing: self
                .closure_missing
                .map(SightingFile::into_sighting)
                .transpose()?,
            fault: self.fault.map(SightingFile::into_sighting).transpose()?,
        })
    }
}

impl InFlightFile {
    fn from_in_flight(f: &InFlight) -> Self {
        let switch_result = match &f.phase {
            Phase::Realising | Phase::Switching | Phase::AwaitingReboot { .. } | Phase::Rebooting { .. } => {
                None
            }
            Phase::Checking { switch } => Some(switch.encode()),
            Phase::RollingBack { problem, .. } => Some(problem.clone()),
        };
        let previous = match &f.phase {
            Phase::RollingBack { to, .. } => Some(to),
            _ => f.previous.as_ref(),
        };
        InFlightFile {
            commit: f.target.commit.to_string(),
            tip: (f.tip != f.target.commit).then(|| f.tip.to_string()),
            serial: f.target.serial,
            source: f.source.as_ref().map(|c| c.to_string()),
            toplevel: f.target.toplevel.to_string(),
            action: f.action.to_string(),
            phase: f.phase.name().to_owned(),
            previous: previous.map(|p| p.to_string()),
            failed_before: f.failed_before.clone(),
            switch_result,
            reboot_at: match &f.phase {
                Phase::AwaitingReboot { at } => Some(*at),
                _ => None,
            },
            boot: match &f.phase {
                Phase::Rebooting { boot } => Some(boot.to_string()),
                _ => None,
            },
            started: f.started,
        }
    }

    fn into_in_flight(self) -> Result<InFlight, String> {
        let commit = |s: &str| s.parse::<CommitId>().map_err(|e| e.to_string());
        let path = |s: &str| s.parse::<StorePath>().map_err(|e| e.to_string());
        let previous = self.previous.as_deref().map(path).transpose()?;
        let phase = match self.phase.as_str() {
            "realising" => Phase::Realising,
            "switching" => Phase::Switching,
            // A finished switch whose result cannot be read is observed
            // again: the unit or the result file its ExecStopPost wrote
            // says how it ended, and it is never counted as a success.
            "checking" => match self.switch_result.as_deref().and_then(SwitchResult::decode) {
                Some(switch) => Phase::Checking { switch },
                None => Phase::Switching,
            },
            "rolling-back" => Phase::RollingBack {
                to: previous
                    .clone()
                    .ok_or("phase `rolling-back` without a previous system")?,
                problem: self.switch_result.unwrap_or_else(|| "deploy failed".into()),
            },
            "awaiting-reboot" => Phase::AwaitingReboot {
                at: self
                    .reboot_at
                    .ok_or("phase `awaiting-reboot` without `reboot_at`")?,
            },
            "rebooting" => Phase::Rebooting {
                boot: self
                    .boot
                    .as_deref()
                    .ok_or("phase `rebooting` without `boot`")?
                    .parse()?,
            },
            other => return Err(format!("unknown phase `{other}`")),
        };
        Ok(InFlight {
            tip: commit(self.tip.as_deref().unwrap_or(&self.commit))?,
            target: Target {
                commit: commit(&self.commit)?,
                serial: self.serial,
                toplevel: path(&self.toplevel)?,
            },
            source: self.source.as_deref().map(commit).transpose()?,
            action: self
                .action
                .parse()
                .map_err(|e: ferry_signer::release::ActionError| e.to_string())?,
            phase,
            previous,
            failed_before: self.failed_before,
            started: self.started,
        })
    }
}

impl OutcomeFile {
    fn from_outcome(o: &Outcome) -> Self {
        OutcomeFile {
            commit: o.commit.to_string(),
            serial: o.serial,
            toplevel: o.toplevel.as_ref().map(|p| p.to_string()),
            result: o.result.as_str().to_owned(),
            description: o.description.clone(),
            at: o.at,
        }
    }

    fn into_outcome(self) -> Result<Outcome, String> {
        Ok(Outcome {
            commit: self.commit.parse::<CommitId>().map_err(|e| e.to_string())?,
            serial: self.serial,
            toplevel: self
                .toplevel
                .as_deref()
                .map(str::parse::<StorePath>)
                .transpose()
                .map_err(|e| e.to_string())?,
            result: OutcomeKind::parse(&self.result)
                .ok_or_else(|| format!("unknown result `{}`", self.result))?,
            description: self.description,
            at: self.at,
        })
    }
}
