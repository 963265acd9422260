//! The words a deploy is reported in: each commit status description the
//! agent posts (and logs) is made here, so tests assert through these
//! functions rather than copies of their text. Descriptions are cut to 140
//! characters when a status is made.

use chrono::{DateTime, Utc};
use ferry_signer::HostName;

/// The description of a host running a release (deployed or already there).
pub fn runs_release(host: &HostName, serial: u64) -> String {
    format!("{host} runs release {serial}")
}

/// The description of a host that runs a release and needs a reboot (a new
/// kernel or initrd) to be complete.
pub fn runs_release_reboot_required(host: &HostName, serial: u64) -> String {
    format!("{}; reboot required", runs_release(host, serial))
}

/// The description of a host that rebooted into the release it runs.
pub fn runs_release_rebooted(host: &HostName, serial: u64) -> String {
    format!("{} (rebooted)", runs_release(host, serial))
}

/// The pending status of a release this host takes up (before the preflight).
pub fn deploying(host: &HostName, serial: u64) -> String {
    format!("deploying release {serial} to {host}")
}

/// The pending status of a release whose closure is not in the binary cache
/// yet (CI may still be uploading it).
pub fn waiting_for_closure(serial: u64) -> String {
    format!("release {serial}: waiting for the closure in the binary cache")
}

/// The error ending of a closure that could not be realised; `reason` is
/// Nix's own line.
pub fn cannot_realise(reason: &str) -> String {
    format!("error: cannot realise the closure: {reason}")
}

/// The error ending of a closure that could not be realised yet (a fault a
/// retry may cure) when a newer release replaced it.
pub fn cannot_realise_superseded(reason: &str) -> String {
    format!("error: superseded by a newer release; cannot realise the closure: {reason}")
}

/// The error ending of a system profile that could not be set.
pub fn cannot_set_profile(reason: &str) -> String {
    format!("error: cannot set the system profile: {reason}")
}

/// The refusal of a release signed by someone the approvals policy does not
/// let release.
pub fn may_not_release(principal: &str) -> String {
    format!("refused: release signed by {principal}, who may not release")
}

/// The pending status of a release waiting for its reboot at `at` (the
/// host's wall clock).
pub fn reboot_scheduled(serial: u64, at: &str) -> String {
    format!("release {serial} installed; reboot at {at} (maintenance window)")
}

/// The pending status right before the reboot is requested.
pub fn rebooting_into(serial: u64) -> String {
    format!("rebooting into release {serial}")
}

/// The pending status of a release held back until the deploy window
/// opens at `until` (the host's wall clock).
pub fn waits_for_window(serial: u64, until: &str) -> String {
    format!("release {serial} waits for the deploy window (opens {until})")
}

/// The description of a persisting fault: what is wrong (the summary, which
/// starts with `error:`), then since when. Stable across polls, so it is
/// posted once (`is_news`).
pub fn fault_description(summary: &str, since: DateTime<Utc>) -> String {
    format!("{summary}; retrying since {}", since.format("%Y-%m-%d %H:%M UTC"))
}

/// A release expired by this host's clock: the verifier's words and the
/// clock's time, so a clock years ahead shows in the forge.
pub fn stale(summary: &str, now: DateTime<Utc>) -> String {
    format!(
        "{summary} (this host's clock: {})",
        now.format("%Y-%m-%d %H:%M UTC")
    )
}
