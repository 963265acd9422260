//! The closure preflight against a real signed binary cache over HTTP.

use std::path::Path;

use ferry_agent::io::cache::client::{BinaryCaches, CacheError};
use ferry_agent::io::cache::narinfo::{CachePublicKey, TrustError};
use ferry_test_support::http::StaticServer;
use ferry_test_support::nix::{self, Cache};

/// A toplevel with a chain of `depth` dependencies, in a signed cache served
/// over HTTP, and deleted from the local store.
struct Fixture {
    _dir: tempfile::TempDir,
    cache: Cache,
    server: StaticServer,
    toplevel: String,
    closure: Vec<String>,
}

impl Fixture {
    fn new(depth: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let toplevel = nix::build_toplevel(dir.path(), "web1", &ferry_test_support::unique("pf"), depth);
        let cache = Cache::new(&dir.path().join("cache"), "test-cache-1");
        cache.copy(&toplevel);
        cache.sign(&toplevel);
        let closure = nix::closure(&toplevel);
        nix::delete(&closure);
        let server = StaticServer::start(&cache.dir);
        Self {
            _dir: dir,
            cache,
            server,
            toplevel,
            closure,
        }
    }

    fn caches(&self, keys: &[&str]) -> BinaryCaches {
        let keys: Vec<CachePublicKey> = keys.iter().map(|k| k.parse().unwrap()).collect();
        BinaryCaches::new(&[self.server.url()], &keys)
    }

    fn preflight(
        &self,
        caches: &BinaryCaches,
    ) -> Result<ferry_agent::io::cache::client::Preflight, CacheError> {
        crate::common::runtime()
            .block_on(caches.preflight(&self.toplevel.parse().unwrap(), Path::new("/nix/store")))
    }

    fn narinfo_path(&self, path: &str) -> std::path::PathBuf {
        self.cache.dir.join(format!("{}.narinfo", &path[11..43]))
    }
}

#[test]
fn a_signed_closure_passes_and_is_summed() {
    let f = Fixture::new(40);
    let p = f.preflight(&f.caches(&[&f.cache.public_key])).unwrap();
    assert_eq!(p.paths, 42, "toplevel, kernel and 40 dependencies");
    assert_eq!(p.missing, 42, "everything was deleted locally");
    assert!(p.unpacked_bytes > 0 && p.download_bytes > 0);
    assert_eq!(p.signers.iter().collect::<Vec<_>>(), vec!["test-cache-1"]);
}

#[test]
fn a_path_missing_from_the_cache_is_refused() {
    let f = Fixture::new(5);
    let victim = f.closure.iter().find(|p| *p != &f.toplevel).unwrap();
    std::fs::remove_file(f.narinfo_path(victim)).unwrap();
    let err = f.preflight(&f.caches(&[&f.cache.public_key])).unwrap_err();
    assert!(
        matches!(err, CacheError::NotFound { ref path, .. } if path == victim),
        "{err}"
    );
    assert!(
        err.summary().contains("missing from the binary cache"),
        "{}",
        err.summary()
    );
}

#[test]
fn an_unsigned_path_is_refused() {
    let f = Fixture::new(5);
    let victim = f.closure.iter().find(|p| *p != &f.toplevel).unwrap();
    let file = f.narinfo_path(victim);
    std::fs::write(&file, unsign(&std::fs::read_to_string(&file).unwrap())).unwrap();
    let err = f.preflight(&f.caches(&[&f.cache.public_key])).unwrap_err();
    assert!(
        matches!(err, CacheError::Untrusted(TrustError::Unsigned { .. })),
        "{err}"
    );
}

/// Signatures are checked in batches of 128 beside the walk's requests;
/// every batch counts, the last one (smaller than the others) included.
#[test]
fn every_path_of_a_closure_larger_than_a_check_batch_is_checked() {
    let f = Fixture::new(300);
    let caches = f.caches(&[&f.cache.public_key]);
    assert_eq!(f.preflight(&caches).unwrap().paths, 302);
    // The chain's links, `dep-…-300` (read third) down to `dep-…-1` (last).
    let link = |n: usize| {
        f.closure
            .iter()
            .find(|p| p.contains("-dep-") && p.ends_with(&format!("-{n}")))
            .unwrap()
    };
    for victim in [link(150), link(1)] {
        let file = f.narinfo_path(victim);
        let signed = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, unsign(&signed)).unwrap();
        let err = f.preflight(&caches).unwrap_err();
        assert!(
            matches!(err, CacheError::Untrusted(TrustError::Unsigned { ref path }) if path == victim),
            "{victim}: {err}"
        );
        std::fs::write(&file, signed).unwrap();
    }
}

/// A path's referrer is read before it: when an unsigned narinfo names
/// paths the cache does not have, the unsigned one is what is refused.
#[test]
fn an_unsigned_referrer_is_refused_before_the_paths_it_names() {
    let f = Fixture::new(5);
    let file = f.narinfo_path(&f.toplevel);
    std::fs::write(&file, unsign(&std::fs::read_to_string(&file).unwrap())).unwrap();
    for path in f.closure.iter().filter(|p| *p != &f.toplevel) {
        std::fs::remove_file(f.narinfo_path(path)).unwrap();
    }
    let err = f.preflight(&f.caches(&[&f.cache.public_key])).unwrap_err();
    assert!(
        matches!(err, CacheError::Untrusted(TrustError::Unsigned { ref path }) if path == &f.toplevel),
        "{err}"
    );
}

/// `text` without its `Sig:` lines.
fn unsign(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_closure_signed_by_an_unpinned_key_is_refused() {
    let f = Fixture::new(3);
    let dir = tempfile::tempdir().unwrap();
    let other = Cache::new(dir.path(), "someone-else-1");
    let err = f.preflight(&f.caches(&[&other.public_key])).unwrap_err();
    assert!(
        matches!(err, CacheError::Untrusted(TrustError::UntrustedKeys { .. })),
        "{err}"
    );
    assert!(err.summary().contains("unpinned key"));
}

#[test]
fn an_unreachable_cache_is_a_transient_error() {
    let port = ferry_test_support::free_port();
    let caches = BinaryCaches::new(&[format!("http://127.0.0.1:{port}")], &[]);
    let toplevel = "/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1"
        .parse()
        .unwrap();
    let err = crate::common::runtime()
        .block_on(caches.preflight(&toplevel, Path::new("/nix/store")))
        .unwrap_err();
    assert_eq!(
        ferry_agent::policy::faults::cache_fault(&err),
        ferry_agent::policy::faults::Fault::Transient,
        "{err}"
    );
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// A narinfo the cache will serve the same way at every poll (larger than
/// the 1 MiB bound, or not a narinfo) is refused with the reason, not
/// retried as an unreachable cache.
#[test]
fn an_oversized_or_malformed_narinfo_is_refused_not_retried() {
    let f = Fixture::new(2);
    let victim = f.closure.iter().find(|p| *p != &f.toplevel).unwrap();
    let file = f.narinfo_path(victim);
    let good = std::fs::read(&file).unwrap();
    for (what, body) in [
        ("oversized", [good.as_slice(), &vec![b'x'; 2 << 20]].concat()),
        ("malformed", b"<html>cache maintenance</html>\n".to_vec()),
    ] {
        std::fs::write(&file, &body).unwrap();
        let err = f.preflight(&f.caches(&[&f.cache.public_key])).unwrap_err();
        assert!(matches!(err, CacheError::Narinfo { .. }), "{what}: {err:?}");
        assert_ne!(
            ferry_agent::policy::faults::cache_fault(&err),
            ferry_agent::policy::faults::Fault::Transient,
            "{what}: {err}"
        );
        assert_eq!(
            ferry_agent::policy::faults::cache_severity(&err),
            ferry_agent::policy::faults::Severity::Failure,
            "{what}"
        );
        assert!(
            err.summary().starts_with("refused: "),
            "{what}: {}",
            err.summary()
        );
    }
}

/// A directory at a store path that Nix's database does not hold (left by
/// an interrupted copy, or written by hand), removed when dropped.
struct Stray(std::path::PathBuf);

impl Stray {
    /// A dependency of `f`'s toplevel (deleted from the store) written back
    /// by hand, half: there on disk, unknown to Nix. The stray, and the path.
    fn dependency_of(f: &Fixture) -> (Self, String) {
        let leaf = f
            .closure
            .iter()
            .find(|p| **p != f.toplevel)
            .expect("a dependency")
            .clone();
        let stray = Stray(leaf.clone().into());
        std::fs::create_dir(&leaf).unwrap();
        std::fs::write(Path::new(&leaf).join("half-copied"), "x").unwrap();
        (stray, leaf)
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The preflight asks Nix, not the file system, what is present: a closure
/// path that exists under /nix/store but is invalid to Nix is checked in the
/// cache like a missing one.
#[test]
fn a_path_that_exists_but_nix_holds_invalid_is_not_present() {
    use ferry_agent::app::live::{LiveCaches, LiveStore};
    use ferry_agent::io::nix::Store;
    use ferry_agent::reconcile::ports::checked_preflight;
    let f = Fixture::new(3);
    let (_stray, leaf) = Stray::dependency_of(&f);
    let check = nix::run(std::process::Command::new("nix-store").args([
        "--check-validity",
        "--print-invalid",
        &leaf,
    ]));
    assert_eq!(check.trim(), leaf, "Nix holds the stray path invalid");
    let caches = f.caches(&[&f.cache.public_key]);
    let on_disk_only = f.preflight(&caches).unwrap();
    assert_eq!(on_disk_only.on_disk.len(), 1, "{:?}", on_disk_only.on_disk);
    let dir = tempfile::tempdir().unwrap();
    let mut store = LiveStore {
        store: Store {
            profile: dir.path().join("profile"),
            gc_roots: dir.path().join("gcroots"),
            substituters: vec![f.server.url()],
            trusted_public_keys: vec![f.cache.public_key.clone()],
            realise_timeout: std::time::Duration::from_secs(600),
        },
        caches: caches.clone(),
        current_system: dir.path().join("current-system"),
        booted_system: dir.path().join("booted-system"),
    };
    let toplevel = f.toplevel.parse().unwrap();
    let p = crate::common::runtime()
        .block_on(checked_preflight(&mut LiveCaches(caches), &mut store, &toplevel))
        .unwrap();
    assert_eq!(p.paths, f.closure.len());
    assert_eq!(p.missing, f.closure.len(), "the invalid path is to be fetched");
    assert!(p.on_disk.is_empty(), "{:?}", p.on_disk);
}

/// The realise takes the walk its preflight made only while every path
/// that walk found on disk is still valid to Nix: here the preflight alone
/// (not `checked_preflight`) counted an invalid path as present, so the
/// realise walks again, serves that path too, and Nix fetches it (with the
/// preflight's walk, the relay would not serve it and Nix would fail).
#[test]
fn a_preflight_walk_that_counted_an_invalid_path_as_present_is_walked_again() {
    use ferry_agent::io::cache::relay::realise_via_relay;
    let f = Fixture::new(3);
    let (_stray, _) = Stray::dependency_of(&f);
    let caches = f.caches(&[&f.cache.public_key]);
    let walked = f.preflight(&caches).unwrap();
    assert_eq!(walked.on_disk.len(), 1, "{:?}", walked.on_disk);
    let dir = tempfile::tempdir().unwrap();
    let store = crate::common::store(
        dir.path(),
        &f.cache.public_key,
        std::time::Duration::from_secs(600),
    );
    let toplevel: ferry_signer::StorePath = f.toplevel.parse().unwrap();
    {
        let _nix = nix::lock();
        crate::common::runtime()
            .block_on(realise_via_relay(&store, &caches, &toplevel, "current"))
            .unwrap();
    }
    let check = nix::run(
        std::process::Command::new("nix-store")
            .args(["--check-validity", "--print-invalid"])
            .args(&f.closure),
    );
    assert_eq!(check.trim(), "", "every path of the closure is valid");
    // Leave the store as it was: no root, no closure (the stray is gone).
    std::fs::remove_dir_all(dir.path().join("gcroots")).unwrap();
    nix::delete(&f.closure);
}

/// A cache dripping the body of a narinfo (honest headers, one byte every
/// 100 ms) is cut off by the deadline of the request, body included: the
/// cache counts as unreachable (retried), and the preflight ends.
#[test]
fn a_cache_dripping_a_narinfo_is_cut_off_by_the_deadline() {
    use crate::common::hostile::{dripping_cache, within};
    let f = Fixture::new(1);
    let server = dripping_cache(&f.cache.dir, ".narinfo");
    let keys = vec![f.cache.public_key.parse::<CachePublicKey>().unwrap()];
    let caches =
        BinaryCaches::new(&[server.url()], &keys).with_narinfo_deadline(std::time::Duration::from_secs(2));
    let toplevel: ferry_signer::StorePath = f.toplevel.parse().unwrap();
    let err = within("a preflight against a dripping narinfo", move || {
        crate::common::runtime()
            .block_on(caches.preflight(&toplevel, Path::new("/nix/store")))
            .unwrap_err()
    });
    assert!(matches!(err, CacheError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

/// A cache dripping a NAR during the realise is cut off by the realise
/// step's deadline (`switch.timeout`, at least an hour; short here): Nix is
/// stopped, the relay with it, and the step fails naming the limit.
#[test]
fn a_cache_dripping_a_nar_is_cut_off_by_the_realise_deadline() {
    use crate::common::hostile::{dripping_cache, within};
    use ferry_agent::io::cache::relay::realise_via_relay;
    use ferry_agent::io::nix::StoreError;
    let f = Fixture::new(1);
    let server = dripping_cache(&f.cache.dir, "/nar/");
    let keys = vec![f.cache.public_key.parse::<CachePublicKey>().unwrap()];
    let caches = BinaryCaches::new(&[server.url()], &keys);
    let dir = tempfile::tempdir().unwrap();
    let store = crate::common::store(dir.path(), &f.cache.public_key, std::time::Duration::from_secs(3));
    let toplevel: ferry_signer::StorePath = f.toplevel.parse().unwrap();
    let err = within("a realise against a dripping NAR", move || {
        let _nix = nix::lock();
        crate::common::runtime()
            .block_on(realise_via_relay(&store, &caches, &toplevel, "current"))
            .unwrap_err()
    });
    assert!(
        matches!(err, StoreError::Timeout { .. }) || err.to_string().contains("did not finish within 3s"),
        "{err}"
    );
}

/// A cache that never answers a NAR request, sends half a NAR and then
/// nothing, or drips it a byte a second, is cut off by the relay within one progress window (short
/// here; 30 s by default), long before the realise step's deadline (an
/// hour here, as by default): the step fails naming the cache and the
/// stall, a fault the agent retries. Nothing of the closure is left valid
/// in the store, and once the cache serves again the same realise
/// succeeds.
#[test]
fn a_cache_stalling_or_dripping_a_nar_is_cut_off_named_and_retried() {
    use crate::common::hostile::within;
    use ferry_agent::io::cache::client::NarProgress;
    use ferry_agent::io::cache::relay::realise_via_relay;
    use ferry_agent::io::nix::StoreError;
    use ferry_test_support::http::{FaultyCache, NarFault};
    for fault in [NarFault::Hold, NarFault::HalfThenSilence, NarFault::Drip] {
        let f = Fixture::new(1);
        let server = FaultyCache::start(&f.cache.dir, fault);
        let keys = vec![f.cache.public_key.parse::<CachePublicKey>().unwrap()];
        let caches = BinaryCaches::new(&[server.url()], &keys).with_nar_progress(NarProgress {
            window: std::time::Duration::from_secs(2),
            min_bytes: 64 << 10,
        });
        let dir = tempfile::tempdir().unwrap();
        let store = crate::common::store(
            dir.path(),
            &f.cache.public_key,
            std::time::Duration::from_secs(3600),
        );
        let toplevel: ferry_signer::StorePath = f.toplevel.parse().unwrap();
        let realise = move || {
            let (store, caches, toplevel) = (store.clone(), caches.clone(), toplevel.clone());
            within("a realise against a stalling cache", move || {
                let _nix = nix::lock();
                crate::common::runtime().block_on(realise_via_relay(&store, &caches, &toplevel, "current"))
            })
        };
        let err = realise().unwrap_err();
        match &err {
            StoreError::Cache { cache, summary, .. } => {
                assert!(
                    cache.contains(&format!("binary cache {} stalled sending nar/", server.url()))
                        && cache.contains("less than 65536 bytes in 2s; cut off"),
                    "{fault:?}: {cache}"
                );
                assert_eq!(
                    summary,
                    &format!("error: binary cache {} stalled mid-download", server.url())
                );
            }
            other => panic!("{fault:?}: {other}"),
        }
        assert!(server.nar_requests() >= 1);
        // Nothing half realised: no path of the closure is valid.
        let valid = std::process::Command::new("nix-store")
            .args(["--check-validity", "--print-invalid"])
            .args(&f.closure)
            .output()
            .unwrap();
        let invalid = String::from_utf8_lossy(&valid.stdout).lines().count();
        assert_eq!(
            invalid,
            f.closure.len(),
            "{fault:?}: nothing of the closure is valid"
        );
        // The cache recovers: the same realise goes through.
        server.set(NarFault::None);
        realise().unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        let valid = std::process::Command::new("nix-store")
            .args(["--check-validity"])
            .arg(&f.toplevel)
            .status()
            .unwrap();
        assert!(valid.success(), "{fault:?}");
    }
}
