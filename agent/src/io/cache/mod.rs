//! Binary caches. [`narinfo`] parses and checks cache metadata,
//! [`credentials`] holds netrc and bearer tokens, [`s3`] speaks S3 (URLs,
//! SigV4, AWS credentials, error documents), [`client`] walks a closure
//! through all of them (the preflight), and [`relay`] serves that closure to
//! `nix-store --realise` on loopback.

pub mod client;
pub mod credentials;
pub mod narinfo;
pub mod relay;
pub mod s3;
