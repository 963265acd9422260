//! Private binary caches over HTTP: a real signed cache behind a server that
//! demands HTTP Basic (from a netrc in Nix's format) or a bearer token. The
//! preflight and the realise step (real `nix-store --realise` reading through
//! the agent's loopback relay) both get in with the same credentials; wrong
//! or missing ones are named errors; a redirect to another host never carries
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::nix::{self, Cache};
use crate::common::private_cache::{basic, PrivateCache};
use ferry_agent::cache::{BinaryCaches, CacheError};
use ferry_agent::cache_serve::LoopbackCache;
use ferry_agent::credentials::CacheCredentials;
use ferry_agent::narinfo::CachePublicKey;
use ferry_agent::seams::realise_via_relay;
use ferry_agent::store::{Store, StoreError};

/// A toplevel in a signed cache, deleted from the local store.
struct Fixture {
    dir: tempfile::TempDir,
    cache: Cache,
    toplevel: String,
    closure: Vec<String>,
}

impl Fixture {
    fn new(depth: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let toplevel = nix::build_toplevel(dir.path(), "web1", &crate::common::unique("priv"), depth);
        let cache = Cache::new(&dir.path().join("cache"), "private-cache-1");
        cache.copy(&toplevel);
        cache.sign(&toplevel);
        let closure = nix::closure(&toplevel);
        nix::delete(&closure);
        Self {
            dir,
            cache,
            toplevel,
            closure,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn caches(&self, url: &str, credentials: CacheCredentials) -> BinaryCaches {
        let key: CachePublicKey = self.cache.public_key.parse().unwrap();
        BinaryCaches::with_credentials(&[url.to_owned()], &[key], credentials)
    }

    fn preflight(&self, caches: &BinaryCaches) -> Result<ferry_agent::cache::Preflight, CacheError> {
        crate::common::runtime()
            .block_on(caches.preflight(&self.toplevel.parse().unwrap(), Path::new("/nix/store")))
    }

    /// Realises the toplevel with real Nix through the loopback relay.
    fn realise(&self, caches: &BinaryCaches) -> Result<(), StoreError> {
        let store = Store {
            profile: self.dir.path().join("profile"),
            gc_roots: self.dir.path().join("gcroots"),
            substituters: Vec::new(),
            trusted_public_keys: vec![self.cache.public_key.clone()],
            realise_timeout: Duration::from_secs(300),
        };
        let toplevel = self.toplevel.parse().unwrap();
        let _nix = nix::lock();
        crate::common::runtime().block_on(realise_via_relay(&store, caches, &toplevel, "current"))
    }

    fn all_present(&self) -> bool {
        self.closure.iter().all(|p| Path::new(p).exists())
    }
}

fn netrc(path: PathBuf) -> CacheCredentials {
    CacheCredentials {
        netrc_file: Some(path),
        ..Default::default()
    }
}

#[test]
fn netrc_credentials_get_the_preflight_and_the_realise_in() {
    let f = Fixture::new(3);
    let server = PrivateCache::start(&f.cache.dir, Some(basic("deploy", "s3cret pass")), None);
    let netrc_file = f.file(
        "netrc",
        "machine cache.example.com login x password y\nmachine 127.0.0.1\n  login deploy\n  password s3cret\n",
    );
    // A password with a space cannot be written in netrc: the server wants
    // "s3cret pass", so this netrc is refused, naming the file.
    let err = f
        .preflight(&f.caches(&server.url(), netrc(netrc_file.clone())))
        .unwrap_err();
    assert!(matches!(err, CacheError::Denied { status: 401, .. }), "{err}");
    assert!(
        err.to_string().contains(&netrc_file.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains(&server.url()), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    let server = PrivateCache::start(&f.cache.dir, Some(basic("deploy", "s3cret")), None);
    let caches = f.caches(&server.url(), netrc(netrc_file));
    let p = f.preflight(&caches).unwrap();
    assert_eq!(p.missing, 5);
    assert!(!f.all_present());
    f.realise(&caches).unwrap();
    assert!(
        f.all_present(),
        "the realise step fetched the closure through the relay"
    );
    let seen = server.seen();
    assert!(
        seen.iter().any(|s| s.target.starts_with("/nar/")),
        "NARs came from the private cache"
    );
    assert!(
        seen.iter()
            .all(|s| s.authorization.as_deref() == Some(basic("deploy", "s3cret").as_str())),
        "every request, preflight and realise, carried the credentials"
    );
}

#[test]
fn a_bearer_token_gets_in_and_a_missing_one_is_named() {
    let f = Fixture::new(2);
    let server = PrivateCache::start(&f.cache.dir, Some("Bearer tok-123".into()), None);
    let none = f
        .preflight(&f.caches(&server.url(), CacheCredentials::default()))
        .unwrap_err();
    assert!(matches!(none, CacheError::Denied { status: 401, .. }), "{none}");
    assert!(none.to_string().contains("cache.bearer_token_files"), "{none}");
    assert!(none.summary().contains("refused access"), "{}", none.summary());

    let token = f.file("token", "tok-123\n");
    let caches = f.caches(
        &server.url(),
        CacheCredentials {
            netrc_file: None,
            bearer_token_files: BTreeMap::from([("127.0.0.1".into(), token)]),
            ..Default::default()
        },
    );
    f.preflight(&caches).unwrap();
    f.realise(&caches).unwrap();
    assert!(f.all_present());
}

#[test]
fn credentials_refused_at_realise_are_named_and_nothing_is_realised() {
    let f = Fixture::new(1);
    let server = PrivateCache::start(&f.cache.dir, Some("Bearer right".into()), None);
    let token = f.file("token", "wrong");
    let caches = f.caches(
        &server.url(),
        CacheCredentials {
            netrc_file: None,
            bearer_token_files: BTreeMap::from([("127.0.0.1".into(), token.clone())]),
            ..Default::default()
        },
    );
    let err = f.realise(&caches).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Closure(_)), "{text}");
    assert!(
        text.contains("refused the credentials") && text.contains(&token.display().to_string()),
        "{text}"
    );
    assert!(!f.all_present());
}

#[test]
fn a_redirect_to_another_host_never_carries_the_credentials() {
    let f = Fixture::new(1);
    // The public mirror: another port, so another origin.
    let mirror = PrivateCache::start(&f.cache.dir, None, None);
    let server = PrivateCache::start(&f.cache.dir, Some(basic("u", "p")), Some(mirror.url()));
    let caches = f.caches(
        &server.url(),
        netrc(f.file("netrc", "default login u password p")),
    );
    f.preflight(&caches).unwrap();
    let mirrored = mirror.seen();
    assert!(!mirrored.is_empty(), "the narinfos came from the mirror");
    assert!(mirrored.iter().all(|s| s.authorization.is_none()), "{mirrored:?}");
}

#[test]
fn credentials_are_never_sent_over_plain_http_off_loopback() {
    let f = Fixture::new(1);
    // Nothing listens there: the refusal comes before any connection.
    let caches = f.caches(
        "http://cache.example.invalid",
        netrc(f.file("netrc", "machine cache.example.invalid login u password p")),
    );
    let err = f.preflight(&caches).unwrap_err();
    assert!(matches!(err, CacheError::Credentials(_)), "{err}");
    assert!(err.to_string().contains("over plain HTTP"), "{err}");
}

#[test]
fn the_relay_serves_only_the_closure_it_was_started_for() {
    let f = Fixture::new(1);
    let server = PrivateCache::start(&f.cache.dir, Some("Bearer t".into()), None);
    let token = f.file("token", "t");
    let caches = f.caches(
        &server.url(),
        CacheCredentials {
            bearer_token_files: BTreeMap::from([("127.0.0.1".into(), token)]),
            ..Default::default()
        },
    );
    let hash = &f.toplevel[11..43];
    let status = |objects: BTreeSet<String>, path: String| {
        crate::common::runtime().block_on(async {
            let relay = LoopbackCache::start(caches.clone(), caches.load_credentials().unwrap(), objects)
                .await
                .unwrap();
            let url = format!("{}/{path}", relay.substituters()[0]);
            // A client of its own, in a thread: the relay runs on this runtime.
            let got =
                tokio::task::spawn_blocking(move || reqwest::blocking::get(url).unwrap().status().as_u16());
            got.await.unwrap()
        })
    };
    assert_eq!(status(BTreeSet::new(), "nix-cache-info".into()), 200);
    assert_eq!(status(BTreeSet::new(), format!("{hash}.narinfo")), 404);
    assert_eq!(
        status(
            BTreeSet::from([format!("{hash}.narinfo")]),
            format!("{hash}.narinfo")
        ),
        200
    );
}
