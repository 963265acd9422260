//! The leaf every configuration section builds on: how a refused value is
//! named (`Invalid`), absolute paths and durations as written in
//! `agent.toml`. It imports nothing else of the crate, so every module that
//! owns a section can use it.

use std::path::PathBuf;
use std::time::Duration;

/// A value of a section that cannot be used: the full key and why. The
/// module owning the section says so; `Config::parse` adds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub key: &'static str,
    pub problem: String,
}

impl Invalid {
    pub(crate) fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
        }
    }
}

/// `p`, if absolute; else why not (`what` names the key).
pub(crate) fn absolute(p: PathBuf, what: &str) -> Result<PathBuf, String> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!(
            "`{}` is not an absolute path ({what} must be absolute)",
            p.display()
        ))
    }
}

/// A duration written as `"60s"`, `"15m"`, `"1h 30m"`: the signer's, so
/// both programs read durations alike.
pub(crate) use ferry_signer::forge::HumanDuration;

pub(crate) fn secs<const N: u64>() -> HumanDuration {
    HumanDuration(Duration::from_secs(N))
}
