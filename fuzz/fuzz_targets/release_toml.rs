//! release.toml: parsing never panics, and whatever parses renders to text
//! that parses back to the same release.
#![no_main]
use ferry_signer::Release;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(release) = Release::parse(data) {
        let text = release.to_toml();
        assert_eq!(Release::parse(text.as_bytes()).as_ref(), Ok(&release));
    }
});
