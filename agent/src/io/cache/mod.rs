//! Binary caches. [`narinfo`] parses and checks cache metadata,
//! [`credentials`] holds netrc and bearer tokens (S3 itself — URLs, SigV4,
//! AWS credentials, error documents — is `ferry_signer::s3`, shared with the
//! signer), [`client`] walks a closure through all of them (the preflight),
//! and [`relay`] serves that closure to `nix-store --realise` on loopback.

pub mod client;
pub mod credentials;
pub mod narinfo;
pub mod relay;
