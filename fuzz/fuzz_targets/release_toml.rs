//! release.toml: parsing never panics, whatever parses renders to text that
//! parses back to the same release, the canonical fast path never disagrees
//! with the strict parse through the toml crate, and a read for one host
//! gives the strict parse's header and that host's entry (for every host the
//! release names, and one it does not).
#![no_main]
use ferry_signer::{HostName, Release, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(release) = Release::parse(data) {
        let text = release.to_toml();
        assert_eq!(Release::parse(text.as_bytes()).as_ref(), Ok(&release));
        assert_eq!(Release::parse_canonical(&text).as_ref(), Some(&release));
        let absent: HostName = "not-in-any-release-0".parse().unwrap();
        for host in release.hosts.keys().chain([&absent]) {
            let mut one = release.clone();
            one.hosts.retain(|name, _| name == host);
            for bytes in [data, text.as_bytes()] {
                assert_eq!(Release::parse_scoped(bytes, Scope::Host(host)).as_ref(), Ok(&one));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(fast) = Release::parse_canonical(text) {
            assert_eq!(Release::parse_with_toml(text), Ok(fast));
        }
    }
});
