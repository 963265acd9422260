//! Differential test: on a generated history of a few hundred commits signed
//! with a mix of key types, some unsigned, some by keys outside
//! allowed_signers, some outside their validity window, some for another
//! namespace, some tampered, `ferry-signer verify --signature-only` and
//! `git verify-commit` must agree on every commit, and name the same principal.
//!
//! One deliberate difference is left out of the mix: a security-key signature
//! without the touch flag (git accepts it, Ferry refuses it; see
//! `key_types::security_key_signatures_agree_with_ssh_keygen_and_require_a_touch`).

use std::path::{Path, PathBuf};

use ferry_signer::sshsig::GitSigner;

use crate::common::sk::SoftSecurityKey;
use crate::common::*;

/// A small deterministic generator (xorshift64*), so a failure can be replayed
/// with FERRY_DIFFERENTIAL_SEED.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

enum Key {
    /// A key file made by ssh-keygen; git signs with it.
    File(PathBuf),
    /// A software FIDO key (touch flag set); Ferry's library signs with it.
    Sk(Box<SoftSecurityKey>),
}

/// Committer dates around the validity windows in the allowed_signers file.
const DATES: &[&str] = &[
    "2025-01-15T12:00:00+0000",
    "2025-07-01T08:30:00+0000",
    "2026-01-31T23:59:59+0000",
    "2026-02-01T00:00:00+0000",
    "2026-02-15T10:00:00+0100",
    "2026-03-01T00:00:01+0000",
    "2026-11-20T18:00:00-0500",
];

#[test]
fn ferry_and_git_verify_commit_agree_on_a_mixed_history() {
    let seed: u64 = std::env::var("FERRY_DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f3a7_2026_1122);
    let mut rng = Rng(seed | 1);
    let sb = Sandbox::new();
    let repo = sb.repo("history", false);

    let file = |name: &str, t: &str, bits: &str| Key::File(sb.ssh_keygen_bits(name, t, bits));
    let keys: Vec<(&str, Key)> = vec![
        ("alice-ed25519", file("alice", "ed25519", "")),
        ("ci-ed25519", file("ci", "ed25519", "")),
        ("ops-ecdsa256", file("ops256", "ecdsa", "256")),
        ("files-ecdsa384", file("files384", "ecdsa", "384")),
        ("windowed-ecdsa521", file("win521", "ecdsa", "521")),
        ("legacy-rsa", file("legacy", "rsa", "2048")),
        ("twice-ed25519", file("twice", "ed25519", "")),
        ("unlisted-ed25519", file("stranger", "ed25519", "")),
        ("unlisted-ecdsa", file("stranger-ec", "ecdsa", "256")),
        (
            "yubi-sk-ed25519",
            Key::Sk(Box::new(SoftSecurityKey::ed25519(0x01))),
        ),
        ("yubi-sk-ecdsa", Key::Sk(Box::new(SoftSecurityKey::p256(0x05)))),
    ];
    let public = |name: &str| match &keys.iter().find(|(n, _)| *n == name).unwrap().1 {
        Key::File(path) => sb.public_key(path),
        Key::Sk(sk) => sk.public_line(),
    };
    let allowed = sb.allowed_signers(
        "allowed_signers",
        &[
            "# release managers and CI".to_owned(),
            format!("alice@example.com {}", public("alice-ed25519")),
            String::new(),
            format!(
                "\"ci@example.com,bot-?@example.com\" namespaces=\"git\" {}",
                public("ci-ed25519")
            ),
            format!(
                "ops@example.com namespaces=\"git,file\" {}",
                public("ops-ecdsa256")
            ),
            format!(
                "files@example.com namespaces=\"file\" {}",
                public("files-ecdsa384")
            ),
            format!(
                "win@example.com valid-after=\"20260201Z\",valid-before=\"202603010000Z\" {}",
                public("windowed-ecdsa521")
            ),
            format!(
                "\"*@legacy.example.com\" valid-after=\"20250601\" {}",
                public("legacy-rsa")
            ),
            // The first line for this key does not allow git; git's lookup
            // never reaches the second (another principal).
            format!(
                "twice@example.com namespaces=\"file\" {}",
                public("twice-ed25519")
            ),
            format!("other@example.com {}", public("twice-ed25519")),
            format!("yubi@example.com {}", public("yubi-sk-ed25519")),
            format!(
                "yubi@example.com namespaces=\"git\" {}\r",
                public("yubi-sk-ecdsa")
            ),
        ],
    );

    let commits = 240;
    let mut made = Vec::new();
    for serial in 1..=commits {
        let date = DATES[rng.below(DATES.len())];
        let env = [("GIT_COMMITTER_DATE", date), ("GIT_AUTHOR_DATE", date)];
        let kind = rng.below(10);
        let (key_name, key) = &keys[rng.below(keys.len())];
        let content = release_toml(serial, WEB1);
        let (label, id) = match (kind, key) {
            (0, _) => (
                "unsigned".to_owned(),
                sb.git_commit_release(&repo, &content, None, &env),
            ),
            (1, Key::File(path)) => {
                let signed = sb.git_commit_release(&repo, &content, Some(path), &env);
                (format!("tampered {key_name}"), tamper(&sb, &repo, &signed))
            }
            (2, Key::File(path)) => (
                format!("namespace=file {key_name}"),
                wrong_namespace(&sb, &repo, &content, path, &env),
            ),
            (_, Key::File(path)) => (
                key_name.to_string(),
                sb.git_commit_release(&repo, &content, Some(path), &env),
            ),
            (_, Key::Sk(sk)) => {
                let unsigned = sb.git_commit_release(&repo, &content, None, &env);
                let payload = sb.git(&repo, &["cat-file", "commit", &unsigned]) + "\n";
                let armor = sk.sign_git(payload.as_bytes()).unwrap();
                (key_name.to_string(), write_signed(&repo, &payload, &armor))
            }
        };
        sb.git(&repo, &["update-ref", "HEAD", &id]);
        made.push((format!("{label} @ {date}"), id));
    }

    let mut disagreements = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for (label, id) in &made {
        let (git_ok, git_err) = sb.git_verify(&repo, id, &allowed);
        let git_principal = git_ok.then(|| principal_from_git(&git_err));
        let out = sb.verify_signature_only(&repo, id, &allowed);
        let ferry_principal = out.status.success().then(|| stdout(&out).trim().to_owned());
        if git_principal == ferry_principal {
            if git_ok {
                accepted += 1;
            } else {
                refused += 1;
            }
        } else {
            disagreements.push(format!(
                "{id} ({label}): git {git_principal:?} [{}], ferry {ferry_principal:?} [{}]",
                git_err.trim(),
                stderr(&out).trim()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "seed {seed:#x}: ferry and git disagree on {} of {commits} commits:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // The mix must exercise both outcomes, or agreement proves little.
    assert!(
        accepted >= 40 && refused >= 40,
        "accepted {accepted}, refused {refused}"
    );
}

/// `Good "git" signature for P with TYPE key SHA256:…` → P.
fn principal_from_git(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("Good \"git\" signature for "))
        .unwrap_or_else(|| panic!("git accepted without naming a principal: {stderr}"));
    let rest = &line["Good \"git\" signature for ".len()..];
    rest[..rest.rfind(" with ").unwrap()].to_owned()
}

fn write_signed(repo: &Path, payload: &str, armor: &str) -> String {
    let repository = git2::Repository::open(repo).unwrap();
    ferry_signer::git::write_signed_commit(&repository, payload, armor)
        .unwrap()
        .to_string()
}

/// The same signed commit with one byte of its message changed.
fn tamper(sb: &Sandbox, repo: &Path, signed: &str) -> String {
    let object = sb.git(repo, &["cat-file", "commit", signed]) + "\n";
    let changed = object.replacen("\nrelease\n", "\nrelease!\n", 1);
    assert_ne!(object, changed);
    let file = sb.path("tampered-object");
    std::fs::write(&file, changed).unwrap();
    sb.git(
        repo,
        &["hash-object", "-t", "commit", "-w", file.to_str().unwrap()],
    )
}

/// A commit whose signature was made by `ssh-keygen -Y sign -n file`.
fn wrong_namespace(sb: &Sandbox, repo: &Path, content: &str, key: &Path, env: &[(&str, &str)]) -> String {
    let unsigned = sb.git_commit_release(repo, content, None, env);
    let payload = sb.git(repo, &["cat-file", "commit", &unsigned]) + "\n";
    let file = sb.path("payload");
    std::fs::write(&file, &payload).unwrap();
    let _ = std::fs::remove_file(sb.path("payload.sig"));
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "file", "-f"])
        .arg(key)
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let armor = std::fs::read_to_string(sb.path("payload.sig")).unwrap();
    write_signed(repo, &payload, &armor)
}
