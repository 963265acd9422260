//! A software stand-in for a FIDO authenticator, for test vectors: no hardware
//! key can be made on a CI machine, so this signs exactly as one does
//! (`PROTOCOL.u2f`): over SHA-256(application) ‖ flags ‖ counter ‖
//! SHA-256(message), with the flags and counter it is told to report. Its
//! signatures are cross-checked with `ssh-keygen -Y verify` and `git
//! verify-commit`, so they are only as right as OpenSSH says.

use ferry_signer::sshsig::{self, GitSigner, SignError};
use sha2::{Digest, Sha256};
use ssh_key::public::{KeyData, SkEcdsaSha2NistP256, SkEd25519};
use ssh_key::{Algorithm, PublicKey, Signature};

enum Secret {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// A security key held in memory, reporting chosen flags.
pub struct SoftSecurityKey {
    secret: Secret,
    public: PublicKey,
    application: String,
    /// FIDO flags reported with each signature: 0x01 touched, 0x04 verified.
    pub flags: u8,
    /// Signature counter reported with the next signature.
    pub counter: std::cell::Cell<u32>,
}

impl std::fmt::Debug for SoftSecurityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftSecurityKey")
            .field("public", &self.public_line())
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl SoftSecurityKey {
    /// An `sk-ssh-ed25519@openssh.com` key, application `ssh:` as ssh-keygen makes.
    pub fn ed25519(flags: u8) -> Self {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        let secret = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = ssh_key::public::Ed25519PublicKey(secret.verifying_key().to_bytes());
        let data = KeyData::SkEd25519(SkEd25519::new(public, "ssh:"));
        Self::new(Secret::Ed25519(secret), data, flags)
    }

    /// An `sk-ecdsa-sha2-nistp256@openssh.com` key, application `ssh:`.
    pub fn p256(flags: u8) -> Self {
        let secret = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = secret.verifying_key().to_encoded_point(false);
        let data = KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(point, "ssh:"));
        Self::new(Secret::P256(secret), data, flags)
    }

    fn new(secret: Secret, data: KeyData, flags: u8) -> Self {
        Self {
            secret,
            public: PublicKey::new(data, ""),
            application: "ssh:".to_owned(),
            flags,
            counter: std::cell::Cell::new(1),
        }
    }

    /// `sk-… AAAA…` as it would appear in an `allowed_signers` line.
    pub fn public_line(&self) -> String {
        self.public.to_openssh().unwrap()
    }

    /// Signs `data` (what SSHSIG signs) as the authenticator would.
    pub fn sign_raw(&self, data: &[u8]) -> Signature {
        let counter = self.counter.get();
        self.counter.set(counter + 1);
        let mut signed = Vec::with_capacity(69);
        signed.extend(Sha256::digest(self.application.as_bytes()));
        signed.push(self.flags);
        signed.extend(counter.to_be_bytes());
        signed.extend(Sha256::digest(data));
        let (algorithm, mut bytes) = match &self.secret {
            Secret::Ed25519(k) => {
                use ed25519_dalek::Signer;
                (Algorithm::SkEd25519, k.sign(&signed).to_bytes().to_vec())
            }
            Secret::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(&signed);
                let plain = Signature::try_from(sig).unwrap();
                (Algorithm::SkEcdsaSha2NistP256, plain.as_bytes().to_vec())
            }
        };
        // ssh-key keeps flags and counter after the signature bytes.
        bytes.push(self.flags);
        bytes.extend(counter.to_be_bytes());
        Signature::new(algorithm, bytes).unwrap()
    }
}

impl GitSigner for SoftSecurityKey {
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign_git(&self, payload: &[u8]) -> Result<String, SignError> {
        sshsig::sign_git_with(&self.public, "software security key", payload, |data| {
            Ok(self.sign_raw(data))
        })
    }
}
