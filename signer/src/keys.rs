//! The release signing key: an ed25519 OpenSSH private key, stored encrypted
//! with age (to recipients or under a passphrase) or, for keys made by
//! `ssh-keygen`, as a plain OpenSSH file. The key never appears in logs or
//! `Debug` output, and its memory is zeroed on drop by `ssh-key`.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::SecretString;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

const AGE_ARMOR: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const AGE_BINARY: &str = "age-encryption.org/";
const OPENSSH: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
/// Key files larger than this are not keys.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A release signing key.
pub struct SigningKey(PrivateKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, secret redacted)", self.fingerprint())
    }
}

/// How to protect a new key, or how to unlock an existing one.
#[derive(Debug)]
pub enum Protection {
    /// Encrypt to these age recipients (`age1…`).
    Recipients(Vec<age::x25519::Recipient>),
    /// Encrypt under a passphrase (age's scrypt).
    Passphrase(SecretString),
}

/// What may unlock an age-encrypted key.
#[derive(Debug, Default)]
pub struct Unlock {
    /// age identity files (`AGE-SECRET-KEY-1…` lines), tried in order.
    pub identity_files: Vec<PathBuf>,
    /// Asked for only when the key is passphrase-encrypted.
    pub passphrase: Option<Box<dyn PassphraseSource>>,
}

/// Supplies a passphrase on demand (environment, terminal, test).
pub trait PassphraseSource: fmt::Debug {
    /// Returns the passphrase, or why none could be had.
    fn passphrase(&self) -> Result<SecretString, KeyError>;
}

/// Why a key could not be made, written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: refusing to overwrite a key; choose another --out or remove it first")]
    Exists { path: PathBuf },
    #[error("{path} is not a Ferry or OpenSSH private key (expected an age-encrypted key from `ferry-signer keygen` or an OpenSSH key from `ssh-keygen -t ed25519`)")]
    UnknownFormat { path: PathBuf },
    #[error("{path} is an OpenSSH key protected by an ssh passphrase, which ferry-signer does not read: remove it with `ssh-keygen -p -N '' -f {path}` and protect the file with age instead")]
    SshEncrypted { path: PathBuf },
    #[error("{path} is a {algorithm} key; key files are read only for ed25519 (ferry-signer keygen, ssh-keygen -t ed25519); to sign with an ECDSA, RSA or hardware key, add it to ssh-agent and pass --ssh-agent")]
    Algorithm { path: PathBuf, algorithm: String },
    #[error("{path}: the key is encrypted to age recipients, but no --identity was given")]
    NoIdentity { path: PathBuf },
    #[error("{path}: none of the given age identities can decrypt this key (wrong --identity?)")]
    WrongIdentity { path: PathBuf },
    #[error("{path}: wrong passphrase")]
    WrongPassphrase { path: PathBuf },
    #[error("no passphrase available: set FERRY_SIGNER_PASSPHRASE or run on a terminal")]
    NoPassphrase,
    #[error("cannot read age identity file {path}: {source}")]
    Identity { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot decrypt: {detail}")]
    Decrypt { path: PathBuf, detail: String },
    #[error("{path}: the decrypted content is not an OpenSSH private key")]
    NotAKey { path: PathBuf },
    #[error("`{0}` is not an age recipient (expected age1…)")]
    Recipient(String),
    #[error("key encoding: {0}")]
    Encoding(#[from] ssh_key::Error),
    #[error("age encryption: {0}")]
    Encrypt(String),
}

impl crate::sshsig::GitSigner for SigningKey {
    fn public_key(&self) -> PublicKey {
        SigningKey::public_key(self)
    }

    fn sign_git(&self, payload: &[u8]) -> Result<String, crate::sshsig::SignError> {
        Ok(crate::sshsig::sign_git(&self.0, payload)?)
    }
}

impl SigningKey {
    /// Generates a new ed25519 key.
    pub fn generate(comment: &str) -> Result<Self, KeyError> {
        let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)?;
        key.set_comment(comment);
        Ok(Self(key))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.0.public_key().clone()
    }

    /// `SHA256:…` fingerprint, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The key for signing.
    pub fn private_key(&self) -> &PrivateKey {
        &self.0
    }

    /// The OpenSSH public key line, e.g. `ssh-ed25519 AAAA… comment`.
    pub fn public_line(&self) -> String {
        self.0
            .public_key()
            .to_openssh()
            .expect("ed25519 public keys encode")
    }

    /// A ready `allowed_signers` line for this key.
    pub fn allowed_signers_line(&self, principal: &str) -> String {
        let key = self.0.public_key();
        let bare = PublicKey::new(key.key_data().clone(), "");
        format!(
            "{principal} namespaces=\"git\" {}",
            bare.to_openssh().expect("ed25519 public keys encode")
        )
    }

    /// Serialises the key encrypted with age, ASCII-armored.
    pub fn to_age(&self, protection: &Protection) -> Result<Vec<u8>, KeyError> {
        let plain = self.0.to_openssh(LineEnding::LF)?;
        let encryptor = match protection {
            Protection::Recipients(recipients) => {
                age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| KeyError::Encrypt(e.to_string()))?
            }
            Protection::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
        };
        let mut out = Vec::new();
        let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        let mut writer = encryptor
            .wrap_output(armor)
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        writer
            .write_all(plain.as_bytes())
            .and_then(|_| writer.finish())
            .and_then(|armor| armor.finish())
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        Ok(out)
    }

    /// Writes the age-encrypted key to `path` (mode 0600, never overwriting)
    /// and the public key to `path.pub`.
    pub fn write_new(&self, path: &Path, protection: &Protection) -> Result<PathBuf, KeyError> {
        let pub_path = PathBuf::from(format!("{}.pub", path.display()));
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(KeyError::Exists { path: p.to_owned() });
            }
        }
        let encrypted = self.to_age(protection)?;
        write_exclusive(path, &encrypted, 0o600)?;
        write_exclusive(&pub_path, format!("{}\n", self.public_line()).as_bytes(), 0o644)?;
        Ok(pub_path)
    }

    /// Loads a key file: age-encrypted (unlocked with `unlock`) or a plain
    /// OpenSSH ed25519 key.
    pub fn load(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_KEY_FILE_BYTES {
            return Err(KeyError::UnknownFormat {
                path: path.to_owned(),
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
            .trim_start()
            .to_owned();
        let encrypted = head.starts_with(AGE_ARMOR) || head.starts_with(AGE_BINARY);
        let openssh = if encrypted {
            decrypt(path, &bytes, unlock)?
        } else if head.starts_with(OPENSSH) {
            bytes.clone()
        } else {
            return Err(KeyError::UnknownFormat {
                path: path.to_owned(),
            });
        };
        let key = PrivateKey::from_openssh(&*openssh).map_err(|e| match encrypted {
            true => KeyError::NotAKey {
                path: path.to_owned(),
            },
            false => KeyError::Algorithm {
                path: path.to_owned(),
                algorithm: format!("non-ed25519 or unreadable ({e})"),
            },
        })?;
        if key.is_encrypted() {
            return Err(KeyError::SshEncrypted {
                path: path.to_owned(),
            });
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(KeyError::Algorithm {
                path: path.to_owned(),
                algorithm: key.algorithm().to_string(),
            });
        }
        Ok(Self(key))
    }
}

/// Parses an `age1…` recipient.
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, KeyError> {
    age::x25519::Recipient::from_str(s.trim()).map_err(|_| KeyError::Recipient(s.to_owned()))
}

fn decrypt(path: &Path, bytes: &[u8], unlock: &Unlock) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let detail = |e: &dyn fmt::Display| KeyError::Decrypt {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let decryptor =
        age::Decryptor::new_buffered(age::armor::ArmoredReader::new(bytes)).map_err(|e| detail(&e))?;
    let reader = if decryptor.is_scrypt() {
        let source = unlock.passphrase.as_ref().ok_or(KeyError::NoPassphrase)?;
        let identity = age::scrypt::Identity::new(source.passphrase()?);
        decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                    KeyError::WrongPassphrase {
                        path: path.to_owned(),
                    }
                }
                other => detail(&other),
            })?
    } else {
        if unlock.identity_files.is_empty() {
            return Err(KeyError::NoIdentity {
                path: path.to_owned(),
            });
        }
        let mut identities = Vec::new();
        for file in &unlock.identity_files {
            let parsed = age::IdentityFile::from_file(file.display().to_string()).map_err(|source| {
                KeyError::Identity {
                    path: file.clone(),
                    source,
                }
            })?;
            identities.extend(parsed.into_identities().map_err(|e| detail(&e))?);
        }
        decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => {
                    KeyError::WrongIdentity {
                        path: path.to_owned(),
                    }
                }
                other => detail(&other),
            })?
    };
    let mut plain = Zeroizing::new(Vec::new());
    let mut reader = reader;
    reader.read_to_end(&mut plain).map_err(|e| detail(&e))?;
    Ok(plain)
}

fn write_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_err)?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(write_err)
}

/// A passphrase held in memory (tests, or read once from the environment).
#[derive(Debug)]
pub struct FixedPassphrase(pub SecretString);

impl PassphraseSource for FixedPassphrase {
    fn passphrase(&self) -> Result<SecretString, KeyError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::generate("t").unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("redacted") && dbg.contains("SHA256:"), "{dbg}");
        let secret = key.0.to_openssh(LineEnding::LF).unwrap();
        let body = secret.lines().nth(1).unwrap();
        assert!(!dbg.contains(body));
    }

    #[test]
    fn allowed_signers_line_parses_back() {
        let key = SigningKey::generate("ci@example").unwrap();
        let line = key.allowed_signers_line("ci@example.com");
        let signers = crate::AllowedSigners::parse(&line).unwrap();
        assert_eq!(signers.entries()[0].key.key_data(), key.public_key().key_data());
        assert_eq!(signers.entries()[0].namespaces.as_deref(), Some("git"));
    }

    #[test]
    fn age_recipient_round_trip_and_wrong_identity() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let key = SigningKey::generate("t").unwrap();
        let path = dir.path().join("key");
        key.write_new(&path, &Protection::Recipients(vec![id.to_public()]))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(AGE_ARMOR));
        use age::secrecy::ExposeSecret;
        let id_file = dir.path().join("id");
        std::fs::write(&id_file, id.to_string().expose_secret()).unwrap();
        let other_file = dir.path().join("other");
        std::fs::write(&other_file, other.to_string().expose_secret()).unwrap();

        let unlock = |f: &Path| Unlock {
            identity_files: vec![f.to_owned()],
            passphrase: None,
        };
        let loaded = SigningKey::load(&path, &unlock(&id_file)).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(matches!(
            SigningKey::load(&path, &unlock(&other_file)),
            Err(KeyError::WrongIdentity { .. })
        ));
        assert!(matches!(
            SigningKey::load(&path, &Unlock::default()),
            Err(KeyError::NoIdentity { .. })
        ));
        assert!(matches!(
            key.write_new(&path, &Protection::Recipients(vec![id.to_public()])),
            Err(KeyError::Exists { .. })
        ));
    }

    #[test]
    fn unknown_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "hello").unwrap();
        assert!(matches!(
            SigningKey::load(&path, &Unlock::default()),
            Err(KeyError::UnknownFormat { .. })
        ));
    }
}
