//! Whether a verified release may be deployed on this host: the
//! anti-rollback rule (the release descends from the anchor and has a greater
//! serial), the host's entry, and whether the host already runs it. Pure:
//! the caller brings the ancestry answer and the running system.

use ferry_signer::{CommitId, HostEntry, HostName, StorePath, VerifiedRelease};

use crate::state::Anchor;

/// What to do with a verified release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deploy this host's entry.
    Deploy(HostEntry),
    /// This host already runs its entry: record and report success.
    AlreadyRunning(HostEntry),
    /// Refuse: nothing is changed.
    Refuse(Refusal),
}

/// Why a verified release is refused by this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("release {tip} does not descend from the last accepted release {anchor}: the branch was rewound or force-pushed")]
    Rewound { tip: CommitId, anchor: CommitId },
    #[error("release {tip} has serial {serial}, not greater than the last accepted serial {anchor_serial}")]
    SerialNotIncreasing {
        tip: CommitId,
        serial: u64,
        anchor_serial: u64,
    },
    #[error("release {tip} (serial {serial}) has no entry for host {host}")]
    NoEntry {
        tip: CommitId,
        serial: u64,
        host: HostName,
    },
    /// The entry names a `.drv`: realising it would build on the host.
    #[error("release {tip} (serial {serial}) gives host {host} the derivation {toplevel}, not a built system; hosts never build: release the toplevel's output path (as `nix build --print-out-paths` prints it)")]
    Derivation {
        tip: CommitId,
        serial: u64,
        host: HostName,
        toplevel: StorePath,
    },
}

impl Refusal {
    /// Plain words for a commit status (≤ 140 characters).
    pub fn summary(&self) -> String {
        match self {
            Refusal::Rewound { .. } => {
                "refused: branch was rewound (not a descendant of the last release)".into()
            }
            Refusal::SerialNotIncreasing {
                serial,
                anchor_serial,
                ..
            } => {
                format!("refused: serial {serial} is not greater than {anchor_serial}")
            }
            Refusal::NoEntry { host, .. } => format!("refused: release has no entry for {host}"),
            Refusal::Derivation { host, .. } => {
                format!("refused: the entry for {host} is a .drv, not a built system")
            }
        }
    }
}

/// Judges a verified release against the anchor and the running system.
/// `descends_from_anchor` is whether the release commit descends from (or is)
/// the anchor commit; it is ignored when there is no anchor.
pub fn judge(
    release: &VerifiedRelease,
    host: &HostName,
    anchor: Option<&Anchor>,
    descends_from_anchor: bool,
    running: Option<&StorePath>,
) -> Verdict {
    let tip = release.commit.clone();
    let serial = release.release.serial;
    if let Some(anchor) = anchor {
        if anchor.commit != tip {
            if !descends_from_anchor {
                return Verdict::Refuse(Refusal::Rewound {
                    tip,
                    anchor: anchor.commit.clone(),
                });
            }
            if serial <= anchor.serial {
                return Verdict::Refuse(Refusal::SerialNotIncreasing {
                    tip,
                    serial,
                    anchor_serial: anchor.serial,
                });
            }
        }
    }
    let Some(entry) = release.release.hosts.get(host) else {
        return Verdict::Refuse(Refusal::NoEntry {
            tip,
            serial,
            host: host.clone(),
        });
    };
    if entry.toplevel.is_derivation() {
        return Verdict::Refuse(Refusal::Derivation {
            tip,
            serial,
            host: host.clone(),
            toplevel: entry.toplevel.clone(),
        });
    }
    // `boot` only changes the next boot: it is done when the profile points at
    // the toplevel, which the caller reflects in `running` for that action.
    if running == Some(&entry.toplevel) {
        Verdict::AlreadyRunning(entry.clone())
    } else {
        Verdict::Deploy(entry.clone())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use chrono::Utc;
    use ferry_signer::Action;
    use ferry_signer::{Release, Signer};
    use std::collections::BTreeMap;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn path(c: char) -> StorePath {
        format!("/nix/store/{}-nixos-system-web1", c.to_string().repeat(32))
            .parse()
            .unwrap()
    }

    fn release(commit: &str, serial: u64, hosts: &[(&str, StorePath)]) -> VerifiedRelease {
        VerifiedRelease {
            commit: commit.parse().unwrap(),
            signer: Signer {
                principal: "ci".into(),
                fingerprint: "SHA256:x".into(),
                key_type: "ssh-ed25519".into(),
            },
            committed_at: Utc::now(),
            release: Release {
                serial,
                created: Utc::now(),
                expires: None,
                source: None,
                hosts: hosts
                    .iter()
                    .map(|(h, p)| {
                        (
                            h.parse().unwrap(),
                            HostEntry {
                                toplevel: p.clone(),
                                action: Action::Switch,
                            },
                        )
                    })
                    .collect::<BTreeMap<_, _>>(),
            },
        }
    }

    fn host() -> HostName {
        "web1".parse().unwrap()
    }

    fn anchor(commit: &str, serial: u64) -> Anchor {
        Anchor {
            commit: commit.parse().unwrap(),
            serial,
        }
    }

    #[test]
    fn first_release_deploys() {
        let r = release(B, 1, &[("web1", path('b'))]);
        assert!(
            matches!(judge(&r, &host(), None, false, Some(&path('a'))), Verdict::Deploy(e) if e.toplevel == path('b'))
        );
    }

    #[test]
    fn running_system_means_nothing_to_do() {
        let r = release(B, 2, &[("web1", path('b'))]);
        let v = judge(&r, &host(), Some(&anchor(A, 1)), true, Some(&path('b')));
        assert!(matches!(v, Verdict::AlreadyRunning(_)));
    }

    #[test]
    fn a_derivation_is_refused_not_built() {
        let drv: StorePath = format!("{}.drv", path('b')).parse().unwrap();
        let r = release(B, 2, &[("web1", drv.clone())]);
        let v = judge(&r, &host(), Some(&anchor(A, 1)), true, Some(&path('a')));
        let Verdict::Refuse(refusal) = v else {
            panic!("{v:?}")
        };
        assert_eq!(
            refusal,
            Refusal::Derivation {
                tip: B.parse().unwrap(),
                serial: 2,
                host: host(),
                toplevel: drv
            }
        );
        assert!(refusal.summary().len() <= 140, "{}", refusal.summary());
        assert!(refusal.to_string().contains("--print-out-paths"), "{refusal}");
    }

    #[test]
    fn rewind_is_refused_even_with_a_higher_serial() {
        let r = release(B, 9, &[("web1", path('b'))]);
        let v = judge(&r, &host(), Some(&anchor(A, 1)), false, None);
        assert!(matches!(v, Verdict::Refuse(Refusal::Rewound { .. })), "{v:?}");
    }

    #[test]
    fn serial_must_increase() {
        let r = release(B, 3, &[("web1", path('b'))]);
        for anchor_serial in [3, 4] {
            let v = judge(&r, &host(), Some(&anchor(A, anchor_serial)), true, None);
            assert!(
                matches!(v, Verdict::Refuse(Refusal::SerialNotIncreasing { .. })),
                "{v:?}"
            );
        }
    }

    #[test]
    fn the_anchor_itself_is_not_a_rollback() {
        // After a restart mid-deploy the anchor is the tip: resume, don't refuse.
        let r = release(A, 5, &[("web1", path('b'))]);
        assert!(matches!(
            judge(&r, &host(), Some(&anchor(A, 5)), true, None),
            Verdict::Deploy(_)
        ));
    }

    #[test]
    fn another_hosts_entry_is_never_used() {
        let r = release(B, 2, &[("db1", path('b'))]);
        let v = judge(&r, &host(), None, false, None);
        assert!(matches!(v, Verdict::Refuse(Refusal::NoEntry { .. })));
        if let Verdict::Refuse(refusal) = v {
            assert_eq!(refusal.summary(), "refused: release has no entry for web1");
        }
    }
}
