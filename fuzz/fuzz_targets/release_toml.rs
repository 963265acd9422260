//! release.toml: parsing never panics, whatever parses renders to text that
//! parses back to the same release, and the canonical fast path never
//! disagrees with the strict parse through the toml crate.
#![no_main]
use ferry_signer::Release;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(release) = Release::parse(data) {
        let text = release.to_toml();
        assert_eq!(Release::parse(text.as_bytes()).as_ref(), Ok(&release));
        assert_eq!(Release::parse_canonical(&text).as_ref(), Some(&release));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(fast) = Release::parse_canonical(text) {
            assert_eq!(Release::parse_with_toml(text), Ok(fast));
        }
    }
});
