//! Interoperation with the reference implementations, in both directions.

use crate::common::*;
use ferry_signer::sshsig::SshSignature;

/// A release made by ferry-signer with an ssh-keygen key passes `git verify-commit`.
#[test]
fn ferry_release_passes_git_verify_commit() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let key = sb.ssh_keygen("release_key", "ed25519");
    let out = sb.release(
        repo.to_str().unwrap(),
        key.to_str().unwrap(),
        &["--host", &format!("web1={WEB1}")],
        &[],
    );
    let commit = assert_ok(&out).trim().to_owned();
    assert_eq!(commit.len(), 40);
    assert_eq!(sb.git(&repo, &["rev-parse", "deploy"]), commit);

    let allowed = sb.allowed_signers("allowed", &[format!("ci@example.com {}", sb.public_key(&key))]);
    let (ok, err) = sb.git_verify(&repo, "deploy", &allowed);
    assert!(ok, "git verify-commit refused ferry's release: {err}");
    assert!(err.contains("Good \"git\" signature for ci@example.com"), "{err}");

    // A key that git does not know: git refuses too, so the check above is meaningful.
    let other = sb.ssh_keygen("other", "ed25519");
    let wrong = sb.allowed_signers("wrong", &[format!("ci@example.com {}", sb.public_key(&other))]);
    assert!(!sb.git_verify(&repo, "deploy", &wrong).0);
}

/// A key from `ferry-signer keygen` (age, passphrase): its printed
/// allowed_signers line works for git.
#[test]
fn keygen_key_signs_for_git() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let key = sb.path("ferry.key");
    let pass = [("FERRY_SIGNER_PASSPHRASE", "correct horse")];
    let out = sb.signer(
        &[
            "keygen",
            "--out",
            key.to_str().unwrap(),
            "--principal",
            "ci@example.com",
        ],
        &pass,
    );
    let line = assert_ok(&out);
    assert!(
        line.starts_with("ci@example.com namespaces=\"git\" ssh-ed25519 "),
        "{line}"
    );
    let pub_line = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    assert!(pub_line.starts_with("ssh-ed25519 "));
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(secret.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = sb.release(
        repo.to_str().unwrap(),
        key.to_str().unwrap(),
        &["--host", &format!("web1={WEB1}")],
        &pass,
    );
    assert_ok(&out);
    let allowed = sb.allowed_signers("allowed", &[line.trim().to_owned()]);
    let (ok, err) = sb.git_verify(&repo, "deploy", &allowed);
    assert!(ok, "{err}");
}

/// A commit signed by `git commit -S` (ssh format) passes `ferry-signer verify`.
#[test]
fn git_signed_commit_passes_ferry_verify() {
    let sb = Sandbox::new();
    let repo = sb.repo("work", false);
    let key = sb.ssh_keygen("alice", "ed25519");
    sb.git_commit_release(&repo, &release_toml(7, WEB1), Some(&key), &[]);
    let allowed = sb.allowed_signers("allowed", &[format!("alice@example.com {}", sb.public_key(&key))]);
    assert!(sb.git_verify(&repo, "HEAD", &allowed).0, "git itself accepts it");
    let out = sb.signer(
        &[
            "verify",
            "--repo",
            repo.to_str().unwrap(),
            "--rev",
            "HEAD",
            "--allowed-signers",
            allowed.to_str().unwrap(),
        ],
        &[],
    );
    let line = assert_ok(&out);
    assert!(line.starts_with("ok "), "{line}");
    assert!(
        line.contains("serial 7 signed by alice@example.com (ssh-ed25519 SHA256:"),
        "{line}"
    );
    assert!(line.contains("1 host(s): web1"), "{line}");
}

/// An `ssh-keygen -Y sign -n git` signature over a commit payload verifies,
/// both as a bare SSHSIG and once placed in the commit's gpgsig header.
#[test]
fn ssh_keygen_signature_over_payload_verifies() {
    let sb = Sandbox::new();
    let repo_path = sb.repo("work", false);
    let key = sb.ssh_keygen("k", "ed25519");
    // An unsigned commit's object is exactly the payload a signature covers.
    let commit = sb.git_commit_release(&repo_path, &release_toml(1, WEB1), None, &[]);
    let payload = sb.git(&repo_path, &["cat-file", "commit", &commit]) + "\n";
    let payload_file = sb.path("payload");
    std::fs::write(&payload_file, &payload).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "git", "-f"])
        .arg(&key)
        .arg(&payload_file)
        .status()
        .unwrap();
    assert!(status.success());
    let armor = std::fs::read(sb.path("payload.sig")).unwrap();

    let sig = SshSignature::from_armor(&armor).unwrap();
    sig.verify(payload.as_bytes()).unwrap();
    assert!(sig.verify(format!("{payload}x").as_bytes()).is_err());

    let repo = git2::Repository::open(&repo_path).unwrap();
    let signed =
        ferry_signer::git::write_signed_commit(&repo, &payload, std::str::from_utf8(&armor).unwrap())
            .unwrap();
    let allowed = sb.allowed_signers("allowed", &[format!("k@example.com {}", sb.public_key(&key))]);
    let signers = ferry_signer::AllowedSigners::load(&allowed).unwrap();
    let v = ferry_signer::verify_release(&repo, &signed.to_string(), &signers, chrono::Utc::now()).unwrap();
    assert_eq!(v.signer.principal, "k@example.com");
    assert!(
        sb.git_verify(&repo_path, &signed.to_string(), &allowed).0,
        "git agrees"
    );
}

/// Releases chain: serial increments, unnamed hosts are kept, work tree untouched.
#[test]
fn successive_releases_on_a_work_tree_repo() {
    let sb = Sandbox::new();
    let repo = sb.repo("work", false);
    std::fs::write(repo.join("README"), "deploy branch\n").unwrap();
    let key = sb.ssh_keygen("k", "ed25519");
    let r = repo.to_str().unwrap();
    let k = key.to_str().unwrap();
    assert_ok(&sb.release(
        r,
        k,
        &["--host", &format!("web1={WEB1}"), "--host", &format!("db1={DB1}")],
        &[],
    ));
    let second = assert_ok(&sb.release(
        r,
        k,
        &[
            "--host",
            &format!("web1={WEB1_V2}"),
            "--source",
            "9fceb02d0ae598e95dc970b74767f19372d61af8",
            "--expires-in",
            "30d",
        ],
        &[],
    ));
    let shown = assert_ok(&sb.signer(&["show", "--repo", r, "--json"], &[]));
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["commit"], second.trim());
    assert_eq!(json["serial"], 2);
    assert_eq!(json["hosts"]["web1"]["toplevel"], WEB1_V2);
    assert_eq!(json["hosts"]["db1"]["toplevel"], DB1, "unnamed host kept");
    assert_eq!(json["source"], "9fceb02d0ae598e95dc970b74767f19372d61af8");
    assert!(json["expires"].is_string());
    assert_eq!(sb.git(&repo, &["rev-list", "--count", "deploy"]), "2");
    assert_eq!(
        sb.git(&repo, &["status", "--porcelain"]),
        "?? README",
        "work tree and index untouched"
    );
    let msg = sb.git(&repo, &["log", "-1", "--format=%B", "deploy"]);
    assert!(msg.starts_with("release 2: 2 host(s) from 9fceb02d0ae5"), "{msg}");
    assert!(msg.contains("web1: nixos-system-web1-25.11"), "{msg}");

    let allowed = sb.allowed_signers("allowed", &[format!("ci {}", sb.public_key(&key))]);
    assert!(sb.git_verify(&repo, "deploy~1", &allowed).0);
    assert!(sb.git_verify(&repo, "deploy", &allowed).0);
}
