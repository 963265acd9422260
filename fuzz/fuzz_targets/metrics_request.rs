//! The metrics endpoint's request line (any local process can connect): only
//! a GET or HEAD of `/metrics` is ever answered with the page; anything else
//! is an HTTP error, and nothing panics.
#![no_main]
use ferry_agent::metrics::request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match request(line) {
        Ok(_) => {
            let target = line.split(' ').nth(1).unwrap_or("");
            assert_eq!(target.split('?').next(), Some("/metrics"));
            assert!(line.starts_with("GET ") || line.starts_with("HEAD "));
        }
        Err(code) => assert!([400, 404, 405].contains(&code)),
    }
});
