//! `s3://` substituter URLs (`cache.substituters`, as Nix spells them):
//! parsing never panics; what parses renders back to a URL that parses to
//! the same cache; and the URL of an object is on the cache's own endpoint,
//! with the object's key as its whole path: no user part, query or fragment
//! that would send a signed request elsewhere or cut the key off.
#![no_main]
use ferry_signer::s3::{uri_encode, Addressing, S3Cache};
use libfuzzer_sys::fuzz_target;

/// The cache as an `s3://` URL with every parameter spelled out.
fn render(c: &S3Cache) -> String {
    let style = match c.addressing {
        Addressing::Path => "path",
        Addressing::VirtualHost => "virtual",
    };
    let mut url = format!(
        "s3://{}?region={}&scheme={}&endpoint={}&addressing-style={style}",
        c.bucket, c.region, c.scheme, c.endpoint
    );
    if let Some(p) = &c.profile {
        url.push_str(&format!("&profile={p}"));
    }
    url
}

fn check(url: &str) {
    let Ok(cache) = S3Cache::parse(url) else {
        return;
    };
    assert!((3..=63).contains(&cache.bucket.len()));
    assert!(cache.scheme == "https" || cache.scheme == "http");
    assert!(!cache.endpoint.is_empty());
    let again = S3Cache::parse(&render(&cache)).expect("a rendered cache parses");
    assert_eq!(again, cache);
    for key in [
        "nix-cache-info",
        "0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld.narinfo",
        "nar/1x2y.nar.zst",
    ] {
        let object = cache.object_url(key);
        let Ok(parsed) = url::Url::parse(&object) else {
            // Refused before any request is made: nothing is sent.
            continue;
        };
        assert_eq!(parsed.scheme(), cache.scheme, "{object}");
        assert!(
            parsed.username().is_empty() && parsed.password().is_none(),
            "{object}"
        );
        assert_eq!(parsed.query(), None, "{object}");
        assert_eq!(parsed.fragment(), None, "{object}");
        let tail = format!("/{}", uri_encode(key, false));
        assert!(parsed.path().ends_with(&tail), "{object}: path {}", parsed.path());
        if cache.addressing == Addressing::Path {
            assert_eq!(parsed.path(), format!("/{}{tail}", cache.bucket), "{object}");
        } else {
            assert_eq!(parsed.path(), tail, "{object}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    // Most inputs lack the scheme; try them as the part after it too.
    check(&format!("s3://{text}"));
});
