//! Nix binary cache metadata: the `.narinfo` format, the signature fingerprint
//! (`1;<path>;<narHash>;<narSize>;<refs>`), cache public keys (`name:base64`)
//! and the check that a narinfo is signed by a pinned key. No crate does this
//! (the `nix-compat` crate on crates.io is a placeholder), so this module does,
//! and its tests check it against narinfos that real `nix` signed.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use ferry_signer::StorePath;

/// Narinfos larger than this are refused unread.
pub const MAX_NARINFO_BYTES: usize = 1 << 20;

/// Nix's base-32 alphabet.
const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A parsed `.narinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    pub compression: String,
    pub file_size: Option<u64>,
    /// SHA-256 of the uncompressed NAR.
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Referenced store paths, as base names (`<hash>-<name>`).
    pub references: Vec<String>,
    pub deriver: Option<String>,
    /// `name:base64` signatures.
    pub signatures: Vec<String>,
    pub ca: Option<String>,
}

/// Why a narinfo was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    #[error("narinfo is larger than 1 MiB")]
    TooLarge,
    #[error("narinfo is not UTF-8")]
    NotUtf8,
    #[error("narinfo line {line}: expected `Key: value`")]
    Line { line: usize },
    #[error("narinfo has no `{0}` field")]
    Missing(&'static str),
    #[error("narinfo field `{field}` is given twice")]
    Duplicate { field: &'static str },
    #[error("narinfo field `{field}`: {problem}")]
    Field { field: &'static str, problem: String },
}

/// Why a narinfo's signatures do not establish trust.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("{path} is not signed")]
    Unsigned { path: String },
    #[error("{path} is signed only by keys that are not trusted ({names})")]
    UntrustedKeys { path: String, names: String },
    #[error("{path} has a signature by trusted key {name} that does not match its contents")]
    BadSignature { path: String, name: String },
}

impl NarInfo {
    /// Parses narinfo text. Unknown fields are ignored, as Nix does.
    pub fn parse(bytes: &[u8]) -> Result<Self, NarInfoError> {
        if bytes.len() > MAX_NARINFO_BYTES {
            return Err(NarInfoError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| NarInfoError::NotUtf8)?;
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut ca = None;
        let mut signatures = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(": ").ok_or(NarInfoError::Line { line: i + 1 })?;
            fn set<T>(slot: &mut Option<T>, v: T, field: &'static str) -> Result<(), NarInfoError> {
                if slot.replace(v).is_some() {
                    return Err(NarInfoError::Duplicate { field });
                }
                Ok(())
            }
            let field_err = |field: &'static str, problem: String| NarInfoError::Field { field, problem };
            match key {
                "StorePath" => {
                    let p = value
                        .parse::<StorePath>()
                        .map_err(|e| field_err("StorePath", e.to_string()))?;
                    set(&mut store_path, p, "StorePath")?;
                }
                "URL" => set(&mut url, value.to_owned(), "URL")?,
                "Compression" => set(&mut compression, value.to_owned(), "Compression")?,
                "FileSize" => {
                    let n = value
                        .parse()
                        .map_err(|_| field_err("FileSize", format!("`{value}` is not a size")))?;
                    set(&mut file_size, n, "FileSize")?;
                }
                "NarHash" => set(
                    &mut nar_hash,
                    parse_sha256(value).map_err(|p| field_err("NarHash", p))?,
                    "NarHash",
                )?,
                "NarSize" => {
                    let n = value
                        .parse()
                        .map_err(|_| field_err("NarSize", format!("`{value}` is not a size")))?;
                    set(&mut nar_size, n, "NarSize")?;
                }
                "References" => {
                    let refs = value
                        .split_whitespace()
                        .map(|r| {
                            format!("/nix/store/{r}")
                                .parse::<StorePath>()
                                .map(|_| r.to_owned())
                                .map_err(|e| field_err("References", e.to_string()))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    set(&mut references, refs, "References")?;
                }
                "Deriver" => set(&mut deriver, value.to_owned(), "Deriver")?,
                "Sig" => signatures.push(value.to_owned()),
                "CA" => set(&mut ca, value.to_owned(), "CA")?,
                _ => {}
            }
        }
        Ok(NarInfo {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression: compression.unwrap_or_else(|| "bzip2".into()),
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references: references.unwrap_or_default(),
            deriver,
            signatures,
            ca,
        })
    }

    /// The bytes a cache signs: `1;<path>;sha256:<nix32>;<size>;<refs,sorted>`.
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("/nix/store/{r}"))
            .collect();
        refs.sort();
        format!(
            "1;{};sha256:{};{};{}",
            self.store_path,
            nix32_encode(&self.nar_hash),
            self.nar_size,
            refs.join(",")
        )
    }

    /// Succeeds when some signature verifies under a key in `trusted`. A
    /// signature by a trusted key that does not verify is an error even if
    /// another one verifies: it means the narinfo was altered.
    pub fn check_trust<'k>(&self, trusted: &'k [CachePublicKey]) -> Result<&'k CachePublicKey, TrustError> {
        let path = self.store_path.to_string();
        if self.signatures.is_empty() {
            return Err(TrustError::Unsigned { path });
        }
        let fingerprint = self.fingerprint();
        let mut good = None;
        let mut untrusted = Vec::new();
        for sig in &self.signatures {
            let Some((name, b64)) = sig.split_once(':') else {
                untrusted.push(sig.chars().take(40).collect::<String>());
                continue;
            };
            let Some(key) = trusted.iter().find(|k| k.name == name) else {
                untrusted.push(name.to_owned());
                continue;
            };
            let verifies = BASE64
                .decode(b64)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .is_some_and(|s| key.key.verify(fingerprint.as_bytes(), &s).is_ok());
            if !verifies {
                return Err(TrustError::BadSignature {
                    path,
                    name: name.to_owned(),
                });
            }
            good.get_or_insert(key);
        }
        good.ok_or(TrustError::UntrustedKeys {
            path,
            names: untrusted.join(", "),
        })
    }
}

/// A binary cache signing key's public half, as in nix.conf's `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct CachePublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl fmt::Debug for CachePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachePublicKey({self})")
    }
}

impl fmt::Display for CachePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

/// Why a cache public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cache public key: expected name:base64 of 32 bytes, as printed by nix-store --generate-binary-cache-key")]
pub struct CacheKeyError(String);

impl FromStr for CachePublicKey {
    type Err = CacheKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CacheKeyError(s.chars().take(80).collect());
        let (name, b64) = s.trim().split_once(':').ok_or_else(err)?;
        if name.is_empty() {
            return Err(err());
        }
        let bytes: [u8; 32] = BASE64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(err)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| err())?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

/// Parses a SHA-256 in any form Nix writes: `sha256:<nix32>`, `sha256:<hex>`,
/// or SRI `sha256-<base64>`.
fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let bad = || format!("`{s}` is not a sha256 hash");
    let bytes = if let Some(h) = s.strip_prefix("sha256:") {
        match h.len() {
            52 => nix32_decode(h).ok_or_else(bad)?,
            64 => hex_decode(h).ok_or_else(bad)?,
            _ => return Err(bad()),
        }
    } else if let Some(b) = s.strip_prefix("sha256-") {
        BASE64.decode(b).map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    bytes.try_into().map_err(|_| bad())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Nix's base-32 encoding (least significant 5 bits last, its own alphabet).
pub fn nix32_encode(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let b = n * 5;
            let (i, j) = (b / 8, b % 8);
            let low = bytes[i] >> j;
            let high = if i + 1 < bytes.len() {
                bytes[i + 1].checked_shl(8 - j as u32).unwrap_or(0)
            } else {
                0
            };
            NIX32[((low | high) & 0x1f) as usize] as char
        })
        .collect()
}

/// Inverse of [`nix32_encode`]; `None` for bad characters or non-zero padding.
pub fn nix32_decode(s: &str) -> Option<Vec<u8>> {
    let size = s.len() * 5 / 8;
    let mut out = vec![0u8; size];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = NIX32.iter().position(|&x| x == c)? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let v = digit << j;
        if i < size {
            out[i] |= v as u8;
        } else if v & 0xff != 0 {
            return None;
        }
        if i + 1 < size {
            out[i + 1] |= (v >> 8) as u8;
        } else if v >> 8 != 0 {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn sample(refs: &str) -> String {
        format!(
            "StorePath: /nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-web1\nURL: nar/abc.nar.zst\nCompression: zstd\nFileHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0\nFileSize: 100\nNarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0\nNarSize: 200\nReferences: {refs}\nDeriver: x.drv\n"
        )
    }

    #[test]
    fn nix32_known_answers() {
        // sha256("") in Nix's base-32, as `nix hash to-base32` prints it.
        let empty = hex_decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(
            nix32_encode(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(
            nix32_decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").unwrap(),
            empty
        );
        assert_eq!(nix32_encode(&[]), "");
        assert_eq!(nix32_decode("e"), None);
    }

    #[test]
    fn nix32_round_trips() {
        for len in [1usize, 5, 20, 32, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(nix32_decode(&nix32_encode(&bytes)).unwrap(), bytes, "len {len}");
        }
    }

    #[test]
    fn fingerprint_sorts_references_and_renders_nix32() {
        let n = NarInfo::parse(
            sample("zz0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-b 0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-web1").as_bytes(),
        )
        .unwrap();
        assert_eq!(
            n.fingerprint(),
            "1;/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-web1;sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;200;/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-web1,/nix/store/zz0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-b"
        );
        // The same hash in hex and SRI form gives the same fingerprint.
        let hex = sample("").replace(
            "NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0",
            &format!("NarHash: sha256:{}", "ab".repeat(32)),
        );
        let sri = sample("").replace(
            "NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0",
            &format!("NarHash: sha256-{}", BASE64.encode([0xab; 32])),
        );
        assert_eq!(
            NarInfo::parse(hex.as_bytes()).unwrap().fingerprint(),
            NarInfo::parse(sri.as_bytes()).unwrap().fingerprint()
        );
    }

    #[test]
    fn trust_decisions() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let trusted: CachePublicKey = format!("cache-1:{}", BASE64.encode(sk.verifying_key().as_bytes()))
            .parse()
            .unwrap();
        let mut n = NarInfo::parse(sample("").as_bytes()).unwrap();
        assert!(matches!(
            n.check_trust(std::slice::from_ref(&trusted)),
            Err(TrustError::Unsigned { .. })
        ));

        let sig = |k: &SigningKey, name: &str, msg: &str| {
            format!("{name}:{}", BASE64.encode(k.sign(msg.as_bytes()).to_bytes()))
        };
        n.signatures = vec![sig(&other, "stranger-1", &n.fingerprint())];
        let err = n.check_trust(std::slice::from_ref(&trusted)).unwrap_err();
        assert!(err.to_string().contains("not trusted (stranger-1)"), "{err}");

        n.signatures.push(sig(&sk, "cache-1", &n.fingerprint()));
        assert_eq!(
            n.check_trust(std::slice::from_ref(&trusted)).unwrap().name,
            "cache-1"
        );

        // Changing what was signed (the size) breaks the trusted signature.
        n.nar_size += 1;
        assert!(matches!(
            n.check_trust(std::slice::from_ref(&trusted)),
            Err(TrustError::BadSignature { .. })
        ));
        // A trusted name with another key's signature is a bad signature too.
        n.nar_size -= 1;
        n.signatures = vec![sig(&other, "cache-1", &n.fingerprint())];
        assert!(matches!(
            n.check_trust(std::slice::from_ref(&trusted)),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn parse_refusals() {
        let no_hash = sample("").replace(
            "NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0\n",
            "",
        );
        assert_eq!(
            NarInfo::parse(no_hash.as_bytes()),
            Err(NarInfoError::Missing("NarHash"))
        );
        assert!(matches!(
            NarInfo::parse(b"StorePath /nix/store/x\n"),
            Err(NarInfoError::Line { line: 1 })
        ));
        let bad_path = sample("").replace("0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-web1\n", "etc-passwd\n");
        assert!(matches!(
            NarInfo::parse(bad_path.as_bytes()),
            Err(NarInfoError::Field {
                field: "StorePath",
                ..
            })
        ));
        let bad_ref = sample("../../etc");
        assert!(matches!(
            NarInfo::parse(bad_ref.as_bytes()),
            Err(NarInfoError::Field {
                field: "References",
                ..
            })
        ));
        let dup = format!("{}NarSize: 3\n", sample(""));
        assert_eq!(
            NarInfo::parse(dup.as_bytes()),
            Err(NarInfoError::Duplicate { field: "NarSize" })
        );
        assert_eq!(
            NarInfo::parse(&vec![b'a'; MAX_NARINFO_BYTES + 1]),
            Err(NarInfoError::TooLarge)
        );
    }

    #[test]
    fn cache_keys() {
        let k: CachePublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
            .parse()
            .unwrap();
        assert_eq!(k.name, "cache.nixos.org-1");
        assert_eq!(
            k.to_string(),
            "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
        );
        for bad in ["nocolon", ":AAAA", "n:short", "n:!!!!"] {
            assert!(bad.parse::<CachePublicKey>().is_err(), "{bad}");
        }
    }
}
