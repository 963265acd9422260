//! The loopback relay's request line (any local process can connect): a
//! route is only ever a GET or HEAD of a plain relative path, never one that
//! climbs out of the substituter (`..`, empty or absolute segments), and
//! only under the relay's own session.
#![no_main]
use ferry_agent::io::cache::relay::route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    const SESSION: &str = "0123456789abcdef";
    if let Ok(r) = route(line, SESSION) {
        assert!(line.contains(&format!("/{SESSION}/")), "{line}");
        assert!(!r.rest.is_empty() && !r.rest.starts_with('/'));
        assert!(r.rest.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        assert!(r
            .rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+=/".contains(c)));
    }
});
