//! Validated names that appear in a release: Nix store paths, host names and
//! git commit ids. Each type can only hold a value that passed its check, so
//! the rest of Ferry never re-validates.

use std::fmt;
use std::str::FromStr;

/// The only store directory Ferry deploys to.
pub const STORE_DIR: &str = "/nix/store";

/// Nix's base-32 alphabet (no e, o, u, t).
/// Nix's base-32 alphabet: digits and lower-case letters without e, o, u, t.
fn is_nix32(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

/// A top-level Nix store path: `/nix/store/<32 nix32 characters>-<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a Nix store path ({why}); expected /nix/store/<32 nix32 characters>-<name>")]
pub struct StorePathError {
    value: String,
    why: &'static str,
}

impl StorePath {
    /// The 32-character hash part, e.g. the name of its `.narinfo` in a cache.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..STORE_DIR.len() + 33]
    }

    /// The name after the hash, e.g. `nixos-system-web1-25.11`.
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + 34..]
    }

    /// The base name `<hash>-<name>`, as used in narinfo `References`.
    pub fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }

    /// The full path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a derivation (`….drv`): a build recipe, which
    /// `nix-store --realise` would build, not a built system.
    pub fn is_derivation(&self) -> bool {
        self.0.ends_with(".drv")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| StorePathError {
            value: s.chars().take(120).collect(),
            why,
        };
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| err("not under /nix/store"))?;
        let (hash, name) = base.split_at_checked(32).ok_or_else(|| err("too short"))?;
        if !hash.bytes().all(is_nix32) {
            return Err(err("the hash part is not 32 nix32 characters"));
        }
        let name = name
            .strip_prefix('-')
            .ok_or_else(|| err("no `-` after the hash"))?;
        if name.is_empty() {
            return Err(err("the name is empty"));
        }
        if name.len() > 211 {
            return Err(err("the name is longer than 211 characters"));
        }
        if name.starts_with('.') {
            return Err(err("the name starts with a dot"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'='))
        {
            return Err(err("the name has a character Nix does not allow (or a `/`)"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name as NixOS accepts it for `networking.hostName`: letters, digits,
/// `-` and `_`, at most 63 characters, starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

/// Why a string is not a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid host name: use 1 to 63 letters, digits, `-` or `_`, starting and ending with a letter or digit (as networking.hostName)")]
pub struct HostNameError(String);

impl HostName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = HostNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(HostNameError(s.chars().take(80).collect()))
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full git commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(String);

/// Why a string is not a full commit id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a full git commit id (40 or 64 lowercase hex digits)")]
pub struct CommitIdError(String);

impl CommitId {
    /// The hex id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CommitId {
    type Err = CommitIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (s.len() == 40 || s.len() == 64)
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(CommitIdError(s.chars().take(80).collect()))
        }
    }
}

impl From<git2::Oid> for CommitId {
    fn from(oid: git2::Oid) -> Self {
        Self(oid.to_string())
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn nix32_is_nix_alphabet() {
        let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
        for b in 0..=255u8 {
            assert_eq!(is_nix32(b), alphabet.contains(&b), "byte {b}");
        }
    }

    use super::*;

    const GOOD: &str = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11";

    #[test]
    fn store_path_parts() {
        let p: StorePath = GOOD.parse().unwrap();
        assert_eq!(p.hash_part(), "0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld");
        assert_eq!(p.name(), "nixos-system-web1-25.11");
        assert_eq!(p.base_name(), &GOOD[11..]);
    }

    #[test]
    fn store_path_refusals() {
        for bad in [
            "",
            "/nix/store",
            "/nix/store/",
            "/gnu/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-x",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3l-x",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3le-x", // `e` is not nix32
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld_x",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-.hidden",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-a/bin/sh",
            "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-a b",
            "/nix/store/../etc/0c0mb5j1x3dg5bf3wk3jh4xyz6p-x",
        ] {
            let err = bad.parse::<StorePath>().unwrap_err();
            assert!(err.to_string().contains("expected /nix/store/"), "{bad}: {err}");
        }
        let long = format!("/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-{}", "a".repeat(212));
        assert!(long.parse::<StorePath>().is_err());
    }

    #[test]
    fn host_names() {
        for good in ["web1", "a", "db-01", "Office_PC", &"x".repeat(63)] {
            assert!(good.parse::<HostName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "web.example.com",
            "web 1",
            "wéb",
            &"x".repeat(64),
            "_a",
        ] {
            assert!(bad.parse::<HostName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn commit_ids() {
        assert!("9fceb02d0ae598e95dc970b74767f19372d61af8"
            .parse::<CommitId>()
            .is_ok());
        assert!("9FCEB02D0AE598E95DC970B74767F19372D61AF8"
            .parse::<CommitId>()
            .is_err());
        assert!("9fceb02".parse::<CommitId>().is_err());
        assert!("a".repeat(64).parse::<CommitId>().is_ok());
    }
}
