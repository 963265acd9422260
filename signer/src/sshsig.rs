//! SSHSIG, OpenSSH's detached signature format (`PROTOCOL.sshsig`), as git uses
//! it for `gpg.format=ssh`: parsing the armored envelope with precise errors,
//! verifying it over a message, and producing it with a signing key or through
//! any [`GitSigner`]. Every key type OpenSSH signs commits with is accepted:
//! ed25519, ECDSA P-256/384/521, RSA (rsa-sha2-256/512 only, as OpenSSH) and
//! the FIDO types sk-ed25519 and sk-ecdsa (`PROTOCOL.u2f`), whose flags are
//! kept for the policy in [`crate::AllowedSigners`]. Key decoding and the
//! signature maths are RustCrypto `ssh-key`'s.

use base64::Engine as _;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, LineEnding, PublicKey, Signature, SshSig};

const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";
const MAGIC: &[u8] = b"SSHSIG";
/// Armored signatures longer than this are refused before decoding.
pub const MAX_ARMOR_BYTES: usize = 64 * 1024;

/// RSA moduli OpenSSH accepts (`SSH_RSA_MINIMUM_MODULUS_SIZE`, `OPENSSL_RSA_MAX_MODULUS_BITS`).
const RSA_MIN_BITS: usize = 1024;
const RSA_MAX_BITS: usize = 16384;

/// The namespace git signs commits and tags in.
pub const GIT_NAMESPACE: &str = "git";

/// A parsed SSHSIG signature whose fields are all well formed. It has not been
/// verified: call [`SshSignature::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSignature {
    /// The key that claims to have signed.
    pub public_key: KeyData,
    /// The namespace the signature was made for (`git` for commits).
    pub namespace: String,
    /// The hash applied to the message before signing.
    pub hash_alg: HashAlg,
    /// For security-key (FIDO) signatures: what the authenticator attested.
    pub sk: Option<SkDetails>,
    signature: Signature,
}

/// What a FIDO authenticator reports with each signature (`PROTOCOL.u2f`): the
/// flags byte and the signature counter. Both are covered by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkDetails {
    /// FIDO flags: bit 0 user presence (a touch), bit 2 user verification (PIN).
    pub flags: u8,
    /// The authenticator's signature counter.
    pub counter: u32,
}

impl SkDetails {
    /// Flag bit: the user touched the authenticator.
    pub const USER_PRESENT: u8 = 0x01;
    /// Flag bit: the authenticator verified the user (PIN or biometrics).
    pub const USER_VERIFIED: u8 = 0x04;

    /// Whether the authenticator attests a touch.
    pub fn user_present(&self) -> bool {
        self.flags & Self::USER_PRESENT != 0
    }

    /// Whether the authenticator attests user verification.
    pub fn user_verified(&self) -> bool {
        self.flags & Self::USER_VERIFIED != 0
    }
}

/// Something that can sign a git commit in SSHSIG format: a private key in
/// memory ([`crate::keys::SigningKey`]) or a key held by `ssh-agent`
/// ([`crate::ssh_agent::AgentKey`]).
pub trait GitSigner {
    /// The public half of the signing key.
    fn public_key(&self) -> PublicKey;
    /// Signs `payload` (a commit without its `gpgsig` header) for namespace
    /// `git` and returns the armored signature.
    fn sign_git(&self, payload: &[u8]) -> Result<String, SignError>;
}

/// Why a commit could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign: {0}")]
    Key(#[from] ssh_key::Error),
    #[error("cannot sign with ssh-agent: {0}")]
    Agent(String),
    #[error("the signature produced by {signer} does not verify ({source}); nothing was written")]
    Unverifiable {
        signer: String,
        #[source]
        source: SigError,
    },
}

/// Why bytes are not a usable SSHSIG signature, or why it does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("signature armor is malformed: {0}")]
    Armor(&'static str),
    #[error("signature is not valid base64")]
    Base64,
    #[error("signature blob is malformed: {0}")]
    Blob(&'static str),
    #[error("signature version {0} is not supported (only version 1 exists)")]
    Version(u32),
    #[error("signature carries a public key that cannot be decoded ({0})")]
    PublicKey(String),
    #[error("signature was made for namespace `{0}`, not `git`: it was not made for a git commit")]
    Namespace(String),
    #[error("signature was made for namespace `{found}`, not `{expected}`: it was not made for this use")]
    OtherNamespace { found: String, expected: String },
    #[error("signature uses hash algorithm `{0}`; only sha512 and sha256 are accepted")]
    HashAlgorithm(String),
    #[error("signature body cannot be decoded ({0})")]
    Signature(String),
    #[error("signature uses ssh-rsa (RSA with SHA-1), which OpenSSH refuses for signatures: sign with rsa-sha2-512 (any current ssh-keygen or ssh-agent does)")]
    RsaSha1,
    #[error("signature is made by a certificate ({0}); certificates and cert-authority lines are not supported: list the signing key itself in allowed_signers")]
    Certificate(String),
    #[error("signature algorithm `{0}` is not supported: sign with ssh-ed25519 (recommended), ECDSA, RSA (rsa-sha2-256/512) or a FIDO key (sk-ssh-ed25519, sk-ecdsa-sha2-nistp256)")]
    UnsupportedAlgorithm(String),
    #[error("signature algorithm {signature} does not match the {key} key that claims it")]
    AlgorithmMismatch { signature: String, key: String },
    #[error("signature by key {fingerprint} does not match the signed content: the commit was changed after it was signed, or the signature was forged")]
    Mismatch { fingerprint: String },
}

impl SshSignature {
    /// Parses an armored signature (`-----BEGIN SSH SIGNATURE-----` …), as
    /// found in a commit's `gpgsig` header or written by `ssh-keygen -Y sign`.
    /// Only namespace `git` and hash algorithms sha256/sha512 are accepted.
    pub fn from_armor(armor: &[u8]) -> Result<Self, SigError> {
        let blob = dearmor(armor)?;
        Self::from_blob(&blob)
    }

    /// Parses an armored signature made for `namespace` (another than
    /// `git`, e.g. [`crate::receipt::NAMESPACE`]); the rest as [`Self::from_armor`].
    pub fn from_armor_in(armor: &[u8], namespace: &str) -> Result<Self, SigError> {
        let blob = dearmor(armor)?;
        Self::parse_blob(&blob, namespace)
    }

    /// Parses the binary SSHSIG blob (the base64-decoded armor body).
    pub fn from_blob(blob: &[u8]) -> Result<Self, SigError> {
        Self::parse_blob(blob, GIT_NAMESPACE)
    }

    fn parse_blob(blob: &[u8], expected_namespace: &str) -> Result<Self, SigError> {
        let mut r = Reader(blob);
        if r.take(MAGIC.len()).ok_or(SigError::Blob("too short"))? != MAGIC {
            return Err(SigError::Blob("missing the SSHSIG preamble"));
        }
        let version = r.u32().ok_or(SigError::Blob("truncated version"))?;
        if version != 1 {
            return Err(SigError::Version(version));
        }
        let key_blob = r.string().ok_or(SigError::Blob("truncated public key"))?;
        let namespace = r.string().ok_or(SigError::Blob("truncated namespace"))?;
        let _reserved = r.string().ok_or(SigError::Blob("truncated reserved field"))?;
        let hash_alg = r.string().ok_or(SigError::Blob("truncated hash algorithm"))?;
        let sig_blob = r.string().ok_or(SigError::Blob("truncated signature"))?;
        if !r.0.is_empty() {
            return Err(SigError::Blob("trailing bytes after the signature"));
        }

        let namespace =
            std::str::from_utf8(namespace).map_err(|_| SigError::Blob("namespace is not UTF-8"))?;
        if namespace != expected_namespace {
            if expected_namespace == GIT_NAMESPACE {
                return Err(SigError::Namespace(printable(namespace)));
            }
            return Err(SigError::OtherNamespace {
                found: printable(namespace),
                expected: expected_namespace.to_owned(),
            });
        }
        let hash_alg = match hash_alg {
            b"sha512" => HashAlg::Sha512,
            b"sha256" => HashAlg::Sha256,
            other => {
                return Err(SigError::HashAlgorithm(printable(&String::from_utf8_lossy(
                    other,
                ))))
            }
        };
        let key_name = Reader(key_blob)
            .string()
            .ok_or(SigError::Blob("truncated public key type"))?;
        if key_name.ends_with(b"-cert-v01@openssh.com") {
            return Err(SigError::Certificate(printable(&String::from_utf8_lossy(
                key_name,
            ))));
        }
        let public_key = PublicKey::from_bytes(key_blob)
            .map_err(|e| SigError::PublicKey(e.to_string()))?
            .key_data()
            .clone();
        if !supported_key(&public_key) {
            return Err(SigError::UnsupportedAlgorithm(public_key.algorithm().to_string()));
        }
        let sig_name = Reader(sig_blob)
            .string()
            .ok_or(SigError::Blob("truncated signature type"))?;
        match sig_name {
            b"ssh-rsa" => return Err(SigError::RsaSha1),
            b"ssh-ed25519"
            | b"sk-ssh-ed25519@openssh.com"
            | b"ecdsa-sha2-nistp256"
            | b"ecdsa-sha2-nistp384"
            | b"ecdsa-sha2-nistp521"
            | b"sk-ecdsa-sha2-nistp256@openssh.com"
            | b"rsa-sha2-256"
            | b"rsa-sha2-512" => {}
            other => {
                return Err(SigError::UnsupportedAlgorithm(printable(
                    &String::from_utf8_lossy(other),
                )))
            }
        }
        let signature = Signature::try_from(sig_blob).map_err(|e| SigError::Signature(e.to_string()))?;
        // `ssh-key` ignores bytes after the signature; OpenSSH refuses them
        // ("unexpected bytes remain after decoding"), and so does Ferry.
        if encode_signature(&signature) != sig_blob {
            return Err(SigError::Blob(
                "trailing bytes after the signature inside its field",
            ));
        }
        let key_alg = public_key.algorithm();
        if !signature_fits_key(&signature, &public_key) {
            return Err(SigError::AlgorithmMismatch {
                signature: signature.algorithm().to_string(),
                key: key_alg.to_string(),
            });
        }
        let sk = sk_details(&signature);
        Ok(Self {
            public_key,
            namespace: namespace.to_owned(),
            hash_alg,
            sk,
            signature,
        })
    }

    /// Checks the signature over `message` (for git: the commit without its
    /// `gpgsig` header). This proves who signed; whether that key may sign is
    /// for [`crate::AllowedSigners`] to say.
    pub fn verify(&self, message: &[u8]) -> Result<(), SigError> {
        let mismatch = || SigError::Mismatch {
            fingerprint: self.fingerprint(),
        };
        if let KeyData::Rsa(key) = &self.public_key {
            return self.verify_rsa(key, message);
        }
        let sig = SshSig::new(
            self.public_key.clone(),
            self.namespace.clone(),
            self.hash_alg,
            self.signature.clone(),
        )
        .map_err(|_| mismatch())?;
        PublicKey::from(self.public_key.clone())
            .verify(&self.namespace, message, &sig)
            .map_err(|_| mismatch())
    }

    /// RSA the way OpenSSH checks it (`ssh-rsa.c`): moduli from 1024 to 16384
    /// bits (`ssh-key` stops at 4096, which would refuse common 8192-bit keys),
    /// and a signature shorter than the modulus left-padded with zeros.
    fn verify_rsa(&self, key: &ssh_key::public::RsaPublicKey, message: &[u8]) -> Result<(), SigError> {
        use rsa::signature::Verifier;
        let mismatch = || SigError::Mismatch {
            fingerprint: self.fingerprint(),
        };
        let uint = |m: &ssh_key::Mpint| {
            m.as_positive_bytes()
                .map(rsa::BigUint::from_bytes_be)
                .ok_or_else(|| SigError::PublicKey("RSA key with a negative component".into()))
        };
        let public = rsa::RsaPublicKey::new_with_max_size(uint(&key.n)?, uint(&key.e)?, RSA_MAX_BITS)
            .map_err(|e| SigError::PublicKey(format!("RSA key: {e}")))?;
        let bits = rsa::traits::PublicKeyParts::n(&public).bits();
        if bits < RSA_MIN_BITS {
            return Err(SigError::PublicKey(format!(
                "RSA key of {bits} bits is too small (OpenSSH refuses under {RSA_MIN_BITS})"
            )));
        }
        let size = rsa::traits::PublicKeyParts::size(&public);
        let raw = self.signature.as_bytes();
        if raw.len() > size {
            return Err(mismatch());
        }
        let mut padded = vec![0u8; size - raw.len()];
        padded.extend_from_slice(raw);
        let signature = rsa::pkcs1v15::Signature::try_from(padded.as_slice()).map_err(|_| mismatch())?;
        let signed = SshSig::signed_data(&self.namespace, self.hash_alg, message).map_err(|_| mismatch())?;
        let verified = match self.signature.algorithm() {
            ssh_key::Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            } => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public).verify(&signed, &signature),
            ssh_key::Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            } => rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(public).verify(&signed, &signature),
            _ => return Err(SigError::RsaSha1),
        };
        verified.map_err(|_| mismatch())
    }

    /// `SHA256:…` fingerprint of the signing key, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.public_key.fingerprint(HashAlg::Sha256).to_string()
    }
}

/// Signs `message` for namespace `git` with sha512, as `git commit -S` does with
/// `gpg.format=ssh`, and returns the armored signature (LF line endings).
pub fn sign_git(key: &ssh_key::PrivateKey, message: &[u8]) -> Result<String, ssh_key::Error> {
    SshSig::sign(key, GIT_NAMESPACE, HashAlg::Sha512, message)?.to_pem(LineEnding::LF)
}

/// Signs `message` for `namespace` with sha512, as `ssh-keygen -Y sign -n
/// NAMESPACE` does, and returns the armored signature (LF line endings).
pub fn sign_in(key: &ssh_key::PrivateKey, namespace: &str, message: &[u8]) -> Result<String, ssh_key::Error> {
    SshSig::sign(key, namespace, HashAlg::Sha512, message)?.to_pem(LineEnding::LF)
}

/// Signs `message` for namespace `git` with a signing function that sees only
/// the bytes SSHSIG signs (as an ssh-agent does), checks the result verifies
/// under `public_key`, and returns it armored. A signer that returns garbage
/// is caught here, before anything is written.
pub fn sign_git_with(
    public_key: &PublicKey,
    signer_name: &str,
    message: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Signature, SignError>,
) -> Result<String, SignError> {
    let to_sign = SshSig::signed_data(GIT_NAMESPACE, HashAlg::Sha512, message)?;
    let signature = sign(&to_sign)?;
    let armor = armor_blob(&sshsig_blob(public_key, &signature)?);
    let unverifiable = |source| SignError::Unverifiable {
        signer: signer_name.to_owned(),
        source,
    };
    let parsed = SshSignature::from_armor(armor.as_bytes()).map_err(unverifiable)?;
    parsed.verify(message).map_err(unverifiable)?;
    Ok(armor)
}

/// The binary SSHSIG blob for a git signature made with sha512 (`PROTOCOL.sshsig`).
fn sshsig_blob(public_key: &PublicKey, signature: &Signature) -> Result<Vec<u8>, ssh_key::Error> {
    let mut out = MAGIC.to_vec();
    out.extend(1u32.to_be_bytes());
    put_string(&mut out, &public_key.to_bytes()?);
    put_string(&mut out, GIT_NAMESPACE.as_bytes());
    put_string(&mut out, b"");
    put_string(&mut out, b"sha512");
    put_string(&mut out, &encode_signature(signature));
    Ok(out)
}

/// A signature in SSH wire format. For FIDO signatures the flags byte and
/// counter follow the signature string (`PROTOCOL.u2f`); `ssh-key` 0.6 keeps
/// them inside its signature data and re-encodes sk-ecdsa ones wrongly, so
/// this is done here.
pub fn encode_signature(signature: &Signature) -> Vec<u8> {
    let name = signature.algorithm().to_string();
    let data = signature.as_bytes();
    let mut out = Vec::with_capacity(name.len() + data.len() + 8);
    put_string(&mut out, name.as_bytes());
    match sk_details(signature) {
        Some(_) => {
            let (body, trailer) = data.split_at(data.len() - 5);
            put_string(&mut out, body);
            out.extend(trailer);
        }
        None => put_string(&mut out, data),
    }
    out
}

/// Armors an SSHSIG blob as OpenSSH does: 70 base64 characters per line.
fn armor_blob(blob: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(blob);
    let mut out = format!("{BEGIN}\n");
    for chunk in body.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

/// Key types OpenSSH signs git commits with (DSA is gone from OpenSSH).
fn supported_key(key: &KeyData) -> bool {
    matches!(
        key,
        KeyData::Ed25519(_)
            | KeyData::SkEd25519(_)
            | KeyData::Ecdsa(_)
            | KeyData::SkEcdsaSha2NistP256(_)
            | KeyData::Rsa(_)
    )
}

/// `ssh-key` keeps a FIDO signature's flags byte and counter as the last five
/// bytes of the signature data.
fn sk_details(signature: &Signature) -> Option<SkDetails> {
    use ssh_key::Algorithm;
    if !matches!(
        signature.algorithm(),
        Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256
    ) {
        return None;
    }
    let data = signature.as_bytes();
    let trailer = data.get(data.len().checked_sub(5)?..)?;
    Some(SkDetails {
        flags: trailer[0],
        counter: u32::from_be_bytes(trailer[1..5].try_into().ok()?),
    })
}

fn signature_fits_key(signature: &Signature, key: &KeyData) -> bool {
    use ssh_key::Algorithm;
    match (signature.algorithm(), key.algorithm()) {
        // RSA keys sign with rsa-sha2-256/512; the key itself is named ssh-rsa.
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        (s, k) => s == k,
    }
}

/// Strips the armor lines and decodes the base64 body, as OpenSSH's
/// `sshsig_dearmor` does (whitespace inside the body is ignored).
fn dearmor(armor: &[u8]) -> Result<Vec<u8>, SigError> {
    if armor.len() > MAX_ARMOR_BYTES {
        return Err(SigError::Armor("longer than 64 KiB"));
    }
    let text = std::str::from_utf8(armor).map_err(|_| SigError::Armor("not ASCII text"))?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let body = text.strip_prefix(BEGIN).ok_or(SigError::Armor(
        "does not start with -----BEGIN SSH SIGNATURE-----",
    ))?;
    let body = body
        .strip_suffix(END)
        .ok_or(SigError::Armor("does not end with -----END SSH SIGNATURE-----"))?;
    if !body.starts_with(['\n', '\r']) {
        return Err(SigError::Armor("the BEGIN line is not on a line of its own"));
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(SigError::Armor("no signature between the armor lines"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| SigError::Base64)
}

/// Keeps attacker-chosen text short and free of control characters in messages.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Reads SSH wire-format values (RFC 4251 §5).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{Algorithm, PrivateKey};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    /// Builds a blob field by field so each field can be varied.
    fn blob(key: &PrivateKey, namespace: &str, hash: &str, msg: &[u8]) -> Vec<u8> {
        let hash_alg = if hash == "sha256" {
            HashAlg::Sha256
        } else {
            HashAlg::Sha512
        };
        let sig = SshSig::sign(key, "git", hash_alg, msg).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend(1u32.to_be_bytes());
        put_string(&mut out, &key.public_key().to_bytes().unwrap());
        put_string(&mut out, namespace.as_bytes());
        put_string(&mut out, b"");
        put_string(&mut out, hash.as_bytes());
        let sig_bytes: Vec<u8> = sig.signature().clone().try_into().unwrap();
        put_string(&mut out, &sig_bytes);
        out
    }

    #[test]
    fn signs_and_verifies_round_trip() {
        let k = key();
        let armor = sign_git(&k, b"tree abc\n\nmsg\n").unwrap();
        assert!(armor.starts_with(BEGIN));
        let sig = SshSignature::from_armor(armor.as_bytes()).unwrap();
        assert_eq!(&sig.public_key, k.public_key().key_data());
        assert_eq!(sig.hash_alg, HashAlg::Sha512);
        sig.verify(b"tree abc\n\nmsg\n").unwrap();
        assert!(matches!(
            sig.verify(b"tree abc\n\nmsG\n"),
            Err(SigError::Mismatch { .. })
        ));
    }

    #[test]
    fn our_blob_builder_matches_ssh_key() {
        let k = key();
        let ours = blob(&k, "git", "sha512", b"m");
        let theirs = SshSig::sign(&k, "git", HashAlg::Sha512, b"m").unwrap();
        let parsed = SshSignature::from_blob(&ours).unwrap();
        assert_eq!(parsed.signature, *theirs.signature());
    }

    #[test]
    fn sha256_is_accepted() {
        let k = key();
        let sig = SshSignature::from_blob(&blob(&k, "git", "sha256", b"m")).unwrap();
        sig.verify(b"m").unwrap();
    }

    #[test]
    fn other_namespace_is_refused() {
        let k = key();
        assert_eq!(
            SshSignature::from_blob(&blob(&k, "file", "sha512", b"m")),
            Err(SigError::Namespace("file".into()))
        );
    }

    #[test]
    fn other_hash_is_refused() {
        let k = key();
        assert_eq!(
            SshSignature::from_blob(&blob(&k, "git", "sha1", b"m")),
            Err(SigError::HashAlgorithm("sha1".into()))
        );
    }

    #[test]
    fn malformed_blobs_are_refused() {
        let k = key();
        let good = blob(&k, "git", "sha512", b"m");
        assert!(matches!(
            SshSignature::from_blob(b"SSHSI"),
            Err(SigError::Blob(_))
        ));
        assert!(matches!(
            SshSignature::from_blob(b"NOTSIG\0\0\0\x01"),
            Err(SigError::Blob(_))
        ));
        let mut v2 = good.clone();
        v2[9] = 2;
        assert_eq!(SshSignature::from_blob(&v2), Err(SigError::Version(2)));
        for cut in [7, 12, 40, good.len() - 1] {
            assert!(
                matches!(SshSignature::from_blob(&good[..cut]), Err(SigError::Blob(_))),
                "cut at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            SshSignature::from_blob(&trailing),
            Err(SigError::Blob(_))
        ));
    }

    #[test]
    fn signature_from_another_algorithm_is_refused() {
        let k = key();
        let mut out = MAGIC.to_vec();
        out.extend(1u32.to_be_bytes());
        put_string(&mut out, &k.public_key().to_bytes().unwrap());
        put_string(&mut out, b"git");
        put_string(&mut out, b"");
        put_string(&mut out, b"sha512");
        let mut sig = Vec::new();
        put_string(&mut sig, b"ecdsa-sha2-nistp256");
        put_string(&mut sig, &[0u8; 8]);
        put_string(&mut out, &sig);
        assert!(SshSignature::from_blob(&out).is_err());
    }

    /// A blob whose key and signature fields are given as raw wire strings.
    fn blob_with(key_blob: &[u8], sig_field: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(1u32.to_be_bytes());
        put_string(&mut out, key_blob);
        put_string(&mut out, b"git");
        put_string(&mut out, b"");
        put_string(&mut out, b"sha512");
        put_string(&mut out, sig_field);
        out
    }

    #[test]
    fn certificates_dsa_and_unknown_algorithms_are_refused_by_name() {
        let k = key();
        let good_key = k.public_key().to_bytes().unwrap();
        let sig = SshSig::sign(&k, "git", HashAlg::Sha512, b"m").unwrap();
        let sig_bytes: Vec<u8> = sig.signature().clone().try_into().unwrap();

        let mut cert = Vec::new();
        put_string(&mut cert, b"ssh-ed25519-cert-v01@openssh.com");
        put_string(&mut cert, &[0; 32]);
        assert!(matches!(
            SshSignature::from_blob(&blob_with(&cert, &sig_bytes)),
            Err(SigError::Certificate(name)) if name == "ssh-ed25519-cert-v01@openssh.com"
        ));

        let mut webauthn = Vec::new();
        put_string(&mut webauthn, b"webauthn-sk-ecdsa-sha2-nistp256@openssh.com");
        put_string(&mut webauthn, &[0; 8]);
        let err = SshSignature::from_blob(&blob_with(&good_key, &webauthn)).unwrap_err();
        assert!(matches!(err, SigError::UnsupportedAlgorithm(_)), "{err}");
        assert!(err.to_string().contains("ssh-ed25519 (recommended)"), "{err}");

        let mut rsa_sha1 = Vec::new();
        put_string(&mut rsa_sha1, b"ssh-rsa");
        put_string(&mut rsa_sha1, &[0; 8]);
        assert_eq!(
            SshSignature::from_blob(&blob_with(&good_key, &rsa_sha1)),
            Err(SigError::RsaSha1)
        );
    }

    #[test]
    fn bytes_after_the_signature_inside_its_field_are_refused() {
        let k = key();
        let sig = SshSig::sign(&k, "git", HashAlg::Sha512, b"m").unwrap();
        let mut field: Vec<u8> = sig.signature().clone().try_into().unwrap();
        let good = blob_with(&k.public_key().to_bytes().unwrap(), &field);
        SshSignature::from_blob(&good).unwrap().verify(b"m").unwrap();
        field.extend(b"GARBAGE");
        let padded = blob_with(&k.public_key().to_bytes().unwrap(), &field);
        assert_eq!(
            SshSignature::from_blob(&padded),
            Err(SigError::Blob(
                "trailing bytes after the signature inside its field"
            ))
        );
    }

    #[test]
    fn security_key_signatures_keep_flags_and_counter_and_encode_back() {
        // An sk-ssh-ed25519 signature field: signature string, flags, counter.
        let mut field = Vec::new();
        put_string(&mut field, b"sk-ssh-ed25519@openssh.com");
        put_string(&mut field, &[7; 64]);
        field.push(0x05);
        field.extend(42u32.to_be_bytes());
        let signature = Signature::try_from(field.as_slice()).unwrap();
        assert_eq!(
            sk_details(&signature),
            Some(SkDetails {
                flags: 0x05,
                counter: 42
            })
        );
        assert_eq!(encode_signature(&signature), field);
        let details = sk_details(&signature).unwrap();
        assert!(details.user_present() && details.user_verified());

        let plain = SshSig::sign(&key(), "git", HashAlg::Sha512, b"m").unwrap();
        assert_eq!(sk_details(plain.signature()), None);
        let theirs: Vec<u8> = plain.signature().clone().try_into().unwrap();
        assert_eq!(encode_signature(plain.signature()), theirs);
    }

    #[test]
    fn malformed_armor_is_refused() {
        let k = key();
        let armor = sign_git(&k, b"m").unwrap();
        let no_begin = armor.replacen(BEGIN, "", 1);
        assert!(matches!(
            SshSignature::from_armor(no_begin.as_bytes()),
            Err(SigError::Armor(_))
        ));
        let no_end = armor.replacen(END, "", 1);
        assert!(matches!(
            SshSignature::from_armor(no_end.as_bytes()),
            Err(SigError::Armor(_))
        ));
        let bad_b64 = armor.replacen("U1NIU0lH", "U1NIU0l!", 1);
        assert_eq!(
            SshSignature::from_armor(bad_b64.as_bytes()),
            Err(SigError::Base64)
        );
        let empty = format!("{BEGIN}\n{END}\n");
        assert!(matches!(
            SshSignature::from_armor(empty.as_bytes()),
            Err(SigError::Armor(_))
        ));
        let crlf = armor.replace('\n', "\r\n");
        assert!(SshSignature::from_armor(crlf.as_bytes()).is_ok());
        let huge = format!("{BEGIN}\n{}\n{END}", "A".repeat(MAX_ARMOR_BYTES));
        assert!(matches!(
            SshSignature::from_armor(huge.as_bytes()),
            Err(SigError::Armor(_))
        ));
    }

    #[test]
    fn signature_by_another_key_in_the_envelope_is_refused() {
        let (k1, k2) = (key(), key());
        // k2's signature presented under k1's public key.
        let sig2 = SshSig::sign(&k2, "git", HashAlg::Sha512, b"m").unwrap();
        let forged = SshSig::new(
            k1.public_key().key_data().clone(),
            "git",
            HashAlg::Sha512,
            sig2.signature().clone(),
        )
        .unwrap();
        let armor = forged.to_pem(LineEnding::LF).unwrap();
        let parsed = SshSignature::from_armor(armor.as_bytes()).unwrap();
        assert!(matches!(parsed.verify(b"m"), Err(SigError::Mismatch { .. })));
    }
}
