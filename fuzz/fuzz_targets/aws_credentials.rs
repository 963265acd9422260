//! The AWS shared credentials and config files (`cache.s3_credentials_file`,
//! `~/.aws/credentials`; `[profile NAME]` sections as the config file spells
//! them): reading one never panics, names and keys come out trimmed (keys in
//! lower case), and the profiles render to a file that reads back the same.
#![no_main]
use std::collections::BTreeMap;

use ferry_signer::s3::parse_shared_credentials;
use libfuzzer_sys::fuzz_target;

/// The profiles as a file: each section, then its `key = value` lines.
fn render<V: std::ops::Deref<Target = String>>(profiles: &BTreeMap<String, BTreeMap<String, V>>) -> String {
    let mut text = String::new();
    for (name, keys) in profiles {
        // `[profile NAME]` keeps a name that itself starts with "profile ".
        if name.is_empty() {
            text.push_str("[]\n");
        } else {
            text.push_str(&format!("[profile {name}]\n"));
        }
        for (k, v) in keys {
            text.push_str(&format!("{k} = {}\n", v.as_str()));
        }
    }
    text
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let profiles = parse_shared_credentials(text);
    assert!(profiles.len() <= text.lines().count());
    for (name, keys) in &profiles {
        assert_eq!(name.trim(), name);
        assert!(!name.contains('\n'));
        for (k, v) in keys {
            assert_eq!(k.trim(), k);
            assert_eq!(k.to_ascii_lowercase(), *k);
            assert!(!k.contains('='));
            assert_eq!(v.trim(), v.as_str());
        }
    }
    let again = parse_shared_credentials(&render(&profiles));
    assert_eq!(again, profiles);
});
