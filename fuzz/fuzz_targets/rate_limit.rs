//! A forge's answer read for a rate limit (untrusted: any server at the
//! configured API URL sends it): the status code, the three headers and the
//! body, split from the input. Reading it never panics, and a limit found is
//! never before a second from now nor past the hour the agent waits at most;
//! the jitter added stays within a minute of it.
#![no_main]
use chrono::{DateTime, Utc};
use ferry_signer::forge::{rate_limit, with_jitter, LimitHeaders, RATE_LIMIT_MAX_WAIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let code = u16::from_le_bytes([data[0], data[1]]) % 600;
    let random = u64::from_le_bytes(data[2..10].try_into().unwrap());
    let text = String::from_utf8_lossy(&data[10..]);
    let mut parts = text.splitn(4, '\n');
    let mut next = || parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let headers = LimitHeaders {
        retry_after: next(),
        remaining: next(),
        reset: next(),
    };
    let body = parts.next().unwrap_or_default();
    let now = DateTime::<Utc>::from_timestamp(1_796_000_000, 0).unwrap();
    if let Some(until) = rate_limit(code, &headers, body, now) {
        assert!(code == 403 || code == 429, "only 403 and 429 are limits: {code}");
        assert!(until >= now + chrono::Duration::seconds(1));
        assert!(until <= now + chrono::Duration::from_std(RATE_LIMIT_MAX_WAIT).unwrap());
        let jittered = with_jitter(until, now, random);
        assert!(jittered >= until && jittered < until + chrono::Duration::seconds(60));
    }
});
