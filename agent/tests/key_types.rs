//! The agent accepts a release signed by any key type git signs with, once the
//! key is pinned in allowed_signers, and refuses it otherwise: the whole
//! poll → fetch → verify → select path of `Agent::reconcile`, against a real
//! repository and a real store path standing for the running system.

use std::path::Path;

use ferry_agent::app::live::LiveStore;
use ferry_agent::config::Config;
use ferry_agent::reconcile::Pass;
use ferry_signer::sshsig::GitSigner;
use ssh_key::PublicKey;

use ferry_test_support::deploy_repo::DeployRepo;
use ferry_test_support::{git, nix, public_key, sk, ssh_keygen, unique};

use crate::common::{agent_toml, runtime, UNUSED_CACHE};

fn line(principal: &str, public: &str, options: &str) -> String {
    format!("{principal} {options}{public}\n")
}

fn public_of_signer(signer: &dyn GitSigner) -> String {
    PublicKey::new(signer.public_key().key_data().clone(), "")
        .to_openssh()
        .unwrap()
}

/// Commits a release naming `web1 → toplevel` with `git commit -S` (ssh
/// format) in the work tree `work` and pushes it to the deploy branch.
fn release_by_git(work: &Path, key: &Path, serial: u64, toplevel: &str) {
    let toml = format!(
        "format = 1\nserial = {serial}\ncreated = 2026-11-21T23:00:00Z\n\n[hosts.web1]\ntoplevel = \"{toplevel}\"\n"
    );
    std::fs::write(work.join("release.toml"), toml).unwrap();
    git(work, &["add", "release.toml"]);
    let signing = format!("user.signingkey={}", key.display());
    git(
        work,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing,
            "commit",
            "-q",
            "-S",
            "--allow-empty",
            "-m",
            "release",
        ],
    );
    git(work, &["push", "-q", "-f", "origin", "HEAD:refs/heads/deploy"]);
}

/// Runs one reconcile with a fresh agent (fresh state) pinning `allowed`.
fn reconcile(dir: &Path, repo: &Path, allowed: &str, current: &Path) -> Pass {
    let state = tempfile::tempdir_in(dir).unwrap();
    let signers = state.path().join("allowed_signers");
    std::fs::write(&signers, allowed).unwrap();
    let url = repo.to_str().unwrap();
    let text = agent_toml("web1", state.path(), url, &signers, UNUSED_CACHE);
    let config = Config::parse(&text, Path::new("agent.toml"), || None).unwrap();
    let mut store = LiveStore::for_config(&config);
    store.current_system = current.to_owned();
    let mut agent = ferry_agent::app::live::agent(config).unwrap();
    agent.ports.store = Box::new(store);
    runtime().block_on(agent.reconcile()).unwrap()
}

#[test]
fn releases_signed_by_every_key_type_are_accepted_when_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let toplevel = nix::build_toplevel(dir.path(), "web1", &unique("keytypes"), 0);
    let current = dir.path().join("current-system");
    std::os::unix::fs::symlink(&toplevel, &current).unwrap();
    let deploy = DeployRepo::new(dir.path());
    let repo = deploy.path.clone();

    let work = dir.path().join("work");
    git(
        dir.path(),
        &["clone", "-q", repo.to_str().unwrap(), work.to_str().unwrap()],
    );
    let stranger = public_key(&ssh_keygen(dir.path(), "stranger", "ed25519", ""));
    let expect_refused_by_stranger = |kind: &str| match reconcile(
        dir.path(),
        &repo,
        &line("rm@example.com", &stranger, ""),
        &current,
    ) {
        Pass::Refused(why) => assert!(why.contains("not listed in allowed_signers"), "{kind}: {why}"),
        r => panic!("{kind}: a release by an unpinned key must be refused, got {r:?}"),
    };

    // Keys made by ssh-keygen, releases committed by `git commit -S`.
    let mut serial = 0;
    for (name, key_type, bits) in [
        ("ed25519", "ed25519", ""),
        ("ecdsa-p256", "ecdsa", "256"),
        ("ecdsa-p384", "ecdsa", "384"),
        ("ecdsa-p521", "ecdsa", "521"),
        ("rsa", "rsa", "3072"),
    ] {
        let key = ssh_keygen(dir.path(), name, key_type, bits);
        serial += 1;
        release_by_git(&work, &key, serial, &toplevel);
        let pinned = line("rm@example.com", &public_key(&key), "namespaces=\"git\" ");
        assert_eq!(
            reconcile(dir.path(), &repo, &pinned, &current),
            Pass::AlreadyRunning,
            "{name}: a release signed by a pinned key is accepted"
        );
        expect_refused_by_stranger(name);
    }

    // Security keys (software stand-ins), releases made by ferry-signer.
    for (name, signer) in [
        ("sk-ed25519", sk::SoftSecurityKey::ed25519(0x01)),
        ("sk-ecdsa", sk::SoftSecurityKey::p256(0x01)),
    ] {
        deploy.release_by(&signer, "web1", &toplevel, chrono::Utc::now());
        let pinned = line("yubi@example.com", &public_of_signer(&signer), "");
        assert_eq!(
            reconcile(dir.path(), &repo, &pinned, &current),
            Pass::AlreadyRunning,
            "{name}"
        );
        expect_refused_by_stranger(name);
    }

    // A security key that was not touched is refused unless its line waives it.
    let untouched = sk::SoftSecurityKey::ed25519(0x00);
    deploy.release_by(&untouched, "web1", &toplevel, chrono::Utc::now());
    let public = public_of_signer(&untouched);
    match reconcile(dir.path(), &repo, &line("yubi", &public, ""), &current) {
        Pass::Refused(why) => assert!(why.contains("without a touch"), "{why}"),
        r => panic!("untouched security key signature must be refused, got {r:?}"),
    }
    assert_eq!(
        reconcile(
            dir.path(),
            &repo,
            &line("yubi", &public, "no-touch-required "),
            &current
        ),
        Pass::AlreadyRunning
    );
}
