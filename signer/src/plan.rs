//! The rollout plan (`rollout.toml`, kept in the source repository): waves in
//! order, each a set of hosts by name or glob pattern with a failure budget,
//! a timeout and a soak time. Parsed strictly and bounded, then resolved
//! against the hosts being released: every host in exactly one wave.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use crate::names::HostName;
use crate::pattern::glob_matches;
use crate::release::HostEntry;

/// Larger plan files are refused unread.
pub const MAX_PLAN_BYTES: usize = 1 << 20;
/// More waves than this are refused.
pub const MAX_WAVES: usize = 100;
/// A wave's timeout when the plan gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A parsed plan, not yet matched against hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub waves: Vec<WaveSpec>,
}

/// One wave as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSpec {
    pub name: String,
    pub members: Members,
    /// Failed hosts tolerated before the rollout stops.
    pub max_failures: usize,
    /// How long after its release the wave may take to succeed.
    pub timeout: Duration,
    /// How long the wave must stay healthy before the next is released.
    pub soak: Duration,
}

/// Which hosts a wave holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Names and glob patterns (`*`, `?`).
    Patterns(Vec<String>),
    /// Every host no earlier wave holds (only the last wave).
    Rest,
}

/// A wave resolved against the hosts being released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub name: String,
    pub hosts: BTreeSet<HostName>,
    pub max_failures: usize,
    pub timeout: Duration,
    pub soak: Duration,
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the rollout plan is larger than {MAX_PLAN_BYTES} bytes")]
    TooLarge,
    #[error("the rollout plan is not valid TOML for a plan: {0}")]
    Syntax(String),
    #[error("the rollout plan has no waves: add [[wave]] tables (name, hosts)")]
    NoWaves,
    #[error("the rollout plan has {0} waves; at most {MAX_WAVES} are allowed")]
    TooManyWaves(usize),
    #[error("wave {index}: name `{name}` must be 1 to 40 letters, digits, `-` or `_`")]
    BadName { index: usize, name: String },
    #[error("two waves are named `{0}`: wave names must be unique")]
    DuplicateName(String),
    #[error("wave `{0}`: give either `hosts` (names or patterns) or `rest = true`, not both or neither")]
    Members(String),
    #[error("wave `{0}`: `rest = true` is only allowed in the last wave")]
    RestNotLast(String),
    #[error("wave `{wave}`: `{field}`: {problem}")]
    Duration {
        wave: String,
        field: &'static str,
        problem: String,
    },
    #[error("wave `{wave}` names host `{host}`, which is not in the hosts being released: check the name")]
    UnknownHost { wave: String, host: String },
    #[error("wave `{wave}`: pattern `{pattern}` matches no host being released")]
    NoMatch { wave: String, pattern: String },
    #[error("host {host} is in wave `{first}` and in wave `{second}`: waves must not overlap")]
    Overlap {
        host: HostName,
        first: String,
        second: String,
    },
    #[error("{count} host(s) are in no wave ({shown}): they would keep the system they run now and never get this one; add them to a wave, or end the plan with a wave that has `rest = true`")]
    LeftOut { count: usize, shown: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    wave: Vec<WaveFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaveFile {
    name: String,
    hosts: Option<Vec<String>>,
    #[serde(default)]
    rest: bool,
    #[serde(default)]
    max_failures: usize,
    timeout: Option<String>,
    soak: Option<String>,
}

fn duration(
    wave: &str,
    field: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, PlanError> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t).map_err(|e| PlanError::Duration {
            wave: wave.to_owned(),
            field,
            problem: format!("`{t}` is not a duration like \"15m\" or \"1h 30m\": {e}"),
        }),
    }
}

fn name_ok(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Plan {
    /// Parses `rollout.toml`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PlanError> {
        if bytes.len() > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| PlanError::Syntax(e.to_string()))?;
        let file: PlanFile = toml::from_str(text).map_err(|e| PlanError::Syntax(e.message().to_owned()))?;
        if file.wave.is_empty() {
            return Err(PlanError::NoWaves);
        }
        if file.wave.len() > MAX_WAVES {
            return Err(PlanError::TooManyWaves(file.wave.len()));
        }
        let last = file.wave.len() - 1;
        let mut names = BTreeSet::new();
        let mut waves = Vec::with_capacity(file.wave.len());
        for (index, w) in file.wave.into_iter().enumerate() {
            if !name_ok(&w.name) {
                return Err(PlanError::BadName {
                    index: index + 1,
                    name: w.name,
                });
            }
            if !names.insert(w.name.clone()) {
                return Err(PlanError::DuplicateName(w.name));
            }
            let members = match (w.hosts, w.rest) {
                (Some(p), false) if !p.is_empty() && p.iter().all(|p| !p.trim().is_empty()) => {
                    Members::Patterns(p)
                }
                (None, true) if index == last => Members::Rest,
                (None, true) => return Err(PlanError::RestNotLast(w.name)),
                _ => return Err(PlanError::Members(w.name)),
            };
            waves.push(WaveSpec {
                timeout: duration(&w.name, "timeout", w.timeout.as_deref(), DEFAULT_TIMEOUT)?,
                soak: duration(&w.name, "soak", w.soak.as_deref(), Duration::ZERO)?,
                name: w.name,
                members,
                max_failures: w.max_failures,
            });
        }
        Ok(Self { waves })
    }

    /// Matches the plan against the hosts being released: every host in
    /// exactly one wave, every name known, every pattern matching something.
    pub fn resolve(&self, hosts: &BTreeMap<HostName, HostEntry>) -> Result<Vec<Wave>, PlanError> {
        let mut owner: BTreeMap<&HostName, &str> = BTreeMap::new();
        let mut waves = Vec::with_capacity(self.waves.len());
        for spec in &self.waves {
            let mut members = BTreeSet::new();
            match &spec.members {
                Members::Patterns(patterns) => {
                    for p in patterns {
                        let is_glob = p.contains(['*', '?']);
                        let before = members.len();
                        members.extend(hosts.keys().filter(|h| glob_matches(h.as_str(), p)).cloned());
                        if members.len() == before && !hosts.keys().any(|h| glob_matches(h.as_str(), p)) {
                            return Err(if is_glob {
                                PlanError::NoMatch {
                                    wave: spec.name.clone(),
                                    pattern: p.clone(),
                                }
                            } else {
                                PlanError::UnknownHost {
                                    wave: spec.name.clone(),
                                    host: p.clone(),
                                }
                            });
                        }
                    }
                }
                Members::Rest => {
                    members.extend(hosts.keys().filter(|h| !owner.contains_key(h)).cloned());
                }
            }
            for h in &members {
                if let Some(first) = owner.get(h) {
                    return Err(PlanError::Overlap {
                        host: h.clone(),
                        first: (*first).to_owned(),
                        second: spec.name.clone(),
                    });
                }
            }
            for h in hosts.keys().filter(|h| members.contains(*h)) {
                owner.insert(h, &spec.name);
            }
            waves.push(Wave {
                name: spec.name.clone(),
                hosts: members,
                max_failures: spec.max_failures,
                timeout: spec.timeout,
                soak: spec.soak,
            });
        }
        let left: Vec<&HostName> = hosts.keys().filter(|h| !owner.contains_key(h)).collect();
        if !left.is_empty() {
            let mut shown: Vec<&str> = left.iter().take(10).map(|h| h.as_str()).collect();
            if left.len() > 10 {
                shown.push("…");
            }
            return Err(PlanError::LeftOut {
                count: left.len(),
                shown: shown.join(", "),
            });
        }
        Ok(waves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Action;

    pub(crate) fn hosts(names: &[&str]) -> BTreeMap<HostName, HostEntry> {
        names
            .iter()
            .map(|h| {
                (
                    h.parse().unwrap(),
                    HostEntry {
                        toplevel: format!("/nix/store/{}-nixos-system-{h}", "b".repeat(32))
                            .parse()
                            .unwrap(),
                        action: Action::Switch,
                    },
                )
            })
            .collect()
    }

    const PLAN: &str = r#"
[[wave]]
name = "canary"
hosts = ["web1"]
timeout = "10m"
soak = "5m"

[[wave]]
name = "web"
hosts = ["web*"]
max_failures = 1

[[wave]]
name = "rest"
rest = true
"#;

    #[test]
    fn a_plan_resolves_every_host_once() {
        let plan = Plan::parse(PLAN.as_bytes()).unwrap();
        assert_eq!(plan.waves[0].timeout, Duration::from_secs(600));
        assert_eq!(plan.waves[0].soak, Duration::from_secs(300));
        assert_eq!(plan.waves[1].timeout, DEFAULT_TIMEOUT);
        assert_eq!(plan.waves[1].soak, Duration::ZERO);
        // web1 is the canary's; `web*` then matches it too: that overlaps.
        let err = plan.resolve(&hosts(&["web1", "web2", "db1"])).unwrap_err();
        assert!(
            matches!(err, PlanError::Overlap { ref host, .. } if host.as_str() == "web1"),
            "{err}"
        );
        let plan = Plan::parse(PLAN.replace("web*", "web2*").as_bytes()).unwrap();
        let waves = plan
            .resolve(&hosts(&["web1", "web2", "web20", "db1", "db2"]))
            .unwrap();
        let names = |i: usize| waves[i].hosts.iter().map(|h| h.as_str()).collect::<Vec<_>>();
        assert_eq!(names(0), ["web1"]);
        assert_eq!(names(1), ["web2", "web20"]);
        assert_eq!(names(2), ["db1", "db2"]);
        assert_eq!(waves[1].max_failures, 1);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let two =
            |a: &str, b: &str| format!("[[wave]]\nname = \"one\"\n{a}\n[[wave]]\nname = \"two\"\n{b}\n");
        let h = hosts(&["web1", "web2", "db1"]);
        let resolve = |text: String| Plan::parse(text.as_bytes()).and_then(|p| p.resolve(&h));
        assert!(matches!(
            resolve(two("hosts = [\"web1\"]", "hosts = [\"wbe2\", \"db1\"]")),
            Err(PlanError::UnknownHost { host, .. }) if host == "wbe2"
        ));
        assert!(matches!(
            resolve(two("hosts = [\"web1\"]", "hosts = [\"x*\"]")),
            Err(PlanError::NoMatch { .. })
        ));
        let left = resolve(two("hosts = [\"web1\"]", "hosts = [\"web2\"]")).unwrap_err();
        assert!(matches!(left, PlanError::LeftOut { count: 1, ref shown } if shown == "db1"));
        assert!(
            left.to_string().contains("keep the system they run now"),
            "{left}"
        );
        assert!(matches!(
            resolve(two("rest = true", "hosts = [\"db1\"]")),
            Err(PlanError::RestNotLast(_))
        ));
        assert!(matches!(
            resolve(two("hosts = []", "rest = true")),
            Err(PlanError::Members(_))
        ));
        assert!(matches!(
            resolve(two("hosts = [\"web1\"]\nrest = true", "rest = true")),
            Err(PlanError::Members(_))
        ));
        assert!(matches!(
            resolve(two("hosts = [\"web1\"]", "rest = true").replace("\"two\"", "\"one\"")),
            Err(PlanError::DuplicateName(_))
        ));
        assert!(matches!(
            resolve(two("hosts = [\"web1\"]\ntimeout = \"soon\"", "rest = true")),
            Err(PlanError::Duration { field: "timeout", .. })
        ));
        assert!(matches!(
            resolve(two("hosts = [\"web1\"]\nwait = \"1m\"", "rest = true")),
            Err(PlanError::Syntax(_))
        ));
        assert!(matches!(
            resolve("[[wave]]\nname = \"a b\"\nrest = true\n".into()),
            Err(PlanError::BadName { .. })
        ));
        assert!(matches!(Plan::parse(b""), Err(PlanError::NoWaves)));
        assert!(matches!(
            Plan::parse(&[b' '; MAX_PLAN_BYTES + 1]),
            Err(PlanError::TooLarge)
        ));
        assert!(matches!(Plan::parse(b"\xff"), Err(PlanError::Syntax(_))));
        let many = "[[wave]]\nname = \"w\"\nrest = true\n".repeat(MAX_WAVES + 1);
        assert!(matches!(
            Plan::parse(many.as_bytes()),
            Err(PlanError::TooManyWaves(_))
        ));
    }

    #[test]
    fn a_rest_wave_may_be_empty() {
        let plan = Plan::parse(
            b"[[wave]]\nname = \"all\"\nhosts = [\"*\"]\n[[wave]]\nname = \"rest\"\nrest = true\n",
        )
        .unwrap();
        let waves = plan.resolve(&hosts(&["a", "b"])).unwrap();
        assert_eq!(waves[0].hosts.len(), 2);
        assert!(waves[1].hosts.is_empty());
    }
}
