//! The two-person rule: approvals of a release, and the rule that counts
//! them. An approval is a commit whose only parent is a release (or an
//! approval of it) and whose tree is its parent's, signed like a release
//! commit by a person; a host may require some number of distinct approvers
//! before it deploys. This module owns the history walk from a branch tip
//! down to the release it carries ([`chain`], no verification, bounded), the
//! host's [`ApprovalPolicy`], and the pure counting rule ([`tally`]) that the
//! agent, `ferry-signer verify` and `show` share. Signature checks of the
//! commits found are `verify.rs`'s ([`crate::verify::verify_tip`]).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use git2::{Oid, Repository};

use crate::names::CommitId;
use crate::verify::Signer;

/// At most this many approvals are walked on top of a release: more is not
/// a review but a flood, and the walk must stay bounded.
pub const MAX_APPROVALS: usize = 64;

/// A principal as `allowed_signers` names it (`alice@example.com`): who may
/// release or approve, in a host's policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

/// Why a string is not a principal a policy can name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a principal: use a name from allowed_signers (no spaces, commas, quotes or patterns)")]
pub struct PrincipalError(String);

impl FromStr for Principal {
    type Err = PrincipalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 256
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !",\"*?!".contains(c));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(PrincipalError(s.chars().take(80).collect()))
        }
    }
}

impl Principal {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a host demands of a release before it deploys it, pinned on the
/// host. The default demands nothing beyond a valid release signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalPolicy {
    required: usize,
    approvers: BTreeSet<Principal>,
    releasers: BTreeSet<Principal>,
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{required} approvals are required but no approvers are named: list the principals who may approve"
    )]
    NoApprovers { required: usize },
    #[error("{required} approvals are required but only {named} approver(s) are named: the release could never be approved")]
    Unreachable { required: usize, named: usize },
}

impl ApprovalPolicy {
    /// `required` distinct approvers out of `approvers`; releases signed only
    /// by `releasers` (empty: any principal allowed_signers accepts).
    pub fn new(
        required: usize,
        approvers: impl IntoIterator<Item = Principal>,
        releasers: impl IntoIterator<Item = Principal>,
    ) -> Result<Self, PolicyError> {
        let approvers: BTreeSet<Principal> = approvers.into_iter().collect();
        if required > 0 && approvers.is_empty() {
            return Err(PolicyError::NoApprovers { required });
        }
        if required > approvers.len() {
            return Err(PolicyError::Unreachable {
                required,
                named: approvers.len(),
            });
        }
        Ok(Self {
            required,
            approvers,
            releasers: releasers.into_iter().collect(),
        })
    }

    /// How many distinct approvers a release needs.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Whether a release signed by `signer` may be deployed at all.
    pub fn may_release(&self, signer: &Signer) -> Result<(), NotAReleaser> {
        if self.releasers.is_empty() || self.releasers.iter().any(|r| r.as_str() == signer.principal) {
            Ok(())
        } else {
            Err(NotAReleaser {
                principal: signer.principal.clone(),
                releasers: self
                    .releasers
                    .iter()
                    .map(Principal::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

/// A release signed by someone the host's policy does not let release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the release is signed by {principal}, who may not release here (releasers: {releasers}); a commit that changes the tree is a release and needs a releaser's signature")]
pub struct NotAReleaser {
    pub principal: String,
    pub releasers: String,
}

/// An approval whose signature has been verified: the commit and who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub commit: CommitId,
    pub signer: Signer,
}

/// Why an approval does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCounted {
    /// Signed by the principal (or the key) that signed the release.
    Releaser,
    /// The principal already approved this release.
    Repeat,
    /// The principal is not one of the host's approvers.
    NotAnApprover,
}

impl NotCounted {
    pub fn describe(self) -> &'static str {
        match self {
            NotCounted::Releaser => "signed the release itself",
            NotCounted::Repeat => "already counted",
            NotCounted::NotAnApprover => "not an approver here",
        }
    }
}

/// The approvals of one release, counted under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub required: usize,
    /// The principals that count, in the order they approved.
    pub counted: Vec<String>,
    /// The approvals that do not count, and why.
    pub ignored: Vec<(Approval, NotCounted)>,
}

impl Tally {
    /// Whether enough distinct approvers approved.
    pub fn is_met(&self) -> bool {
        self.counted.len() >= self.required
    }

    /// The commit status of a release still short of approvals, e.g.
    /// `release 42 awaits approval (1 of 2: alice)`.
    pub fn awaiting(&self, serial: u64) -> String {
        let mut s = format!(
            "release {serial} awaits approval ({} of {}",
            self.counted.len(),
            self.required
        );
        if !self.counted.is_empty() {
            s.push_str(": ");
            s.push_str(&self.counted.join(", "));
        }
        s.push(')');
        crate::verify::truncate_chars(&s, 140)
    }
}

/// Counts `approvals` (oldest first) of a release signed by `releaser` under
/// `policy`: a principal counts once however many keys or commits it has;
/// the releaser's own approval (its principal or its key) never counts;
/// only the policy's approvers count.
pub fn tally(policy: &ApprovalPolicy, releaser: &Signer, approvals: &[Approval]) -> Tally {
    let mut counted: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for approval in approvals {
        let who = &approval.signer;
        let reason = if who.principal == releaser.principal || who.fingerprint == releaser.fingerprint {
            Some(NotCounted::Releaser)
        } else if !policy.approvers.iter().any(|a| a.as_str() == who.principal) {
            Some(NotCounted::NotAnApprover)
        } else if counted.contains(&who.principal) {
            Some(NotCounted::Repeat)
        } else {
            None
        };
        match reason {
            Some(r) => ignored.push((approval.clone(), r)),
            None => counted.push(who.principal.clone()),
        }
    }
    Tally {
        required: policy.required,
        counted,
        ignored,
    }
}

/// A branch tip split into the release it carries and the approvals on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The release: the first commit below the tip that is not an approval.
    pub release: Oid,
    /// The approvals, oldest first (the tip last).
    pub approvals: Vec<Oid>,
}

/// Why a tip cannot be split into a release and its approvals.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(
        "more than {MAX_APPROVALS} approvals on top of one release below {tip}: refusing to walk further"
    )]
    TooMany { tip: Oid },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// Whether `commit` has the shape of an approval: exactly one parent, and
/// the parent's tree. Anything else (a root, a merge, a changed tree) is
/// judged as a release.
pub fn is_approval(repo: &Repository, commit: Oid) -> Result<bool, git2::Error> {
    let c = repo.find_commit(commit)?;
    if c.parent_count() != 1 {
        return Ok(false);
    }
    Ok(c.parent(0)?.tree_id() == c.tree_id())
}

/// Walks down from `tip` through approvals to the release they approve. No
/// signature is checked here.
pub fn chain(repo: &Repository, tip: Oid) -> Result<Chain, ChainError> {
    let mut approvals = Vec::new();
    let mut at = tip;
    while is_approval(repo, at)? {
        if approvals.len() == MAX_APPROVALS {
            return Err(ChainError::TooMany { tip });
        }
        approvals.push(at);
        at = repo.find_commit(at)?.parent_id(0)?;
    }
    approvals.reverse();
    Ok(Chain {
        release: at,
        approvals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(principal: &str, key: &str) -> Signer {
        Signer {
            principal: principal.into(),
            fingerprint: format!("SHA256:{key}"),
            key_type: "ssh-ed25519".into(),
        }
    }

    fn approval(n: u8, principal: &str, key: &str) -> Approval {
        Approval {
            commit: format!("{:040x}", n).parse().unwrap(),
            signer: signer(principal, key),
        }
    }

    fn p(names: &[&str]) -> Vec<Principal> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn policy(required: usize) -> ApprovalPolicy {
        ApprovalPolicy::new(required, p(&["alice", "bob", "carol"]), p(&["ci"])).unwrap()
    }

    fn ci() -> Signer {
        signer("ci", "ci-key")
    }

    #[test]
    fn no_approvals_required_is_met_at_once() {
        let t = tally(&ApprovalPolicy::default(), &ci(), &[]);
        assert!(t.is_met());
    }

    #[test]
    fn threshold_met_and_not_met() {
        let one = [approval(1, "alice", "a")];
        let t = tally(&policy(2), &ci(), &one);
        assert!(!t.is_met());
        assert_eq!(t.awaiting(42), "release 42 awaits approval (1 of 2: alice)");
        let two = [approval(1, "alice", "a"), approval(2, "bob", "b")];
        let t = tally(&policy(2), &ci(), &two);
        assert!(t.is_met());
        assert_eq!(t.counted, ["alice", "bob"]);
        assert_eq!(
            tally(&policy(2), &ci(), &[]).awaiting(7),
            "release 7 awaits approval (0 of 2)"
        );
    }

    #[test]
    fn a_principal_counts_once_with_any_number_of_commits_or_keys() {
        let twice = [approval(1, "alice", "a"), approval(2, "alice", "a")];
        let t = tally(&policy(2), &ci(), &twice);
        assert_eq!(t.counted, ["alice"]);
        assert_eq!(t.ignored[0].1, NotCounted::Repeat);
        assert!(!t.is_met());
        let two_keys = [approval(1, "alice", "a"), approval(2, "alice", "a-backup")];
        assert!(!tally(&policy(2), &ci(), &two_keys).is_met());
    }

    #[test]
    fn the_releasers_own_approval_does_not_count() {
        // By principal, even with another key of it…
        let t = tally(&policy(1), &ci(), &[approval(1, "ci", "other-key")]);
        assert!(!t.is_met());
        assert_eq!(t.ignored[0].1, NotCounted::Releaser);
        // …and by key, even listed under another principal.
        let t = tally(&policy(1), &ci(), &[approval(1, "alice", "ci-key")]);
        assert!(!t.is_met());
        assert_eq!(t.ignored[0].1, NotCounted::Releaser);
        // An approver who released does not approve their own release.
        let t = tally(&policy(1), &signer("alice", "a"), &[approval(1, "alice", "a")]);
        assert!(!t.is_met());
    }

    #[test]
    fn only_the_policys_approvers_count() {
        let t = tally(&policy(1), &ci(), &[approval(1, "mallory", "m")]);
        assert!(!t.is_met());
        assert_eq!(t.ignored[0].1, NotCounted::NotAnApprover);
    }

    #[test]
    fn policies_that_could_never_be_met_are_refused() {
        assert_eq!(
            ApprovalPolicy::new(1, [], []),
            Err(PolicyError::NoApprovers { required: 1 })
        );
        assert_eq!(
            ApprovalPolicy::new(3, p(&["alice", "bob", "alice"]), []),
            Err(PolicyError::Unreachable {
                required: 3,
                named: 2
            })
        );
    }

    #[test]
    fn releasers_are_checked_when_named() {
        assert!(policy(0).may_release(&ci()).is_ok());
        let e = policy(0).may_release(&signer("alice", "a")).unwrap_err();
        assert!(e
            .to_string()
            .contains("signed by alice, who may not release here (releasers: ci)"));
        assert!(ApprovalPolicy::default()
            .may_release(&signer("anyone", "x"))
            .is_ok());
    }

    #[test]
    fn principals_are_plain_names() {
        assert!("alice@example.com".parse::<Principal>().is_ok());
        for bad in ["", "a b", "a,b", "*", "al\"ice", "!bob"] {
            assert!(bad.parse::<Principal>().is_err(), "{bad:?}");
        }
    }
}
