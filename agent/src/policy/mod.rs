//! Pure decisions over plain data: no I/O, no clock of their own (the time is
//! an argument), so each rule has a millisecond test.
//!
//! - [`judge`]: may this verified release be deployed here (anti-rollback,
//!   host entry, already running)?
//! - [`gate`]: the one gate every effectful step asks first — go, wait until
//!   a time, or wait for a reason (approvals, deploy window, reboot window,
//!   running units).
//! - [`ending`]: how a deploy in flight ends (after the check, a rollback, a
//!   reboot).
//! - [`faults`]: how serious a refusal is, whether a fault is retried, when a
//!   persisting one is reported, the cache-upload grace.
//! - [`wording`]: the words of every status description.
//! - [`dedup`]: which statuses are news.
//! - [`reporting`]: which statuses reach the forge with receipts on
//!   (`report.statuses`).
//! - [`window`]: maintenance and deploy windows, and the `[reboot]` section.
//! - [`approvals`]: the `[approvals]` section.
//! - [`drift`]: whether the running system differs from what was deployed.
//! - [`clock`]: what the host's clock can be trusted for, and when it
//!   looks wrong.

pub mod approvals;
pub mod clock;
pub mod dedup;
pub mod drift;
pub mod ending;
pub mod faults;
pub mod gate;

pub mod judge;
pub mod reporting;
pub mod window;
pub mod wording;
