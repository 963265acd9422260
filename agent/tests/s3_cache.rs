//! `s3://` caches against a real S3 server (moto, with authentication on):
//! a signed binary cache uploaded with signed S3 requests, read by the
//! preflight with SigV4 and realised by real `nix-store --realise` through
//! the agent's loopback relay; wrong keys, a missing object, a missing
//! bucket and an endpoint that never answers are each a named error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_agent::io::cache::client::{BinaryCaches, CacheError};
use ferry_agent::io::cache::credentials::CacheCredentials;
use ferry_agent::io::cache::narinfo::CachePublicKey;
use ferry_agent::io::cache::relay::realise_via_relay;
use ferry_test_support::nix::{self, Cache};
use ferry_test_support::s3::Moto;

struct Fixture {
    dir: tempfile::TempDir,
    cache: Cache,
    moto: Moto,
    toplevel: String,
    closure: Vec<String>,
}

impl Fixture {
    fn new(bucket: &str, region: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let toplevel = nix::build_toplevel(dir.path(), "web1", &ferry_test_support::unique("s3"), 2);
        let cache = Cache::new(&dir.path().join("cache"), "s3-cache-1");
        cache.copy(&toplevel);
        cache.sign(&toplevel);
        let moto = Moto::start();
        moto.upload_cache(bucket, region, &cache.dir);
        let closure = nix::closure(&toplevel);
        nix::delete(&closure);
        Self {
            dir,
            cache,
            moto,
            toplevel,
            closure,
        }
    }

    /// A shared-credentials file with `id` and `secret` as `[default]`.
    fn credentials(&self, id: &str, secret: &str) -> PathBuf {
        let path = self.dir.path().join(format!("aws-{id}"));
        std::fs::write(
            &path,
            format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
        path
    }

    fn right(&self) -> PathBuf {
        self.credentials(&self.moto.key.access_key_id, &self.moto.key.secret_access_key)
    }

    fn caches(&self, url: &str, file: PathBuf) -> BinaryCaches {
        let key: CachePublicKey = self.cache.public_key.parse().unwrap();
        BinaryCaches::with_credentials(
            &[url.to_owned()],
            &[key],
            CacheCredentials {
                s3_credentials_file: Some(file),
                ..Default::default()
            },
        )
    }

    fn url(&self, bucket: &str, region: &str) -> String {
        format!("s3://{bucket}?region={region}&endpoint={}", self.moto.endpoint())
    }

    fn preflight(
        &self,
        caches: &BinaryCaches,
    ) -> Result<ferry_agent::io::cache::client::Preflight, CacheError> {
        crate::common::runtime()
            .block_on(caches.preflight(&self.toplevel.parse().unwrap(), Path::new("/nix/store")))
    }
}

#[test]
fn a_signed_cache_in_s3_passes_the_preflight_and_is_realised() {
    let f = Fixture::new("nix-cache", "us-east-1");
    let caches = f.caches(&f.url("nix-cache", "us-east-1"), f.right());
    let p = f.preflight(&caches).unwrap();
    assert_eq!(p.missing, 4);
    assert_eq!(p.signers.iter().collect::<Vec<_>>(), vec!["s3-cache-1"]);

    let store = crate::common::store(f.dir.path(), &f.cache.public_key, Duration::from_secs(300));
    let toplevel = f.toplevel.parse().unwrap();
    let _nix = nix::lock();
    crate::common::runtime()
        .block_on(realise_via_relay(&store, &caches, &toplevel, "current"))
        .unwrap();
    assert!(f.closure.iter().all(|p| Path::new(p).exists()));
}

#[test]
fn wrong_keys_a_missing_object_and_a_missing_bucket_are_named() {
    let f = Fixture::new("nix-cache", "us-east-1");
    let url = f.url("nix-cache", "us-east-1");

    let wrong_secret = f.credentials(&f.moto.key.access_key_id, "not-the-secret");
    let err = f.preflight(&f.caches(&url, wrong_secret.clone())).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CacheError::Denied { status: 403, .. }), "{text}");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(text.contains(&wrong_secret.display().to_string()), "{text}");
    assert!(!text.contains(f.moto.key.secret_access_key.as_str()), "{text}");

    let unknown = f.credentials("AKIAUNKNOWNKEY000000", "whatever");
    let err = f.preflight(&f.caches(&url, unknown)).unwrap_err();
    assert!(err.to_string().contains("InvalidAccessKeyId"), "{err}");

    let err = f
        .preflight(&f.caches(&f.url("no-such-bucket", "us-east-1"), f.right()))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let victim = f.closure.iter().find(|p| **p != f.toplevel).unwrap();
    f.moto
        .delete("nix-cache", &format!("{}.narinfo", &victim[11..43]));
    let err = f.preflight(&f.caches(&url, f.right())).unwrap_err();
    assert!(
        matches!(err, CacheError::NotFound { ref path, .. } if path == victim),
        "{err}"
    );
}

/// A bucket outside us-east-1 is read with requests signed for its region.
/// (moto does not refuse a request signed for another region, as AWS does;
/// what the agent makes of AWS's wrong-region answers is tested in
/// `cache.rs` on the documents AWS sends.)
#[test]
fn a_bucket_in_another_region_is_read_with_that_region() {
    let f = Fixture::new("eu-cache", "eu-west-1");
    f.preflight(&f.caches(&f.url("eu-cache", "eu-west-1"), f.right()))
        .unwrap();
}

#[test]
fn an_endpoint_that_never_answers_is_a_transient_error() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("aws");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = A\naws_secret_access_key = B\n",
    )
    .unwrap();
    let caches = BinaryCaches::with_credentials(
        &[format!("s3://hangs?endpoint=http://127.0.0.1:{port}")],
        &[],
        CacheCredentials {
            s3_credentials_file: Some(creds),
            ..Default::default()
        },
    );
    let toplevel = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
        .parse()
        .unwrap();
    let err = crate::common::runtime()
        .block_on(caches.preflight(&toplevel, Path::new("/nix/store")))
        .unwrap_err();
    drop(listener);
    assert_eq!(
        ferry_agent::policy::faults::cache_fault(&err),
        ferry_agent::policy::faults::Fault::Transient,
        "{err}"
    );
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}
