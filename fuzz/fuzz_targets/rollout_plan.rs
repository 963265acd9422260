//! The rollout plan (`rollout.toml`): parsing never panics, and a plan that
//! resolves puts every host in exactly one wave.
#![no_main]
use std::collections::BTreeMap;

use ferry_signer::plan::{Plan, MAX_WAVES};
use ferry_signer::{HostEntry, HostName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = Plan::parse(data) else { return };
    assert!(!plan.waves.is_empty() && plan.waves.len() <= MAX_WAVES);
    let hosts: BTreeMap<HostName, HostEntry> = ["canary1", "web1", "web2", "db1", "a", "b-c"]
        .iter()
        .map(|h| {
            let entry = HostEntry {
                toplevel: format!("/nix/store/{}-nixos-system-{h}", "a".repeat(32))
                    .parse()
                    .unwrap(),
                action: Default::default(),
            };
            (h.parse().unwrap(), entry)
        })
        .collect();
    if let Ok(waves) = plan.resolve(&hosts) {
        assert_eq!(waves.len(), plan.waves.len());
        let mut seen = std::collections::BTreeSet::new();
        for w in &waves {
            for h in &w.hosts {
                assert!(seen.insert(h.clone()), "{h} in two waves");
            }
        }
        assert_eq!(seen.len(), hosts.len());
    }
});
