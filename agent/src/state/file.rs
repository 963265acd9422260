//! `state.json` as written: the file format, an interface kept apart from
//! the domain types of [`super`]. Two files hold one state, so that a host
//! rolled back to any older agent finds a state it can read:
//!
//! - `state.json`, **the floor**: always format 1 exactly as the first agents
//!   read it (strict readers, which refuse any field they do not know). What
//!   format 1 cannot say is projected to what an older agent may safely act
//!   on (a deploy waiting for its reboot is "checked, reboot required"), or
//!   left out (statuses not yet queued, the statuses already posted, first
//!   sightings, an approval tip: losing them costs a repeated status or a
//!   clock started again, never a wrong deploy).
//! - `state.ext/<sha256 of state.json>.json`, **the extension**: everything
//!   the floor leaves out, for agents that know it. It is bound to the exact
//!   bytes of the floor it extends, so a floor rewritten by an older agent
//!   leaves it unused, and it is written before the floor, so a crash
//!   between the two leaves the old floor with its own extension. Readers
//!   ignore fields they do not know; its `format` goes up only for a change
//!   an older reader would misread, and a reader that meets a newer format
//!   acts on the floor alone. No agent ever refuses the state another wrote.
//!
//! Files of formats 2 and 3 (one file holding everything, which agents
//! before the extension wrote) are read as before.

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

/// Read leniently: it is part of the extension too.
#[derive(Serialize, Deserialize)]
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

/// Read leniently: it is part of the extension too.
#[derive(Serialize, Deserialize)]
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

/// Read leniently: it is part of the extension too. `to_forge` and
/// `receipt` are written only with receipts on, so a host without them
/// writes what it always has.
#[derive(Serialize, Deserialize)]
pub(super) struct UnsentFile {
    id: u64,
    commit: String,
    state: String,
    context: String,
    description: String,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    to_forge: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt: Option<ReceiptNoteFile>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A receipt to write, as recorded with its status.
#[derive(Serialize, Deserialize)]
struct ReceiptNoteFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
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
    /// The floor: `state` as format 1 says it, which every agent reads.
    pub(super) fn floor(s: &State) -> Self {
        StateFile {
            version: STATE_VERSION,
            last_seen_tip: s.last_seen_tip.as_ref().map(|c| c.to_string()),
            anchor: s.anchor.as_ref().map(|a| AnchorFile {
                commit: a.commit.to_string(),
                serial: a.serial,
            }),
            in_flight: s.in_flight.as_ref().map(InFlightFile::floor),
            last_outcome: s.last_outcome.as_ref().map(OutcomeFile::from_outcome),
            last_success: s.last_success.as_ref().map(OutcomeFile::from_outcome),
            unsent: Vec::new(),
            recent_statuses: Vec::new(),
            closure_missing: None,
            fault: None,
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
                .map(UnsentFile::into_unsent)
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

            red_on_forge: Vec::new(),
        })
    }
}

impl InFlightFile {
    /// A deploy in flight as format 1 says it: the phases format 1 does not
    /// know are said as the one an older agent may act on. Waiting for its
    /// reboot, or going through it, a deploy has been switched and found
    /// healthy, and needs a reboot: "checked, reboot required", which an
    /// older agent checks again and ends as `success-reboot-required`.
    fn floor(f: &InFlight) -> Self {
        let switch_result = match &f.phase {
            Phase::Realising | Phase::Switching => None,
            Phase::Checking { switch } => Some(switch.encode()),
            Phase::RollingBack { problem, .. } => Some(problem.clone()),
            Phase::AwaitingReboot { .. } | Phase::Rebooting { .. } => {
                Some(SwitchResult::RebootRequired.encode())
            }
        };
        let phase = match &f.phase {
            Phase::AwaitingReboot { .. } | Phase::Rebooting { .. } => "checking",
            other => other.name(),
        };
        let previous = match &f.phase {
            Phase::RollingBack { to, .. } => Some(to),
            _ => f.previous.as_ref(),
        };
        InFlightFile {
            commit: f.target.commit.to_string(),
            tip: None,
            serial: f.target.serial,
            source: f.source.as_ref().map(|c| c.to_string()),
            toplevel: f.target.toplevel.to_string(),
            action: f.action.to_string(),
            phase: phase.to_owned(),
            previous: previous.map(|p| p.to_string()),
            failed_before: f.failed_before.clone(),
            switch_result,
            reboot_at: None,
            boot: None,
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

/// The format of the extension this agent writes, and the newest it reads.
#[cfg(not(feature = "state-format-next"))]
pub const EXTENSION_FORMAT: u32 = 1;
/// A build as a future agent would be (`--features state-format-next`, for
/// the upgrade and downgrade test alone): a newer extension format, which
/// agents of format 1 do not read.
#[cfg(feature = "state-format-next")]
pub const EXTENSION_FORMAT: u32 = 2;

/// The extension as written: what the floor leaves out. Fields it does not
/// know are ignored (a newer agent's additions), and every field may be
/// absent.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct ExtensionFile {
    pub(super) format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_flight: Option<InFlightExtension>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unsent: Vec<UnsentFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent_statuses: Vec<StatusFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closure_missing: Option<SightingFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fault: Option<SightingFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    red_on_forge: Vec<String>,
    /// What the future agent of `state-format-next` keeps that this one
    /// does not know of.
    #[cfg(feature = "state-format-next")]
    #[serde(default)]
    next: Option<String>,
}

/// What the floor cannot say about the deploy in flight.
#[derive(Serialize, Deserialize, Default)]
struct InFlightExtension {
    /// The approval the release was accepted at, when not the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tip: Option<String>,
    /// The phase, when the floor says another one (`awaiting-reboot`,
    /// `rebooting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reboot_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot: Option<String>,
}

impl ExtensionFile {
    /// What `state` holds beyond its floor; `None` when nothing.
    pub(super) fn of(s: &State) -> Option<Self> {
        let in_flight = s.in_flight.as_ref().and_then(|f| {
            let tip = (f.tip != f.target.commit).then(|| f.tip.to_string());
            let (phase, reboot_at, boot) = match &f.phase {
                Phase::AwaitingReboot { at } => (Some(f.phase.name()), Some(*at), None),
                Phase::Rebooting { boot } => (Some(f.phase.name()), None, Some(boot.to_string())),
                _ => (None, None, None),
            };
            (tip.is_some() || phase.is_some()).then(|| InFlightExtension {
                tip,
                phase: phase.map(str::to_owned),
                reboot_at,
                boot,
            })
        });
        let file = ExtensionFile {
            format: EXTENSION_FORMAT,
            in_flight,
            unsent: s.unsent.iter().map(UnsentFile::from_unsent).collect(),
            recent_statuses: s.recent_statuses.iter().map(StatusFile::from_status).collect(),
            closure_missing: s.closure_missing.as_ref().map(SightingFile::from_sighting),
            fault: s.fault.as_ref().map(SightingFile::from_sighting),
            red_on_forge: s.red_on_forge.iter().map(ToString::to_string).collect(),
            #[cfg(feature = "state-format-next")]
            next: Some("kept by a newer agent".into()),
        };
        #[cfg(feature = "state-format-next")]
        return Some(file);
        #[cfg(not(feature = "state-format-next"))]
        {
            let empty = file.in_flight.is_none()
                && file.unsent.is_empty()
                && file.recent_statuses.is_empty()
                && file.closure_missing.is_none()
                && file.fault.is_none()
                && file.red_on_forge.is_empty();
            (!empty).then_some(file)
        }
    }

    /// Adds what the extension holds to `state`, read from the floor it
    /// extends.
    pub(super) fn apply(self, s: &mut State) -> Result<(), String> {
        if let (Some(ext), Some(flight)) = (self.in_flight, s.in_flight.as_mut()) {
            if let Some(tip) = ext.tip {
                flight.tip = tip.parse::<CommitId>().map_err(|e| e.to_string())?;
            }
            match ext.phase.as_deref() {
                Some("awaiting-reboot") => {
                    flight.phase = Phase::AwaitingReboot {
                        at: ext
                            .reboot_at
                            .ok_or("phase `awaiting-reboot` without `reboot_at`")?,
                    }
                }
                Some("rebooting") => {
                    flight.phase = Phase::Rebooting {
                        boot: ext
                            .boot
                            .as_deref()
                            .ok_or("phase `rebooting` without `boot`")?
                            .parse()?,
                    }
                }
                // A phase of a newer agent's within this format: the
                // floor's says what to do.
                _ => {}
            }
        }
        s.unsent = self
            .unsent
            .into_iter()
            .map(UnsentFile::into_unsent)
            .collect::<Result<_, String>>()?;
        s.recent_statuses = self
            .recent_statuses
            .into_iter()
            .map(StatusFile::into_status)
            .collect::<Result<_, String>>()?;
        s.closure_missing = self
            .closure_missing
            .map(SightingFile::into_sighting)
            .transpose()?;
        s.fault = self.fault.map(SightingFile::into_sighting).transpose()?;
        s.red_on_forge = self
            .red_on_forge
            .iter()
            .map(|c| c.parse::<CommitId>().map_err(|e| e.to_string()))
            .collect::<Result<_, String>>()?;
        Ok(())
    }
}

impl UnsentFile {
    fn from_unsent(u: &Unsent) -> Self {
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
            to_forge: u.to_forge,
            receipt: u.receipt.as_ref().map(|r| ReceiptNoteFile {
                source: r.source.as_ref().map(ToString::to_string),
            }),
        }
    }

    fn into_unsent(self) -> Result<Unsent, String> {
        let status = StatusFile {
            commit: self.commit,
            state: self.state,
            context: self.context,
            description: self.description,
        };
        let receipt = self
            .receipt
            .map(|r| -> Result<ReceiptNote, String> {
                Ok(ReceiptNote {
                    source: r
                        .source
                        .map(|c| c.parse::<CommitId>().map_err(|e| e.to_string()))
                        .transpose()?,
                })
            })
            .transpose()?;
        Ok(Unsent {
            id: self.id,
            status: status.into_status()?,
            to_forge: self.to_forge,
            receipt,
        })
    }
}
