//! systemd: [`bus`] is the only D-Bus code; [`switch`] runs
//! switch-to-configuration as a transient unit and reads how it ended;
//! [`health`] looks for failed units and runs health commands afterwards.

pub mod bus;
pub mod health;
pub mod switch;
