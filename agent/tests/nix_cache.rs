//! The narinfo parser and signature check against narinfos real Nix wrote
//! and signed (`nix copy`, `nix store sign`).

use std::process::Command;

use ferry_agent::io::cache::narinfo::{CachePublicKey, NarInfo, TrustError};
use ferry_test_support::nix::{self, Cache};

#[test]
fn narinfos_signed_by_nix_verify_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let top = nix::build_toplevel(dir.path(), "web1", &ferry_test_support::unique("nc"), 3);
    let cache = Cache::new(&dir.path().join("cache"), "test-cache-1");
    cache.copy(&top);

    let closure = nix::run(Command::new("nix-store").args(["-qR", &top]));
    let paths: Vec<&str> = closure.lines().collect();
    assert_eq!(paths.len(), 5, "toplevel, its kernel and a chain of three");

    let trusted: CachePublicKey = cache.public_key.parse().unwrap();
    let stranger = Cache::new(&dir.path().join("other"), "stranger-1");
    let untrusted: CachePublicKey = stranger.public_key.parse().unwrap();

    // Before signing: every path is refused as unsigned.
    for p in &paths {
        let info = NarInfo::parse(cache.narinfo(p).as_bytes()).unwrap();
        assert!(
            matches!(
                info.check_trust(std::slice::from_ref(&trusted)),
                Err(TrustError::Unsigned { .. })
            ),
            "{p}"
        );
    }

    cache.sign(&top);
    for p in &paths {
        let text = cache.narinfo(p);
        let info = NarInfo::parse(text.as_bytes()).unwrap();
        assert_eq!(info.store_path.as_str(), *p);
        // Our fingerprint is the one Nix signed: the signature verifies.
        assert_eq!(
            info.check_trust(std::slice::from_ref(&trusted)).unwrap().name,
            "test-cache-1"
        );
        // Only a stranger's key pinned: refused.
        assert!(matches!(
            info.check_trust(std::slice::from_ref(&untrusted)),
            Err(TrustError::UntrustedKeys { .. })
        ));
        // The NarSize altered after signing: the signature no longer matches.
        let size_line = text.lines().find(|l| l.starts_with("NarSize: ")).unwrap();
        let n: u64 = size_line["NarSize: ".len()..].parse().unwrap();
        let tampered = text.replace(size_line, &format!("NarSize: {}", n + 1));
        let info = NarInfo::parse(tampered.as_bytes()).unwrap();
        assert!(matches!(
            info.check_trust(std::slice::from_ref(&trusted)),
            Err(TrustError::BadSignature { .. })
        ));
    }

    // The toplevel references its first dependency, its kernel and itself
    // (its switch script names its own path), by base name.
    let top_info = NarInfo::parse(cache.narinfo(&top).as_bytes()).unwrap();
    assert_eq!(top_info.references.len(), 3);
    for r in &top_info.references {
        assert!(paths.iter().any(|p| p.ends_with(r.as_str())), "{r}");
    }
}
