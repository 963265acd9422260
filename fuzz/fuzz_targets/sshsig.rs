//! SSHSIG: armored and raw blobs never panic the parser, and a parsed
//! signature never verifies over a message it was not made for.
#![no_main]
use ferry_signer::sshsig::SshSignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The seeds sign other messages; nothing the fuzzer makes signs this one.
    if let Ok(sig) = SshSignature::from_blob(data) {
        assert!(sig.verify(b"fuzz").is_err());
    }
    if let Ok(sig) = SshSignature::from_armor(data) {
        assert!(sig.verify(b"fuzz").is_err());
    }
});
