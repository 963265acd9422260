//! The agent's configuration (`/etc/ferry/agent.toml`): parsing never
//! panics and gives the same answer twice; the host name given by the
//! machine is used only when the file names none; and a configuration that
//! is accepted keeps the promises the rest of the agent relies on: absolute
//! paths, at least one cache and one trusted key, `s3://` caches that parse,
//! no token sent over plain HTTP off this machine, metrics on loopback only.
#![no_main]
use std::path::Path;

use ferry_agent::config::{Config, ConfigError};
use ferry_agent::policy::window::RebootPolicy;
use ferry_signer::forge::token_travels_safely;
use ferry_signer::s3::S3Cache;
use libfuzzer_sys::fuzz_target;

fn parse(text: &str, default_host: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/ferry/agent.toml"), || {
        Some(default_host.to_owned())
    })
}

fn check(c: &Config) {
    let absolute = |p: &Path| assert!(p.is_absolute(), "{}", p.display());
    absolute(&c.state_dir);
    absolute(&c.source.allowed_signers);
    assert!(!c.source.branch.is_empty());
    assert!(c.source.poll_interval.as_secs() >= 1);
    if let Some(token) = &c.source.token_file {
        absolute(token);
        let url = &c.source.url;
        assert!(!url.starts_with("http://") || token_travels_safely(url), "{url}");
    }
    assert!(!c.cache.substituters.is_empty());
    assert!(!c.cache.trusted_public_keys.is_empty());
    for s in &c.cache.substituters {
        if s.starts_with("s3://") {
            assert!(S3Cache::parse(s).is_ok(), "{s}");
        } else {
            assert!(
                ["https://", "http://", "file://"]
                    .iter()
                    .any(|p| s.starts_with(p)),
                "{s}"
            );
        }
    }
    let credentials = &c.cache.credentials;
    credentials.netrc_file.as_deref().map(absolute);
    credentials.s3_credentials_file.as_deref().map(absolute);
    for (host, file) in &credentials.bearer_token_files {
        assert!(!host.is_empty() && !host.contains(['/', ':', ' ', '@']), "{host}");
        absolute(file);
    }
    if let Some(forge) = &c.report.forge {
        assert!(token_travels_safely(&forge.api_url), "{}", forge.api_url);
        assert!(!forge.api_url.ends_with('/'));
        assert!(!forge.repository.is_empty());
        absolute(&forge.token_file);
    }
    if let Some(dir) = &c.metrics.textfile_dir {
        absolute(dir);
    }
    if let Some(listen) = &c.metrics.listen {
        assert!(listen.ip().is_loopback() && listen.port() != 0, "{listen}");
    }
    if let Some(dir) = &c.approvals.allowed_signers {
        absolute(dir);
    }
    if let RebootPolicy::InWindow(windows) = &c.reboot {
        assert!(!windows.to_string().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = parse(text, "web1");
    let second = parse(text, "web1");
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("the same text parsed once and refused once"),
    }
    let Ok(config) = first else { return };
    check(&config);
    // Another machine's name changes nothing but the host, and only when
    // the file names none.
    match parse(text, "db2") {
        Ok(mut other) => {
            if other.host != config.host {
                assert_eq!((config.host.as_str(), other.host.as_str()), ("web1", "db2"));
                other.host = config.host.clone();
            }
            assert_eq!(other, config);
        }
        Err(e) => panic!("accepted on one machine, refused on another: {e}"),
    }
});
