//! `ferry-signer`: Ferry's release format and signature scheme, the one piece
//! of code that both sides share. CI uses it to make releases; every host's
//! `ferry-agent` uses it to verify them.
//!
//! A release is a commit on the deploy branch whose tree holds `release.toml`,
//! signed the way `git commit -S` signs with `gpg.format=ssh`: an SSHSIG
//! signature in namespace `git` in the commit's `gpgsig` header. Releases made
//! here verify with `git verify-commit`, and commits signed by people with git
//! verify here.
//!
//! # Layout
//! - [`release`]: the `release.toml` model, strict parsing, canonical rendering.
//! - [`names`]: validated store paths, host names and commit ids.
//! - [`sshsig`]: the SSHSIG envelope: parse, verify, sign, for every key type
//!   git signs with (ed25519, ECDSA, RSA, FIDO sk-ed25519/sk-ecdsa).
//! - [`approvals`]: the two-person rule: approvals on top of a release, the
//!   host's policy and the counting rule.
//! - [`allowed_signers`]: ssh-keygen's `allowed_signers` file (with [`pattern`]).
//! - [`git`]: libgit2 plumbing: release blob, signature split, signed commits.
//! - [`verify`]: [`verify_release`], the check the agent runs.
//! - [`keys`]: the signing key, age-encrypted at rest.
//! - [`ssh_agent`]: signing with a key held by `ssh-agent` (hardware keys).
//! - [`publish`]: computing and writing the next release.
//! - [`hosts_file`]: the hosts file (`nix eval --json` output) releases read.
//! - [`forge`]: commit statuses on GitHub, Gitea/Forgejo and GitLab: the
//!   settings, the requests, parsing the answers, a small blocking client.
//! - [`fleet`]: a release across the fleet: host selection, per-host
//!   outcomes, counts, and the waiter's decision.
//! - [`mirror`]: the deploy branch as a static mirror (git's dumb HTTP
//!   layout) for web servers, buckets and CDNs.
//! - [`receipt`]: host receipts: the signed document, the pinned host keys,
//!   the verdict on a receipt read back; [`receipt_bucket`]: the bucket
//!   they are kept in, listed and read.
//! - [`s3`]: S3 as both programs speak it: `s3://` URLs, AWS Signature
//!   Version 4, credentials from the standard places, error documents.
//! - [`pace`]: how often the fleet commands read the forge, to fit the
//!   token's budget.
//! - [`plan`]: the rollout plan (`rollout.toml`): waves of hosts.
//! - [`rollout`]: the wave decision: what a rollout does next.

pub mod allowed_signers;
pub mod approvals;
pub mod fleet;
pub mod forge;
pub mod git;
pub mod hosts_file;
pub mod keys;
pub mod mirror;
pub mod names;
pub mod pace;
pub mod pattern;
pub mod plan;
pub mod publish;
pub mod receipt;
pub mod receipt_bucket;
pub mod release;
pub mod rollout;
pub mod s3;
pub mod ssh_agent;
pub mod sshsig;
pub mod verify;

pub use allowed_signers::{AllowedSigners, AllowedSignersError, Unauthorized};
pub use approvals::{Approval, ApprovalPolicy, Principal, Tally};
pub use names::{CommitId, HostName, StorePath};
pub use release::{Action, HostEntry, Release, ReleaseError, Scope};
pub use verify::{
    verify_commit_signature, verify_release, verify_tip, verify_tip_scoped, Signer, VerifiedRelease,
    VerifiedTip, VerifyError,
};
