//! Everything the release format needs from git, through libgit2: reading
//! `release.toml` from a commit without inflating oversize blobs, splitting a
//! commit into its SSH signature and signed payload, and writing a signed
//! commit onto a branch without a work tree.

use chrono::{DateTime, Utc};
use git2::{ErrorCode, ObjectType, Oid, Repository};

use crate::release::{Release, ReleaseError, Scope, MAX_RELEASE_BYTES, RELEASE_FILE};

/// Why reading from the repository failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`{rev}` does not name a commit in {repo}: {source}")]
    Rev {
        rev: String,
        repo: String,
        source: git2::Error,
    },
    #[error("commit {commit} has no {RELEASE_FILE} at the top of its tree: it is not a release")]
    NoReleaseFile { commit: Oid },
    #[error("{RELEASE_FILE} in commit {commit} is not a regular file")]
    ReleaseNotBlob { commit: Oid },
    #[error("commit {commit}: {source}")]
    Release {
        commit: Oid,
        #[source]
        source: ReleaseError,
    },
    #[error("branch {branch} moved while the release was being made (expected {expected}, found {found}): fetch and try again")]
    Raced {
        branch: String,
        expected: String,
        found: String,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// Resolves `rev` (a branch, tag, or commit id) to a commit.
pub fn resolve_commit(repo: &Repository, rev: &str) -> Result<Oid, GitError> {
    let rev_err = |source| GitError::Rev {
        rev: rev.to_owned(),
        repo: repo.path().display().to_string(),
        source,
    };
    let object = repo.revparse_single(rev).map_err(rev_err)?;
    let commit = object.peel_to_commit().map_err(rev_err)?;
    Ok(commit.id())
}

/// Reads and parses `release.toml` from `commit`. The blob's size is read from
/// its header first, so an oversize file is refused without being inflated.
pub fn read_release(repo: &Repository, commit: Oid) -> Result<Release, GitError> {
    read_release_scoped(repo, commit, Scope::Fleet)
}

/// [`read_release`] keeping the entries `scope` asks for
/// ([`Release::parse_scoped`]).
pub fn read_release_scoped(repo: &Repository, commit: Oid, scope: Scope<'_>) -> Result<Release, GitError> {
    let bytes = read_release_bytes(repo, commit)?;
    Release::parse_scoped(&bytes, scope).map_err(|source| GitError::Release { commit, source })
}

/// The raw bytes of `release.toml` in `commit`, size-limited.
pub fn read_release_bytes(repo: &Repository, commit: Oid) -> Result<Vec<u8>, GitError> {
    let tree = repo.find_commit(commit)?.tree()?;
    let entry = tree
        .get_name(RELEASE_FILE)
        .ok_or(GitError::NoReleaseFile { commit })?;
    if entry.kind() != Some(ObjectType::Blob) {
        return Err(GitError::ReleaseNotBlob { commit });
    }
    let (size, _) = repo.odb()?.read_header(entry.id())?;
    if size > MAX_RELEASE_BYTES {
        return Err(GitError::Release {
            commit,
            source: ReleaseError::TooLarge { size: size as u64 },
        });
    }
    Ok(repo.find_blob(entry.id())?.content().to_vec())
}

/// A commit split into what was signed and the signature over it.
#[derive(Debug)]
pub struct SignedCommit {
    /// The armored signature from the `gpgsig` header.
    pub signature: Vec<u8>,
    /// The commit object without its `gpgsig` header: the bytes that were signed.
    pub payload: Vec<u8>,
    /// The committer time, against which `git verify-commit` checks key validity.
    pub committed_at: DateTime<Utc>,
}

/// Splits `commit` into signature and payload; `Ok(None)` when it is unsigned.
pub fn signed_commit(repo: &Repository, commit: Oid) -> Result<Option<SignedCommit>, GitError> {
    let committed_at = {
        let c = repo.find_commit(commit)?;
        let seconds = c.committer().when().seconds();
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    };
    match repo.extract_signature(&commit, None) {
        Ok((signature, payload)) => Ok(Some(SignedCommit {
            signature: signature.to_vec(),
            payload: payload.to_vec(),
            committed_at,
        })),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a commit object from `payload` and its armored `signature` in a
/// `gpgsig` header, exactly as `git commit -S` lays it out.
pub fn write_signed_commit(repo: &Repository, payload: &str, signature: &str) -> Result<Oid, GitError> {
    Ok(repo.commit_signed(payload, signature.trim_end(), Some("gpgsig"))?)
}

/// Moves `refs/heads/<branch>` from `expected` (None: the branch must not exist
/// yet) to `new`, refusing if someone else moved it in the meantime.
pub fn advance_branch(
    repo: &Repository,
    branch: &str,
    expected: Option<Oid>,
    new: Oid,
    log_message: &str,
) -> Result<(), GitError> {
    let name = format!("refs/heads/{branch}");
    let result = match expected {
        Some(old) => repo.reference_matching(&name, new, true, old, log_message),
        None => repo.reference(&name, new, false, log_message),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
            let found = repo
                .refname_to_id(&name)
                .map(|o| o.to_string())
                .unwrap_or_else(|_| "no branch".into());
            Err(GitError::Raced {
                branch: branch.to_owned(),
                expected: expected
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "no branch".into()),
                found,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The commit `refs/heads/<branch>` points at, if the branch exists.
pub fn branch_tip(repo: &Repository, branch: &str) -> Result<Option<Oid>, GitError> {
    match repo.refname_to_id(&format!("refs/heads/{branch}")) {
        Ok(oid) => Ok(Some(oid)),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
