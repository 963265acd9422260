//! Making a release: computing the next `release.toml` from the previous one
//! (pure, in [`next_release`]), then writing it as a signed commit on the
//! deploy branch of a repository, bare or not, without touching a work tree;
//! and writing an approval of the tip ([`approve`]) the same way.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use git2::{Oid, Repository};

use crate::git::{self, GitError};
use crate::names::{CommitId, HostName};
use crate::release::{HostEntry, Release, RELEASE_FILE};
use crate::sshsig::{GitSigner, SignError};

/// What a new release changes relative to the previous one.
#[derive(Debug, Clone, Default)]
pub struct ReleaseChanges {
    /// Hosts to set. Others keep their previous entry unless `replace_hosts`.
    pub hosts: BTreeMap<HostName, HostEntry>,
    /// Drop every host not named in `hosts`.
    pub replace_hosts: bool,
    /// The source commit built.
    pub source: Option<CommitId>,
    /// Lifetime from `created`; `None` means the release never expires.
    pub expires_in: Option<Duration>,
}

/// Why a release could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no hosts given: name at least one with --host NAME=TOPLEVEL or --hosts-file")]
    NoHosts,
    #[error("the previous release has serial {0}, the largest possible: the branch cannot advance")]
    SerialExhausted(u64),
    #[error(
        "the previous release on branch {branch} cannot be read, so the next serial is unknown: {source}"
    )]
    Previous {
        branch: String,
        #[source]
        source: GitError,
    },
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Git(#[from] GitError),
}

impl From<git2::Error> for PublishError {
    fn from(e: git2::Error) -> Self {
        Self::Git(GitError::Git(e))
    }
}

/// The release that follows `previous`: serial + 1, hosts merged (or replaced).
pub fn next_release(
    previous: Option<&Release>,
    changes: &ReleaseChanges,
    now: DateTime<Utc>,
) -> Result<Release, PublishError> {
    // Refused before anything is signed: a serial past MAX_SERIAL could be
    // signed and pushed, but no agent (nor `verify`) could parse it.
    let serial = match previous {
        Some(p) => p
            .serial
            .checked_add(1)
            .filter(|&s| s <= crate::release::MAX_SERIAL)
            .ok_or(PublishError::SerialExhausted(p.serial))?,
        None => 1,
    };
    let hosts = match previous {
        Some(p) if !changes.replace_hosts => {
            let mut hosts = p.hosts.clone();
            hosts.extend(changes.hosts.iter().map(|(n, e)| (n.clone(), e.clone())));
            hosts
        }
        // A clone copies the tree without comparing a single key.
        _ => changes.hosts.clone(),
    };
    if hosts.is_empty() {
        return Err(PublishError::NoHosts);
    }
    // Whole seconds: that is what release.toml records.
    let created = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    Ok(Release {
        serial,
        created,
        expires: changes.expires_in.map(|d| created + d),
        source: changes.source.clone(),
        hosts,
    })
}

/// The default commit message for a release.
pub fn default_message(release: &Release, previous: Option<&Release>) -> String {
    // Lines are formatted only for the hosts shown; the rest are counted.
    let updated = release
        .hosts
        .iter()
        .filter(|(name, entry)| previous.and_then(|p| p.hosts.get(*name)) != Some(*entry))
        .map(|(name, entry)| (name, Some(entry)));
    let removed = previous
        .into_iter()
        .flat_map(|p| p.hosts.keys())
        .filter(|n| !release.hosts.contains_key(*n))
        .map(|name| (name, None));
    let mut changed_count = 0;
    let mut changed = Vec::new();
    for (name, entry) in updated.chain(removed) {
        changed_count += 1;
        if changed.len() < MESSAGE_HOSTS {
            changed.push(match entry {
                Some(e) => format!("  {name}: {}", e.toplevel.name()),
                None => format!("  {name}: removed"),
            });
        }
    }
    let mut msg = format!("release {}: {} host(s)", release.serial, release.hosts.len());
    if let Some(src) = &release.source {
        msg.push_str(&format!(" from {}", &src.as_str()[..12]));
    }
    msg.push_str("\n\n");
    if changed.is_empty() {
        msg.push_str("No host changed.\n");
    } else {
        msg.push_str("Changed:\n");
        msg.push_str(&changed.join("\n"));
        msg.push('\n');
        if changed_count > changed.len() {
            msg.push_str(&format!(
                "  … and {} more (release.toml has every host)\n",
                changed_count - changed.len()
            ));
        }
    }
    msg
}

/// The default commit message lists at most this many changed hosts, so a
/// fleet-wide release stays readable in `git log` and the forge (and the
/// commit small: 10,000 lines made it half a megabyte).
const MESSAGE_HOSTS: usize = 50;

/// A release as written.
#[derive(Debug, Clone)]
pub struct Published {
    /// The new release commit.
    pub commit: Oid,
    /// Its contents.
    pub release: Release,
}

/// Creates the next release on `branch`: reads the previous one, writes the new
/// `release.toml` into a copy of its tree, signs the commit with `key`, and
/// moves the branch only if nobody else moved it meanwhile.
pub fn publish(
    repo: &Repository,
    branch: &str,
    key: &dyn GitSigner,
    changes: &ReleaseChanges,
    message: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Published, PublishError> {
    let tip = git::branch_tip(repo, branch)?;
    let previous = match tip {
        Some(commit) => Some(
            git::read_release(repo, commit).map_err(|source| PublishError::Previous {
                branch: branch.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    let release = next_release(previous.as_ref(), changes, now)?;
    let message = message
        .map(|m| format!("{}\n", m.trim_end()))
        .unwrap_or_else(|| default_message(&release, previous.as_ref()));

    let blob = repo.blob(release.to_toml().as_bytes())?;
    let parent = tip.map(|t| repo.find_commit(t)).transpose()?;
    let base_tree = parent.as_ref().map(|p| p.tree()).transpose()?;
    let mut builder = repo.treebuilder(base_tree.as_ref())?;
    builder.insert(RELEASE_FILE, blob, 0o100644)?;
    let tree = repo.find_tree(builder.write()?)?;

    let who = repo
        .signature()
        .or_else(|_| git2::Signature::now("ferry-signer", "ferry-signer@localhost"))?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let payload = repo.commit_create_buffer(&who, &who, &message, &tree, &parents)?;
    let payload = std::str::from_utf8(&payload).expect("git2 writes UTF-8 commit headers");
    let signature = key.sign_git(payload.as_bytes())?;
    let commit = git::write_signed_commit(repo, payload, &signature)?;
    git::advance_branch(
        repo,
        branch,
        tip,
        commit,
        &format!("ferry-signer: release {}", release.serial),
    )?;
    Ok(Published { commit, release })
}

/// Writes an approval on `branch`: a commit on top of `tip` with `tip`'s
/// tree, signed with `key`; the branch moves only if it still points at `tip`.
pub fn approve(
    repo: &Repository,
    branch: &str,
    tip: Oid,
    key: &dyn GitSigner,
    message: &str,
) -> Result<Oid, PublishError> {
    let parent = repo.find_commit(tip)?;
    let tree = parent.tree()?;
    let who = repo
        .signature()
        .or_else(|_| git2::Signature::now("ferry-signer", "ferry-signer@localhost"))?;
    let message = format!("{}\n", message.trim_end());
    let payload = repo.commit_create_buffer(&who, &who, &message, &tree, &[&parent])?;
    let payload = std::str::from_utf8(&payload).expect("git2 writes UTF-8 commit headers");
    let signature = key.sign_git(payload.as_bytes())?;
    let commit = git::write_signed_commit(repo, payload, &signature)?;
    git::advance_branch(repo, branch, Some(tip), commit, "ferry-signer: approval")?;
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Action;

    fn entry(hash: char, name: &str) -> HostEntry {
        HostEntry {
            toplevel: format!("/nix/store/{}-nixos-system-{name}", hash.to_string().repeat(32))
                .parse()
                .unwrap(),
            action: Action::Switch,
        }
    }

    fn changes(hosts: &[(&str, HostEntry)]) -> ReleaseChanges {
        ReleaseChanges {
            hosts: hosts
                .iter()
                .map(|(n, e)| (n.parse().unwrap(), e.clone()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn first_release_has_serial_one() {
        let r = next_release(None, &changes(&[("web1", entry('a', "web1"))]), Utc::now()).unwrap();
        assert_eq!(r.serial, 1);
        assert_eq!(r.expires, None);
    }

    #[test]
    fn unnamed_hosts_keep_their_entry_unless_replaced() {
        let now = Utc::now();
        let first = next_release(
            None,
            &changes(&[("web1", entry('a', "web1")), ("db1", entry('b', "db1"))]),
            now,
        )
        .unwrap();
        let second = next_release(Some(&first), &changes(&[("web1", entry('c', "web1"))]), now).unwrap();
        assert_eq!(second.serial, 2);
        assert_eq!(second.hosts.len(), 2);
        assert_eq!(second.hosts[&"web1".parse().unwrap()], entry('c', "web1"));
        let mut replace = changes(&[("web1", entry('c', "web1"))]);
        replace.replace_hosts = true;
        let third = next_release(Some(&second), &replace, now).unwrap();
        assert_eq!(third.hosts.len(), 1);
        let msg = default_message(&third, Some(&second));
        assert!(msg.contains("db1: removed"), "{msg}");
    }

    #[test]
    fn a_fleet_wide_message_lists_the_first_hosts_and_counts_the_rest() {
        let hosts: Vec<(String, HostEntry)> = (0..120)
            .map(|i| {
                let name = format!("web{i:03}");
                let e = entry('a', &name);
                (name, e)
            })
            .collect();
        let named: Vec<(&str, HostEntry)> = hosts.iter().map(|(n, e)| (n.as_str(), e.clone())).collect();
        let release = next_release(None, &changes(&named), Utc::now()).unwrap();
        let msg = default_message(&release, None);
        assert!(msg.starts_with("release 1: 120 host(s)\n"), "{msg}");
        assert_eq!(
            msg.lines().filter(|l| l.starts_with("  web")).count(),
            MESSAGE_HOSTS
        );
        assert!(msg.contains("web000") && !msg.contains("web119"), "{msg}");
        assert!(msg.contains("… and 70 more"), "{msg}");
    }

    #[test]
    fn expiry_and_exhaustion() {
        let now = Utc::now();
        let mut c = changes(&[("web1", entry('a', "web1"))]);
        c.expires_in = Some(Duration::days(30));
        let r = next_release(None, &c, now).unwrap();
        assert_eq!(r.expires.unwrap() - r.created, Duration::days(30));
        let mut max = r.clone();
        max.serial = u64::MAX;
        assert!(matches!(
            next_release(Some(&max), &c, now),
            Err(PublishError::SerialExhausted(_))
        ));
        // The last serial TOML can hold is made, and reads back; the next is refused.
        let mut last = r.clone();
        last.serial = crate::release::MAX_SERIAL - 1;
        let made = next_release(Some(&last), &c, now).unwrap();
        assert_eq!(made.serial, crate::release::MAX_SERIAL);
        assert_eq!(
            Release::parse(made.to_toml().as_bytes()).unwrap().serial,
            made.serial
        );
        assert!(matches!(
            next_release(Some(&made), &c, now),
            Err(PublishError::SerialExhausted(s)) if s == crate::release::MAX_SERIAL
        ));
        assert!(matches!(
            next_release(None, &ReleaseChanges::default(), now),
            Err(PublishError::NoHosts)
        ));
    }
}
