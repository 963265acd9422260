//! Private binary caches over HTTP: a real signed cache served by nginx
//! (Debian's, from `scripts/install-deps`) behind HTTP Basic auth (answered
//! from a netrc in Nix's format) or a bearer token. The preflight and the
//! realise step (real `nix-store --realise` reading through the agent's
//! loopback relay) both get in with the same credentials; a 401 or 403 names
//! the cache and the credential file; a redirect to another host never
//! carries them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ferry_agent::io::cache::client::{BinaryCaches, CacheError, ClosureObjects, Preflight};
use ferry_agent::io::cache::credentials::{CacheCredentials, Loaded};
use ferry_agent::io::cache::narinfo::CachePublicKey;
use ferry_agent::io::cache::relay::realise_via_relay;
use ferry_agent::io::cache::relay::Relay;
use ferry_agent::io::nix::StoreError;
use ferry_test_support::nginx::{Access, Nginx};

use ferry_test_support::nix::{self, Cache};

/// `Authorization: Basic base64(user:password)`, as nginx logs it.
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn basic_access(user: &str, password: &str) -> Access {
    Access::Basic {
        user: user.into(),
        password: password.into(),
    }
}

fn bearer_access(token: &str, forbidden: Option<&str>) -> Access {
    Access::Bearer {
        token: token.into(),
        forbidden: forbidden.map(str::to_owned),
    }
}

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
        let toplevel = nix::build_toplevel(dir.path(), "web1", &ferry_test_support::unique("priv"), depth);
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

    fn preflight(
        &self,
        caches: &BinaryCaches,
    ) -> Result<ferry_agent::io::cache::client::Preflight, CacheError> {
        crate::common::runtime()
            .block_on(caches.preflight(&self.toplevel.parse().unwrap(), Path::new("/nix/store")))
    }

    /// Realises the toplevel with real Nix through the loopback relay.
    fn realise(&self, caches: &BinaryCaches) -> Result<(), StoreError> {
        let store = crate::common::store(self.dir.path(), &self.cache.public_key, Duration::from_secs(300));
        let toplevel = self.toplevel.parse().unwrap();
        let _nix = nix::lock();
        crate::common::runtime().block_on(realise_via_relay(&store, caches, &toplevel, "current"))
    }

    /// The walk the preflight makes, with the credentials it read: what a
    /// relay is started with.
    async fn walk(&self, caches: &BinaryCaches) -> (Arc<Loaded>, Preflight, ClosureObjects) {
        let credentials = caches.load_credentials().unwrap();
        let (preflight, objects) = caches
            .walk(
                &self.toplevel.parse().unwrap(),
                Path::new("/nix/store"),
                &credentials,
                &BTreeSet::new(),
            )
            .await
            .unwrap();
        (credentials, preflight, objects)
    }

    /// The toplevel's NAR, as its narinfo names it (`nar/…`).
    fn nar_url(&self) -> String {
        let hash = &self.toplevel[11..43];
        std::fs::read_to_string(self.cache.dir.join(format!("{hash}.narinfo")))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("URL: ").map(str::to_owned))
            .unwrap()
    }

    /// nginx serving this cache to those `access` lets in.
    fn serve(&self, access: &Access, redirect_narinfos: bool) -> Nginx {
        Nginx::serve(&self.cache.dir, access, redirect_narinfos).unwrap_or_else(|e| panic!("{e}"))
    }

    fn all_present(&self) -> bool {
        self.closure.iter().all(|p| Path::new(p).exists())
    }
}

/// GETs each of `paths` under `base` in turn (from a thread of its own: a
/// relay runs on the caller's runtime): each answer's status and body.
async fn get_all<const N: usize>(base: String, paths: [String; N]) -> [(u16, Vec<u8>); N] {
    tokio::task::spawn_blocking(move || {
        paths.map(|path| {
            let answer = reqwest::blocking::get(format!("{base}/{path}")).unwrap();
            (answer.status().as_u16(), answer.bytes().unwrap().to_vec())
        })
    })
    .await
    .unwrap()
}

fn bearer(host: &str, file: PathBuf) -> CacheCredentials {
    CacheCredentials {
        bearer_token_files: BTreeMap::from([(host.into(), file)]),
        ..Default::default()
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
    let netrc_file = f.file(
        "netrc",
        "machine cache.example.com login x password y\nmachine 127.0.0.1\n  login deploy\n  password s3cret\n",
    );
    // A password with a space cannot be written in netrc: nginx wants
    // "s3cret pass", so this netrc is refused, naming the cache and the file.
    let server = f.serve(&basic_access("deploy", "s3cret pass"), false);
    let err = f
        .preflight(&f.caches(&server.url(), netrc(netrc_file.clone())))
        .unwrap_err();
    assert!(matches!(err, CacheError::Denied { status: 401, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&netrc_file.display().to_string()), "{text}");
    assert!(text.contains(&server.url()), "{text}");
    assert!(!text.contains("s3cret"), "{text}");

    let server = f.serve(&basic_access("deploy", "s3cret"), false);
    let caches = f.caches(&server.url(), netrc(netrc_file));
    let p = f.preflight(&caches).unwrap();
    assert_eq!(p.missing, 5);
    assert!(!f.all_present());
    f.realise(&caches).unwrap();
    assert!(
        f.all_present(),
        "the realise step fetched the closure through the relay"
    );
    let seen = server.requests();
    assert!(
        seen.iter()
            .any(|r| r.target.starts_with("/nar/") && r.status == 200),
        "NARs came from the private cache: {seen:?}"
    );
    // Each narinfo was read once, by the preflight: the realise took its
    // walk, and Nix got every narinfo from the relay, as the walk read it.
    let narinfos = seen.iter().filter(|r| r.target.ends_with(".narinfo")).count();
    assert_eq!(narinfos, 5, "{seen:?}");
    // A realise with no preflight before it walks the closure itself.
    std::fs::remove_dir_all(f.dir.path().join("gcroots")).unwrap();
    nix::delete(&f.closure);
    f.realise(&caches).unwrap();
    assert!(f.all_present());
    let seen = server.requests();
    let narinfos = seen.iter().filter(|r| r.target.ends_with(".narinfo")).count();
    assert_eq!(narinfos, 5 + 5, "{seen:?}");
    assert!(
        seen.iter().all(
            |r| r.authorization.as_deref() == Some(basic("deploy", "s3cret").as_str()) && r.status == 200
        ),
        "every request, preflight and realise, carried the credentials and got in: {seen:?}"
    );
}

#[test]
fn a_bearer_token_gets_in_and_a_missing_one_is_named() {
    let f = Fixture::new(2);
    let server = f.serve(&bearer_access("tok-123", None), false);
    let none = f
        .preflight(&f.caches(&server.url(), CacheCredentials::default()))
        .unwrap_err();
    assert!(matches!(none, CacheError::Denied { status: 401, .. }), "{none}");
    assert!(none.to_string().contains("cache.bearer_token_files"), "{none}");
    assert!(none.to_string().contains(&server.url()), "{none}");
    assert_eq!(
        none.summary(),
        format!(
            "error: binary cache {} refused this host's credentials (HTTP 401)",
            server.url().trim_start_matches("http://")
        )
    );

    let token = f.file("token", "tok-123\n");
    let caches = f.caches(&server.url(), bearer("127.0.0.1", token));
    f.preflight(&caches).unwrap();
    f.realise(&caches).unwrap();
    assert!(f.all_present());
    assert!(server
        .requests()
        .iter()
        .any(|r| r.target.starts_with("/nar/") && r.authorization.as_deref() == Some("Bearer tok-123")));
}

#[test]
fn a_token_without_read_access_is_a_403_naming_the_cache_and_the_file() {
    let f = Fixture::new(1);
    let server = f.serve(&bearer_access("reader", Some("other-cache")), false);
    let token = f.file("token", "other-cache");
    let err = f
        .preflight(&f.caches(&server.url(), bearer("127.0.0.1", token.clone())))
        .unwrap_err();
    assert!(matches!(err, CacheError::Denied { status: 403, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&server.url()), "{text}");
    assert!(text.contains(&token.display().to_string()), "{text}");
    assert!(!text.contains("other-cache"), "the token is not shown: {text}");
    assert!(!f.all_present());
}

#[test]
fn credentials_refused_at_realise_are_named_and_nothing_is_realised() {
    let f = Fixture::new(1);
    let server = f.serve(&bearer_access("right", None), false);
    let token = f.file("token", "wrong");
    let caches = f.caches(&server.url(), bearer("127.0.0.1", token.clone()));
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
    // nginx answers narinfo requests it let in with a 302 to its open mirror:
    // another address and port (127.0.0.2), so another host and origin. The netrc's
    // `default` entry would match that host too: still nothing is sent.
    let server = f.serve(&basic_access("u", "p"), true);
    let caches = f.caches(
        &server.url(),
        netrc(f.file("netrc", "default login u password p")),
    );
    f.preflight(&caches).unwrap();
    f.realise(&caches).unwrap();
    assert!(f.all_present());
    let seen = server.requests();
    let (mirrored, direct): (Vec<_>, Vec<_>) = seen.iter().partition(|r| r.port == server.mirror_port);
    assert!(
        direct
            .iter()
            .any(|r| r.target.ends_with(".narinfo") && r.status == 302),
        "the cache redirected: {direct:?}"
    );
    assert!(
        mirrored
            .iter()
            .any(|r| r.target.ends_with(".narinfo") && r.status == 200),
        "the narinfos came from the mirror: {mirrored:?}"
    );
    assert!(mirrored.iter().all(|r| r.authorization.is_none()), "{mirrored:?}");
    assert!(
        direct
            .iter()
            .all(|r| r.authorization.as_deref() == Some(basic("u", "p").as_str())),
        "{direct:?}"
    );
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
    let server = f.serve(&bearer_access("t", None), false);
    let caches = f.caches(&server.url(), bearer("127.0.0.1", f.file("token", "t")));
    let hash = &f.toplevel[11..43];
    let status = |objects: BTreeSet<String>, path: String| {
        let objects = ClosureObjects::named(objects);
        crate::common::runtime().block_on(async {
            let relay = Relay::start(caches.clone(), caches.load_credentials().unwrap(), objects)
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

/// The relay answers a narinfo its walk read and checked with those very
/// bytes, without asking the cache again: with the cache gone, the narinfo
/// still comes (the NAR, which it never keeps, does not).
#[test]
fn the_relay_answers_narinfos_with_the_bytes_its_walk_checked() {
    let f = Fixture::new(1);
    let server = f.serve(&bearer_access("t", None), false);
    let caches = f.caches(&server.url(), bearer("127.0.0.1", f.file("token", "t")));
    let hash = f.toplevel[11..43].to_owned();
    let on_disk = std::fs::read(f.cache.dir.join(format!("{hash}.narinfo"))).unwrap();
    crate::common::runtime().block_on(async {
        let (credentials, preflight, objects) = f.walk(&caches).await;
        assert_eq!(objects.kept(), preflight.missing);
        drop(server);
        let relay = Relay::start(caches.clone(), credentials, objects).await.unwrap();
        let base = relay.substituters()[0].clone();
        let nar = f.nar_url();
        let [narinfo, nar] = get_all(base, [format!("{hash}.narinfo"), nar]).await;
        assert_eq!(narinfo, (200, on_disk));
        assert_eq!(nar.0, 502, "the NAR is asked of the cache, which is gone");
    });
}

/// The relay fetches the closure's small NARs before Nix asks (a Nix
/// before 2.16 asks for one at a time): with the cache gone, a NAR fetched
/// ahead is still served, once; asked again, it is asked of the cache.
#[test]
fn the_relay_serves_small_nars_it_fetched_ahead_once() {
    let f = Fixture::new(1);
    let server = f.serve(&bearer_access("t", None), false);
    let caches = f.caches(&server.url(), bearer("127.0.0.1", f.file("token", "t")));
    let nar = f.nar_url();
    let on_disk = std::fs::read(f.cache.dir.join(&nar)).unwrap();
    crate::common::runtime().block_on(async {
        let (credentials, preflight, objects) = f.walk(&caches).await;
        assert_eq!(objects.small_nars().len(), preflight.missing);
        let relay = Relay::start(caches.clone(), credentials, objects).await.unwrap();
        let mut waited = 0;
        while relay.prefetched() < preflight.missing {
            assert!(waited < 300, "the NARs were not fetched ahead within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        let before = server.requests().len();
        drop(server);
        let base = relay.substituters()[0].clone();
        let [first, second] = get_all(base, [nar.clone(), nar]).await;
        assert!(before >= preflight.missing * 2, "narinfos and NARs were read");
        assert_eq!(first, (200, on_disk));
        assert_eq!(
            second.0, 502,
            "served once: asked again, it is asked of the cache, which is gone"
        );
        assert_eq!(relay.prefetched(), preflight.missing - 1);
    });
}

/// Nix's requests to the relay share a connection, as to a cache: the
/// relay answers one request after another on it (each answer framed by
/// its length), the URL of another relay's session is not its own, and a
/// request it cannot read ends the connection.
#[test]
fn the_relay_answers_many_requests_on_one_connection() {
    use std::io::{BufRead, BufReader, Read, Write};

    let f = Fixture::new(1);
    let server = f.serve(&bearer_access("t", None), false);
    let caches = f.caches(&server.url(), bearer("127.0.0.1", f.file("token", "t")));
    let hash = f.toplevel[11..43].to_owned();
    crate::common::runtime().block_on(async {
        let objects = ClosureObjects::named([format!("{hash}.narinfo")]);
        let relay = Relay::start(caches.clone(), caches.load_credentials().unwrap(), objects)
            .await
            .unwrap();
        let base = relay.substituters()[0].clone();
        let answers = tokio::task::spawn_blocking(move || {
            let url = reqwest::Url::parse(&base).unwrap();
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", url.port().unwrap())).unwrap();
            let path = url.path().to_owned();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut ask = |target: &str| -> (String, Vec<u8>) {
                write!(stream, "GET {target} HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
                let mut status = String::new();
                reader.read_line(&mut status).unwrap();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = n.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                (status.trim().to_owned(), body)
            };
            let info = ask(&format!("{path}/nix-cache-info"));
            let narinfo = ask(&format!("{path}/{hash}.narinfo"));
            let other = ask(&format!("/0000000000000000{}/{hash}.narinfo", &path[17..]));
            let again = ask(&format!("{path}/{hash}.narinfo"));
            // Something unreadable: answered, then the connection ends.
            write!(stream, "GET /nothing\r\n\r\n").unwrap();
            let mut rest = String::new();
            reader.read_to_string(&mut rest).unwrap();
            (info, narinfo, other, again, rest)
        })
        .await
        .unwrap();
        let (info, narinfo, other, again, rest) = answers;
        assert_eq!(info.0, "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&info.1).contains("StoreDir: /nix/store"));
        assert_eq!(narinfo.0, "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&narinfo.1).starts_with("StorePath: "));
        assert_eq!(other.0, "HTTP/1.1 404 Not Found", "another session's URL");
        assert_eq!(again, narinfo, "the same answer on the same connection");
        assert!(rest.starts_with("HTTP/1.1 400 Bad Request"), "{rest}");
    });
}
