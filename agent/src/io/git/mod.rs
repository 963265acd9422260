//! The deploy repository: [`source`] is the clone, tip check, fetch and
//! ancestry; [`http`] and [`daemon`] are the two network transports libgit2
//! is given; [`mirror`] reads a static mirror (git's dumb HTTP layout), which
//! libgit2 cannot; [`limits`] holds every deadline and cap they share.

pub mod daemon;
pub mod http;
pub mod limits;
pub mod mirror;
pub mod source;
