//! The program: what `ferry-agent`'s commands run. [`daemon`] is the poll
//! loop of `run`; [`status`] the `status` command; [`lock`] keeps one agent
//! per state directory; [`live`] wires the reconcile's ports to the real
//! adapters; [`logging`] sends tracing to the journal or stderr.

pub mod daemon;
pub mod live;
pub mod lock;
pub mod logging;
pub mod status;
