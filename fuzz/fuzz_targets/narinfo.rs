//! narinfo: parsing never panics; a parsed narinfo's fingerprint and trust
//! check never panic, and an unsigned one is never trusted.
#![no_main]
use ferry_agent::io::cache::narinfo::{CachePublicKey, NarInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = NarInfo::parse(data) {
        let _ = info.fingerprint();
        let key: CachePublicKey = "c-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
            .parse()
            .unwrap();
        let trusted = info.check_trust(std::slice::from_ref(&key));
        if info.signatures.is_empty() {
            assert!(trusted.is_err());
        }
    }
});
