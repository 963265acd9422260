//! The `[approvals]` section: the two-person rule on this host, validated
//! into `ferry_signer`'s [`ApprovalPolicy`](ferry_signer::ApprovalPolicy).
//! Counting approvals is the signer's `approvals::tally`, the one rule the
//! agent, `verify` and `approve` share; whether a shortfall holds a release
//! back is a row of [`crate::policy::gate`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::value::{absolute, Invalid};

/// The two-person rule on this host: how many distinct people must approve
/// a release before it is deployed here, who they are, and who may release.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApprovalsConfig {
    pub policy: ferry_signer::ApprovalPolicy,
    /// The approvers' keys, when not in `source.allowed_signers`.
    pub allowed_signers: Option<PathBuf>,
}

/// The `[approvals]` section, validated: principals are plain names, and a
/// threshold that no set of approvers could meet is refused.
pub(crate) fn validate(file: ApprovalsFile) -> Result<ApprovalsConfig, Invalid> {
    let principals = |names: Vec<String>, key: &'static str| {
        names
            .iter()
            .map(|n| n.parse::<ferry_signer::Principal>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Invalid::new(key, e.to_string()))
    };
    let approvers = principals(file.approvers, "approvals.approvers")?;
    let releasers = principals(file.releasers, "approvals.releasers")?;
    let policy = ferry_signer::ApprovalPolicy::new(file.required, approvers, releasers)
        .map_err(|e| Invalid::new("approvals.required", e.to_string()))?;
    let allowed_signers = file
        .allowed_signers
        .map(|p| absolute(p, "allowed_signers"))
        .transpose()
        .map_err(|p| Invalid::new("approvals.allowed_signers", p))?;
    Ok(ApprovalsConfig {
        policy,
        allowed_signers,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ApprovalsFile {
    pub(crate) required: usize,
    pub(crate) approvers: Vec<String>,
    pub(crate) releasers: Vec<String>,
    pub(crate) allowed_signers: Option<PathBuf>,
}
