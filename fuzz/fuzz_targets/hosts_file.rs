//! The hosts file (`ferry-signer release --hosts-file`, `rollout`: JSON as
//! `nix eval --json` prints it): parsing never panics, a refusal stays short
//! enough to read, the hosts render to a file that parses back to the same
//! hosts, and a release made of them (one host or more) writes and reads
//! back unchanged.
#![no_main]
use std::path::Path;

use chrono::{TimeZone, Utc};
use ferry_signer::hosts_file::{parse, HostsFileError};
use ferry_signer::Release;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("hosts.json");
    let hosts = match parse(path, data) {
        Ok(hosts) => hosts,
        Err(HostsFileError::Host { problem, .. }) => {
            // The bad name or value is quoted cut to a readable length.
            assert!(problem.chars().count() <= 400, "{problem}");
            return;
        }
        Err(_) => return,
    };
    // Every name and value is validated, so plain quoting renders them.
    let body: Vec<String> = hosts
        .iter()
        .map(|(name, entry)| {
            format!(
                "\"{name}\": {{\"toplevel\": \"{}\", \"action\": \"{}\"}}",
                entry.toplevel, entry.action
            )
        })
        .collect();
    let text = format!("{{{}}}", body.join(", "));
    let again = parse(path, text.as_bytes()).expect("rendered hosts parse");
    assert_eq!(again, hosts);
    if hosts.is_empty() {
        // `{}` is a hosts file, but a release of no hosts is refused before
        // it is written.
        return;
    }
    let release = Release {
        serial: 1,
        created: Utc.with_ymd_and_hms(2027, 1, 6, 11, 0, 0).unwrap(),
        expires: None,
        source: None,
        hosts,
    };
    assert_eq!(Release::parse(release.to_toml().as_bytes()), Ok(release));
});
