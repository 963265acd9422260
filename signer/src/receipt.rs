//! Host receipts: what a host says about a release, signed with its own SSH
//! host key, so a fleet's health can be read from object storage without
//! trusting whoever may write there. A receipt is a small line-based
//! document (release, source, host, state, time, the toplevel it runs, the
//! boot, a description) followed by an SSHSIG signature over exactly those
//! bytes in Ferry's own namespace [`NAMESPACE`] — what `ssh-keygen -Y sign
//! -n ferry-receipt-v1` makes and `ssh-keygen -Y verify` checks. The agent
//! writes one object per host and release (`<prefix>/<release>/<host>`,
//! [`object_key`]); the fleet commands read them back and judge each with
//! [`verify`] against the pinned host keys ([`HostKeys`], the lines
//! `ssh-keyscan` prints), so a receipt is either genuine or forged, never
//! taken on trust. Parsing is strict and bounded (fuzzed).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};

use crate::forge::StatusState;
use crate::names::{CommitId, HostName, StorePath};
use crate::sshsig::SshSignature;

/// The SSHSIG namespace receipts are signed in: a signature made for git
/// (or anything else) is never a receipt, and a receipt never a commit
/// signature.
pub const NAMESPACE: &str = "ferry-receipt-v1";

/// A whole receipt object (document and signature) longer than this is
/// forged by definition: nothing more is read.
pub const MAX_RECEIPT_BYTES: usize = 8 * 1024;

/// The longest description a receipt carries (a commit status's limit).
pub const MAX_DESCRIPTION_CHARS: usize = crate::forge::MAX_DESCRIPTION_CHARS;

/// A host-keys file longer than this is refused before parsing (room for
/// well over 10,000 hosts with an ed25519 key each).
pub const MAX_HOST_KEYS_BYTES: usize = 16 << 20;

/// The first line of every receipt: the format and its version.
const MAGIC: &str = "ferry-receipt 1";
const ARMOR_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";

/// What one host says about one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The release commit (the key of the object names it too).
    pub release: CommitId,
    /// The release's source commit, if it names one.
    pub source: Option<CommitId>,
    pub host: HostName,
    /// Where the deploy stands: pending, success, failure or error.
    pub state: StatusState,
    /// When the host wrote it (whole seconds, UTC).
    pub time: DateTime<Utc>,
    /// The system the host ran when it wrote it.
    pub toplevel: Option<StorePath>,
    /// The boot it ran in (`/proc/sys/kernel/random/boot_id`).
    pub boot: Option<String>,
    /// The words of the status (one line, at most 140 characters).
    pub description: String,
}

/// Why bytes are not a receipt document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("longer than {MAX_RECEIPT_BYTES} bytes")]
    TooLong,
    #[error("not UTF-8 text")]
    NotText,
    #[error("no signature: a receipt ends with `{ARMOR_BEGIN}` … (as `ssh-keygen -Y sign` writes it)")]
    Unsigned,
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
}

impl Receipt {
    /// The document as signed: one `key value` line each, in this order.
    pub fn render(&self) -> String {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "{MAGIC}\nrelease {}\nsource {}\nhost {}\nstate {}\ntime {}\ntoplevel {}\nboot {}\ndescription {}\n",
            self.release,
            or_dash(self.source.as_ref().map(ToString::to_string)),
            self.host,
            self.state.as_str(),
            self.time.to_rfc3339_opts(SecondsFormat::Secs, true),
            or_dash(self.toplevel.as_ref().map(ToString::to_string)),
            or_dash(self.boot.clone()),
            one_line(&self.description),
        )
    }

    /// Parses a document as [`Receipt::render`] writes it, and nothing else:
    /// every line present, in order, each value valid.
    pub fn parse(text: &str) -> Result<Self, DocumentError> {
        if text.len() > MAX_RECEIPT_BYTES {
            return Err(DocumentError::TooLong);
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err(DocumentError::Line {
                line: text.lines().count().max(1),
                problem: "the document does not end with a newline".into(),
            });
        };
        let total = body.split('\n').count();
        let mut lines = body.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        let bad = |line: usize, problem: String| DocumentError::Line { line, problem };
        match lines.next() {
            Some((_, MAGIC)) => {}
            Some((n, other)) => {
                return Err(bad(
                    n,
                    format!(
                        "`{}` is not `{MAGIC}`: not a Ferry receipt, or a newer format",
                        printable(other)
                    ),
                ))
            }
            None => return Err(bad(1, "empty".into())),
        }
        let mut field = |key: &str| -> Result<(usize, &str), DocumentError> {
            let (n, line) = lines
                .next()
                .ok_or_else(|| bad(total + 1, format!("`{key}` is missing (the document ends early)")))?;
            match line.split_once(' ') {
                Some((k, v)) if k == key => Ok((n, v)),
                _ => Err(bad(n, format!("expected `{key} …`, found `{}`", printable(line)))),
            }
        };
        fn optional((n, v): (usize, &str)) -> Option<(usize, &str)> {
            (v != "-").then_some((n, v))
        }
        let commit = |(n, v): (usize, &str), what: &str| {
            v.parse::<CommitId>()
                .map_err(|_| bad(n, format!("{what} `{}` is not a commit id", printable(v))))
        };
        let release = commit(field("release")?, "release")?;
        let source = optional(field("source")?)
            .map(|f| commit(f, "source"))
            .transpose()?;
        let (n, host) = field("host")?;
        let host = host
            .parse::<HostName>()
            .map_err(|_| bad(n, format!("`{}` is not a host name", printable(host))))?;
        let (n, state) = field("state")?;
        let state = StatusState::parse(state).ok_or_else(|| {
            bad(
                n,
                format!(
                    "state `{}` is not pending, success, failure or error",
                    printable(state)
                ),
            )
        })?;
        let (n, time) = field("time")?;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|_| bad(n, format!("time `{}` is not an RFC 3339 time", printable(time))))?
            .with_timezone(&Utc);
        let toplevel = optional(field("toplevel")?)
            .map(|(n, v)| {
                v.parse::<StorePath>()
                    .map_err(|_| bad(n, format!("toplevel `{}` is not a store path", printable(v))))
            })
            .transpose()?;
        let boot = optional(field("boot")?)
            .map(|(n, v)| {
                let ok = v.len() <= 64 && v.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
                ok.then(|| v.to_owned())
                    .ok_or_else(|| bad(n, format!("boot `{}` is not a boot id", printable(v))))
            })
            .transpose()?;
        let (n, description) = field("description")?;
        if description.chars().count() > MAX_DESCRIPTION_CHARS || description.chars().any(char::is_control) {
            return Err(bad(
                n,
                format!("the description is longer than {MAX_DESCRIPTION_CHARS} characters or not one line"),
            ));
        }
        if let Some((n, extra)) = lines.next() {
            return Err(bad(
                n,
                format!("unexpected `{}` after the description", printable(extra)),
            ));
        }
        Ok(Self {
            release,
            source,
            host,
            state,
            time,
            toplevel,
            boot,
            description: description.to_owned(),
        })
    }

    /// The receipt signed with `key` (the host's SSH host key): the object
    /// to store, document then signature.
    pub fn sign(&self, key: &ssh_key::PrivateKey) -> Result<Vec<u8>, ssh_key::Error> {
        let document = self.render();
        let armor = crate::sshsig::sign_in(key, NAMESPACE, document.as_bytes())?;
        let mut object = document.into_bytes();
        object.extend_from_slice(armor.as_bytes());
        Ok(object)
    }
}

/// Why a host key cannot sign receipts. Never holds the key's contents.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read the host key {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the host key {path} is not an OpenSSH private key ({detail})")]
    NotAKey { path: String, detail: String },
    #[error("the host key {path} is encrypted; host keys are not: name the host's own key")]
    Encrypted { path: String },
    #[error("the host key {path} is {algorithm}: receipts are signed with the host's ed25519 key (/etc/ssh/ssh_host_ed25519_key, which NixOS and OpenSSH make by default)")]
    NotEd25519 { path: String, algorithm: String },
}

/// The host's private SSH key at `path` (unencrypted, as host keys are).
pub fn load_host_key(path: &Path) -> Result<ssh_key::PrivateKey, HostKeyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| HostKeyError::Read {
        path: name.clone(),
        source,
    })?;
    let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|e| HostKeyError::NotAKey {
        path: name.clone(),
        detail: e.to_string(),
    })?;
    if key.is_encrypted() {
        return Err(HostKeyError::Encrypted { path: name });
    }
    // The signing this crate builds does ed25519 in memory; receipts made
    // with other key types (by ssh-keygen) still verify.
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(HostKeyError::NotEd25519 {
            path: name,
            algorithm: key.algorithm().to_string(),
        });
    }
    Ok(key)
}

/// The object key of `host`'s receipt for `release` under `prefix`.
pub fn object_key(prefix: &str, release: &CommitId, host: &HostName) -> String {
    format!("{}{release}/{host}", key_prefix(prefix))
}

/// The key prefix every receipt of `release` is under (what a listing asks for).
pub fn release_prefix(prefix: &str, release: &CommitId) -> String {
    format!("{}{release}/", key_prefix(prefix))
}

fn key_prefix(prefix: &str) -> String {
    match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    }
}

/// A receipt object split into the document and its armored signature.
pub fn split(object: &[u8]) -> Result<(&[u8], &[u8]), DocumentError> {
    if object.len() > MAX_RECEIPT_BYTES {
        return Err(DocumentError::TooLong);
    }
    let text = std::str::from_utf8(object).map_err(|_| DocumentError::NotText)?;
    let at = if text.starts_with(ARMOR_BEGIN) {
        Some(0)
    } else {
        text.find(&format!("\n{ARMOR_BEGIN}")).map(|i| i + 1)
    };
    let at = at.ok_or(DocumentError::Unsigned)?;
    Ok((&object[..at], &object[at..]))
}

/// The SSH host keys pinned for each host: the `<host> <key type> <base64>
/// [comment]` lines `ssh-keyscan` prints, `#` comments and blank lines
/// ignored. A host may have several keys (while one replaces another).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostKeys {
    keys: BTreeMap<HostName, Vec<KeyData>>,
}

/// Why a host-keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostKeysError {
    #[error("cannot read the host-keys file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the host-keys file {path} is larger than {MAX_HOST_KEYS_BYTES} bytes")]
    TooLarge { path: String },
    #[error("host-keys file {path}, line {line}: {problem}")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
}

impl HostKeys {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, HostKeysError> {
        let name = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|source| HostKeysError::Read {
                path: name.clone(),
                source,
            })?
            .len();
        if size > MAX_HOST_KEYS_BYTES as u64 {
            return Err(HostKeysError::TooLarge { path: name });
        }
        let text = std::fs::read_to_string(path).map_err(|source| HostKeysError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, problem)| HostKeysError::Line {
            path: name,
            line,
            problem,
        })
    }

    /// Parses the lines; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        if text.len() > MAX_HOST_KEYS_BYTES {
            return Err((0, format!("larger than {MAX_HOST_KEYS_BYTES} bytes")));
        }
        let mut keys: BTreeMap<HostName, Vec<KeyData>> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(hosts), Some(kind), Some(base64)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err((
                    n,
                    "expected `<host> <key type> <base64 key>` (as ssh-keyscan prints it)".into(),
                ));
            };
            if hosts.starts_with('|') {
                return Err((
                    n,
                    "hashed host names cannot be matched to a release's hosts: run ssh-keyscan without -H"
                        .into(),
                ));
            }
            let key = PublicKey::from_openssh(&format!("{kind} {base64}"))
                .map_err(|e| (n, format!("`{}` is not an SSH public key ({e})", printable(kind))))?;
            for host in hosts.split(',') {
                let name = host.parse::<HostName>().map_err(|_| {
                    (
                        n,
                        format!(
                            "`{}` is not a host name of a release (the name in the hosts file, not an address)",
                            printable(host)
                        ),
                    )
                })?;
                let list = keys.entry(name).or_default();
                if !list.contains(key.key_data()) {
                    list.push(key.key_data().clone());
                }
            }
        }
        Ok(Self { keys })
    }

    /// The keys pinned for `host`.
    pub fn of(&self, host: &HostName) -> &[KeyData] {
        self.keys.get(host).map_or(&[], Vec::as_slice)
    }

    /// How many hosts have a key.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no host has a key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a receipt read from the bucket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by a key pinned for its host, about the release it is stored under.
    Genuine(Receipt),
    /// Anything else: never counted as what it claims.
    Forged(Forgery),
}

/// Why a receipt is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forgery {
    #[error("forged: unreadable receipt ({0})")]
    Unreadable(String),
    #[error("forged: no host key is pinned for {host} (add it to the host-keys file)")]
    NoKeyPinned { host: HostName },
    #[error("forged: signed by {fingerprint}, which is not a key pinned for {host}")]
    NotHostKey { host: HostName, fingerprint: String },
    #[error("forged: the signature does not match the receipt ({0})")]
    BadSignature(String),
    #[error("forged: a receipt about release {release} replayed under another release")]
    OtherRelease { release: CommitId },
    #[error("forged: a receipt of host {claimed} stored as {host}'s")]
    OtherHost { host: HostName, claimed: HostName },
}

/// Judges `object`, read from the key of `host`'s receipt for `release`,
/// against the keys pinned for that host: the signature first (its key must
/// be one pinned for `host`, its namespace [`NAMESPACE`]), then the
/// document, which must name this host and this release. Pure.
pub fn verify(object: &[u8], release: &CommitId, host: &HostName, keys: &HostKeys) -> Verdict {
    let forged = Verdict::Forged;
    let (document, armor) = match split(object) {
        Ok(parts) => parts,
        Err(e) => return forged(Forgery::Unreadable(e.to_string())),
    };
    let signature = match SshSignature::from_armor_in(armor, NAMESPACE) {
        Ok(s) => s,
        Err(e) => return forged(Forgery::BadSignature(e.to_string())),
    };
    let pinned = keys.of(host);
    if pinned.is_empty() {
        return forged(Forgery::NoKeyPinned { host: host.clone() });
    }
    if !pinned.contains(&signature.public_key) {
        return forged(Forgery::NotHostKey {
            host: host.clone(),
            fingerprint: signature.public_key.fingerprint(HashAlg::Sha256).to_string(),
        });
    }
    if let Err(e) = signature.verify(document) {
        return forged(Forgery::BadSignature(e.to_string()));
    }
    let text = std::str::from_utf8(document).expect("split checked UTF-8");
    let receipt = match Receipt::parse(text) {
        Ok(r) => r,
        Err(e) => return forged(Forgery::Unreadable(e.to_string())),
    };
    if receipt.host != *host {
        return forged(Forgery::OtherHost {
            host: host.clone(),
            claimed: receipt.host,
        });
    }
    if receipt.release != *release {
        return forged(Forgery::OtherRelease {
            release: receipt.release,
        });
    }
    Verdict::Genuine(receipt)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Genuine(r) => write!(f, "{}: {}", r.state.as_str(), r.description),
            Verdict::Forged(why) => write!(f, "{why}"),
        }
    }
}

/// A description on one line: control characters (newlines) become spaces,
/// cut to [`MAX_DESCRIPTION_CHARS`].
fn one_line(s: &str) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= MAX_DESCRIPTION_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Untrusted text as it may be shown: control characters escaped, cut short.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn receipt(host: &str, state: StatusState) -> Receipt {
        Receipt {
            release: "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            source: Some("1111111111111111111111111111111111111111".parse().unwrap()),
            host: host.parse().unwrap(),
            state,
            time: "2026-12-06T10:00:00Z".parse().unwrap(),
            toplevel: Some(
                format!("/nix/store/{}-nixos-system-{host}", "a".repeat(32))
                    .parse()
                    .unwrap(),
            ),
            boot: Some("0f8e4a3c-2b1d-4c5e-9f60-718293a4b5c6".into()),
            description: "deployed release 3".into(),
        }
    }

    fn key() -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap()
    }

    fn pinned(host: &str, key: &ssh_key::PrivateKey) -> HostKeys {
        HostKeys::parse(&format!("{host} {}\n", key.public_key().to_openssh().unwrap())).unwrap()
    }

    #[test]
    fn the_document_is_exactly_this() {
        let r = receipt("web1", StatusState::Success);
        assert_eq!(
            r.render(),
            format!(
                "ferry-receipt 1\nrelease 9fceb02d0ae598e95dc970b74767f19372d61af8\n\
                 source 1111111111111111111111111111111111111111\nhost web1\nstate success\n\
                 time 2026-12-06T10:00:00Z\ntoplevel /nix/store/{}-nixos-system-web1\n\
                 boot 0f8e4a3c-2b1d-4c5e-9f60-718293a4b5c6\ndescription deployed release 3\n",
                "a".repeat(32)
            )
        );
        assert_eq!(Receipt::parse(&r.render()).unwrap(), r);
        let bare = Receipt {
            source: None,
            toplevel: None,
            boot: None,
            description: "line\none".into(),
            ..r
        };
        assert!(bare.render().contains("source -\n"));
        assert_eq!(Receipt::parse(&bare.render()).unwrap().description, "line one");
    }

    #[test]
    fn bad_documents_name_the_line() {
        let good = receipt("web1", StatusState::Pending).render();
        let cases = [
            (
                good.replace("ferry-receipt 1", "ferry-receipt 2"),
                1,
                "not a Ferry receipt",
            ),
            (
                good.replace("state pending", "state done"),
                5,
                "not pending, success",
            ),
            (good.replace("host web1", "host web 1"), 4, "not a host name"),
            (good.replace("time 2026", "time 1926x"), 6, "RFC 3339"),
            (good.replace("source 1111", "source zzzz"), 3, "not a commit id"),
            (good.replace("boot 0f8e", "boot ../x"), 8, "not a boot id"),
            (good.replace("release ", "commit "), 2, "expected `release …`"),
            (format!("{good}extra\n"), 10, "unexpected `extra`"),
        ];
        for (text, line, words) in cases {
            match Receipt::parse(&text) {
                Err(DocumentError::Line { line: l, problem }) => {
                    assert_eq!(l, line, "{problem}");
                    assert!(problem.contains(words), "{problem}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(Receipt::parse(good.trim_end()).is_err());
        assert!(Receipt::parse(&good[..good.len() / 2]).is_err());
        assert_eq!(
            Receipt::parse(&"x".repeat(MAX_RECEIPT_BYTES + 1)),
            Err(DocumentError::TooLong)
        );
    }

    #[test]
    fn genuine_and_forged_receipts() {
        let (web1_key, other_key) = (key(), key());
        let keys = pinned("web1", &web1_key);
        let r = receipt("web1", StatusState::Success);
        let release = r.release.clone();
        let host: HostName = "web1".parse().unwrap();
        let object = r.sign(&web1_key).unwrap();
        assert_eq!(
            verify(&object, &release, &host, &keys),
            Verdict::Genuine(r.clone())
        );

        // Signed by another key.
        let other = r.sign(&other_key).unwrap();
        assert!(matches!(
            verify(&other, &release, &host, &keys),
            Verdict::Forged(Forgery::NotHostKey { .. })
        ));
        // No key pinned for the host.
        let web2: HostName = "web2".parse().unwrap();
        assert_eq!(
            verify(&object, &release, &web2, &keys),
            Verdict::Forged(Forgery::NoKeyPinned { host: web2.clone() })
        );
        // Stored under another host's key, with both pinned.
        let both = HostKeys::parse(&format!(
            "web1 {}\nweb2 {}\n",
            web1_key.public_key().to_openssh().unwrap(),
            web1_key.public_key().to_openssh().unwrap()
        ))
        .unwrap();
        assert!(matches!(
            verify(&object, &release, &web2, &both),
            Verdict::Forged(Forgery::OtherHost { .. })
        ));
        // Replayed under another release.
        let newer: CommitId = "2222222222222222222222222222222222222222".parse().unwrap();
        let v = verify(&object, &newer, &host, &keys);
        assert_eq!(
            v,
            Verdict::Forged(Forgery::OtherRelease {
                release: release.clone()
            })
        );
        assert!(v.to_string().contains("replayed"), "{v}");
        // Edited after signing: a failure made a success.
        let failed = receipt("web1", StatusState::Failure).sign(&web1_key).unwrap();
        let edited = String::from_utf8(failed)
            .unwrap()
            .replace("state failure", "state success");
        assert!(matches!(
            verify(edited.as_bytes(), &release, &host, &keys),
            Verdict::Forged(Forgery::BadSignature(_))
        ));
        // A signature for git is not a receipt's.
        let document = r.render();
        let git = crate::sshsig::sign_git(&web1_key, document.as_bytes()).unwrap();
        let v = verify(format!("{document}{git}").as_bytes(), &release, &host, &keys);
        assert!(
            matches!(&v, Verdict::Forged(Forgery::BadSignature(why)) if why.contains("ferry-receipt-v1")),
            "{v:?}"
        );
        // Unsigned, empty, binary, huge.
        for junk in [
            document.as_bytes(),
            b"",
            b"\xff\xfe",
            &[b'a'; MAX_RECEIPT_BYTES + 1][..],
        ] {
            assert!(matches!(
                verify(junk, &release, &host, &keys),
                Verdict::Forged(Forgery::Unreadable(_))
            ));
        }
    }

    #[test]
    fn host_keys_are_ssh_keyscan_lines() {
        let k = key();
        let line = k.public_key().to_openssh().unwrap();
        let keys = HostKeys::parse(&format!(
            "# web1:22 SSH-2.0-OpenSSH_9.6\nweb1 {line}\n\nweb2,web3 {line} root@web2\nweb1 {line}\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.of(&"web1".parse().unwrap()).len(), 1);
        assert!(keys.of(&"db1".parse().unwrap()).is_empty());
        for (text, words) in [
            ("web1\n", "expected `<host> <key type>"),
            ("|1|abc= ssh-ed25519 AAAA\n", "without -H"),
            ("web1 ssh-ed25519 notbase64\n", "not an SSH public key"),
            (&format!("web 1 {line}\n"), "not an SSH public key"),
            (&format!("-web1 {line}\n"), "not a host name"),
        ] {
            let (n, problem) = HostKeys::parse(text).unwrap_err();
            assert_eq!(n, 1);
            assert!(problem.contains(words), "{text}: {problem}");
        }
    }

    #[test]
    fn host_keys_are_read_or_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh_host_ed25519_key");
        let missing = load_host_key(&path).unwrap_err().to_string();
        assert!(missing.contains("ssh_host_ed25519_key"), "{missing}");
        std::fs::write(&path, "not a key").unwrap();
        let bad = load_host_key(&path).unwrap_err().to_string();
        assert!(bad.contains("not an OpenSSH private key"), "{bad}");
        assert!(
            !bad.contains("not a key"),
            "the file's contents are never shown: {bad}"
        );
        let k = key();
        std::fs::write(&path, k.to_openssh(ssh_key::LineEnding::LF).unwrap().as_bytes()).unwrap();
        assert_eq!(load_host_key(&path).unwrap().public_key(), k.public_key());
    }

    #[test]
    fn keys_group_under_the_prefix() {
        let release: CommitId = "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap();
        let host: HostName = "web1".parse().unwrap();
        assert_eq!(
            object_key("/fleet/receipts/", &release, &host),
            "fleet/receipts/9fceb02d0ae598e95dc970b74767f19372d61af8/web1"
        );
        assert_eq!(object_key("", &release, &host), format!("{release}/web1"));
        assert_eq!(release_prefix("r", &release), format!("r/{release}/"));
    }
}
