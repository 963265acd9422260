//! Verification of releases, the one function both `ferry-signer verify` and
//! the agent call: the tip commit's SSH signature, its signer's standing in
//! `allowed_signers`, and the release it carries; and [`verify_tip`], the
//! same for a tip that may carry approvals on top of its release. Policy that
//! needs history (serial and ancestry against what was deployed) is the
//! agent's; counting approvals is `approvals.rs`'s.

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};

use crate::allowed_signers::{AllowedSigners, Unauthorized};
use crate::approvals::{self, Approval, ChainError};
use crate::git::{self, GitError};
use crate::names::CommitId;
use crate::release::{Release, Scope};
use crate::sshsig::{SigError, SshSignature, GIT_NAMESPACE};

/// Who signed a commit, as established by [`verify_commit_signature`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The principal the signature was accepted for, as `git verify-commit`
    /// names it: one pattern of the first `allowed_signers` line for the key.
    pub principal: String,
    /// `SHA256:…` fingerprint of the signing key.
    pub fingerprint: String,
    /// Key algorithm, e.g. `ssh-ed25519`.
    pub key_type: String,
}

/// A release whose signature and contents have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    /// The release commit.
    pub commit: CommitId,
    /// Who signed it.
    pub signer: Signer,
    /// Its committer time.
    pub committed_at: DateTime<Utc>,
    /// What it says.
    pub release: Release,
}

/// Why a commit or release was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("commit {commit} is not signed: releases must be signed (ferry-signer release, or git commit -S with gpg.format=ssh)")]
    Unsigned { commit: Oid },
    #[error("commit {commit}: {source}")]
    Signature {
        commit: Oid,
        #[source]
        source: SigError,
    },
    #[error("commit {commit}: {source}")]
    Unauthorized {
        commit: Oid,
        #[source]
        source: Unauthorized,
    },
    #[error("release {commit} (serial {serial}) expired at {expires}: the deploy branch is stale or being withheld; publish a new release")]
    Expired {
        commit: Oid,
        serial: u64,
        expires: DateTime<Utc>,
    },
    #[error("approval {commit}: {source}")]
    Approval {
        commit: Oid,
        #[source]
        source: Box<VerifyError>,
    },
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Git(#[from] GitError),
}

impl VerifyError {
    /// A short, plain description for a commit status (no internals, ≤ 140 chars).
    pub fn summary(&self) -> String {
        let s = match self {
            VerifyError::Unsigned { .. } => "refused: release commit is not signed".to_owned(),
            VerifyError::Signature { source, .. } => match source {
                SigError::Mismatch { .. } => {
                    "refused: signature does not match the commit (tampered?)".to_owned()
                }
                SigError::Namespace(_) => "refused: signature is not for git (wrong namespace)".to_owned(),
                SigError::HashAlgorithm(h) => format!("refused: signature hash {h} not accepted"),
                SigError::RsaSha1 => "refused: ssh-rsa (SHA-1) signature".to_owned(),
                SigError::Certificate(_) => "refused: signed by a certificate (unsupported)".to_owned(),
                SigError::UnsupportedAlgorithm(a) => {
                    format!("refused: signature algorithm {a} not supported")
                }
                _ => "refused: malformed signature".to_owned(),
            },
            VerifyError::Unauthorized { source, .. } => match source {
                Unauthorized::KeyNotListed { fingerprint } => {
                    format!("refused: signed by unknown key {fingerprint}")
                }
                Unauthorized::Namespace { principals, .. } => {
                    format!("refused: {principals} may not sign git commits")
                }
                Unauthorized::NotYetValid { principals, .. } => {
                    format!("refused: key of {principals} not yet valid")
                }
                Unauthorized::Expired { principals, .. } => {
                    format!("refused: key of {principals} has expired")
                }
                Unauthorized::NoTouch { principals, .. } => {
                    format!("refused: security key of {principals} signed without a touch")
                }
                Unauthorized::NoUserVerification { principals, .. } => {
                    format!("refused: security key of {principals} signed without user verification")
                }
            },
            VerifyError::Expired { serial, expires, .. } => {
                format!(
                    "stale: release {serial} expired {}",
                    expires.format("%Y-%m-%d %H:%M UTC")
                )
            }
            VerifyError::Approval { source, .. } => {
                let inner = source.summary();
                match inner.strip_prefix("refused: ") {
                    Some(rest) => format!("refused: approval {rest}"),
                    None => format!("approval: {inner}"),
                }
            }
            VerifyError::Chain(ChainError::TooMany { .. }) => {
                format!(
                    "refused: more than {} approvals on one release",
                    approvals::MAX_APPROVALS
                )
            }
            VerifyError::Chain(ChainError::Git(_)) => "error: cannot read the approvals".to_owned(),
            // The first line: the reason and where (the snippet below it
            // is for a terminal).
            VerifyError::Git(GitError::Release { source, .. }) => {
                let text = source.to_string();
                format!("refused: {}", text.lines().next().unwrap_or_default())
            }
            VerifyError::Git(GitError::NoReleaseFile { .. }) => {
                "refused: commit has no release.toml".to_owned()
            }
            VerifyError::Git(_) => "error: cannot read the release commit".to_owned(),
        };
        truncate_chars(&s, 140)
    }
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// Checks the SSH signature on `commit` and that its key may sign git commits
/// at the commit's committer time, as `git verify-commit` does with
/// `gpg.ssh.allowedSignersFile`.
pub fn verify_commit_signature(
    repo: &Repository,
    commit: Oid,
    signers: &AllowedSigners,
) -> Result<(Signer, DateTime<Utc>), VerifyError> {
    let signed = git::signed_commit(repo, commit)?.ok_or(VerifyError::Unsigned { commit })?;
    let sig_err = |source| VerifyError::Signature { commit, source };
    let sig = SshSignature::from_armor(&signed.signature).map_err(sig_err)?;
    sig.verify(&signed.payload).map_err(sig_err)?;
    let entry = signers
        .authorize(&sig.public_key, GIT_NAMESPACE, signed.committed_at, sig.sk)
        .map_err(|source| VerifyError::Unauthorized { commit, source })?;
    Ok((
        Signer {
            principal: entry.principal,
            fingerprint: sig.fingerprint(),
            key_type: sig.public_key.algorithm().to_string(),
        },
        signed.committed_at,
    ))
}

/// Verifies the release at `rev`: a valid signature by a key `signers` allows
/// for namespace `git`, a well-formed `release.toml`, and not expired at `now`.
pub fn verify_release(
    repo: &Repository,
    rev: &str,
    signers: &AllowedSigners,
    now: DateTime<Utc>,
) -> Result<VerifiedRelease, VerifyError> {
    let commit = git::resolve_commit(repo, rev)?;
    verify_release_commit(repo, commit, signers, now)
}

/// [`verify_release`] for a commit already resolved.
pub fn verify_release_commit(
    repo: &Repository,
    commit: Oid,
    signers: &AllowedSigners,
    now: DateTime<Utc>,
) -> Result<VerifiedRelease, VerifyError> {
    verify_release_commit_scoped(repo, commit, signers, now, Scope::Fleet)
}

/// [`verify_release_commit`] keeping the entries `scope` asks for: the
/// signature is checked before a byte of the release is read, whatever the
/// scope.
pub fn verify_release_commit_scoped(
    repo: &Repository,
    commit: Oid,
    signers: &AllowedSigners,
    now: DateTime<Utc>,
    scope: Scope<'_>,
) -> Result<VerifiedRelease, VerifyError> {
    let (signer, committed_at) = verify_commit_signature(repo, commit, signers)?;
    let release = git::read_release_scoped(repo, commit, scope)?;
    if let Some(expires) = release.expires.filter(|_| release.is_expired(now)) {
        return Err(VerifyError::Expired {
            commit,
            serial: release.serial,
            expires,
        });
    }
    Ok(VerifiedRelease {
        commit: commit.into(),
        signer,
        committed_at,
        release,
    })
}

/// A branch tip verified down to its release: the release, and the
/// approvals on top of it (oldest first) with who signed each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTip {
    /// The tip commit: the release itself, or its latest approval.
    pub tip: CommitId,
    pub release: VerifiedRelease,
    pub approvals: Vec<Approval>,
}

/// Verifies the tip `tip`: every approval on top of the release (a commit
/// with one parent and its parent's tree) must carry a valid signature by a
/// key `approver_signers` allows, and the release below them is verified as
/// [`verify_release_commit`] does, against `release_signers`. A commit that
/// changes the tree is a release, so it needs a release signature. Whether
/// the approvals suffice is [`approvals::tally`]'s to say.
pub fn verify_tip(
    repo: &Repository,
    tip: Oid,
    release_signers: &AllowedSigners,
    approver_signers: &AllowedSigners,
    now: DateTime<Utc>,
) -> Result<VerifiedTip, VerifyError> {
    verify_tip_scoped(repo, tip, release_signers, approver_signers, now, Scope::Fleet)
}

/// [`verify_tip`] keeping the release entries `scope` asks for (an agent
/// asks for its own host's alone).
pub fn verify_tip_scoped(
    repo: &Repository,
    tip: Oid,
    release_signers: &AllowedSigners,
    approver_signers: &AllowedSigners,
    now: DateTime<Utc>,
    scope: Scope<'_>,
) -> Result<VerifiedTip, VerifyError> {
    let chain = approvals::chain(repo, tip)?;
    let mut verified = Vec::with_capacity(chain.approvals.len());
    // The tip first: an unsigned or foreign tip is refused for what it is.
    for &commit in chain.approvals.iter().rev() {
        let (signer, _) = verify_commit_signature(repo, commit, approver_signers).map_err(|e| {
            if commit == tip {
                e
            } else {
                VerifyError::Approval {
                    commit,
                    source: Box::new(e),
                }
            }
        })?;
        verified.push(Approval {
            commit: commit.into(),
            signer,
        });
    }
    verified.reverse();
    let release = verify_release_commit_scoped(repo, chain.release, release_signers, now, scope)?;
    Ok(VerifiedTip {
        tip: tip.into(),
        release,
        approvals: verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{Release, ReleaseError};

    /// A status description keeps the reason of a bad release.toml, whatever
    /// the line it is on looks like, on one line within 140 characters.
    #[test]
    fn a_release_toml_error_summary_says_why_first() {
        let text = format!(
            "format = 1\nserial = 1\ncreated = 2026-11-21T23:00:00Z\nnonsense = \"{}\"\n\n[hosts.web1]\ntoplevel = \"/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1\"\n",
            "x".repeat(300)
        );
        let source: ReleaseError = Release::parse(text.as_bytes()).unwrap_err();
        let e = VerifyError::Git(GitError::Release {
            commit: git2::Oid::ZERO_SHA1,
            source,
        });
        let summary = e.summary();
        assert!(summary.chars().count() <= 140, "{summary}");
        assert!(!summary.contains('\n'), "{summary}");
        assert!(
            summary.starts_with("refused: release.toml line 4: unknown field `nonsense`"),
            "{summary}"
        );
        // A short reason: the snippet below it stays out of the description.
        let broken = Release::parse(b"format = 1\nserial = 1\n[hosts.web1\n").unwrap_err();
        let summary = VerifyError::Git(GitError::Release {
            commit: git2::Oid::ZERO_SHA1,
            source: broken,
        })
        .summary();
        assert!(
            summary.starts_with("refused: release.toml is not valid TOML at line 3: "),
            "{summary}"
        );
        assert!(!summary.contains('\n') && !summary.contains('^'), "{summary}");
    }
}
