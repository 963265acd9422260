//! S3 error documents (untrusted: any server at a configured endpoint sends
//! them): reading one never panics, and what it yields is bounded and free
//! of control characters, since it ends up in logs and commit statuses.
#![no_main]
use ferry_signer::s3::parse_error;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let e = parse_error(data);
    for v in [e.code, e.message, e.region].into_iter().flatten() {
        assert!(v.chars().count() <= 200);
        assert!(!v.chars().any(char::is_control));
    }
});
