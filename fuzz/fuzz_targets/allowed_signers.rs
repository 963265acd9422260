//! allowed_signers: parsing never panics, and every parsed entry renders to a
//! line that parses back to the same entry.
#![no_main]
use ferry_signer::AllowedSigners;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(signers) = AllowedSigners::parse(text) {
        for entry in signers.entries() {
            let line = entry.to_string();
            let again = AllowedSigners::parse(&line).expect("a rendered entry parses");
            let back = &again.entries()[0];
            assert_eq!(back.key, entry.key);
            assert_eq!(back.namespaces, entry.namespaces);
            assert_eq!(back.principals, entry.principals);
        }
    }
});
