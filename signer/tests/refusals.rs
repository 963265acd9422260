//! Every refusal of issue "Signed releases", each checked for a message that
//! says what is wrong, and, where git has an opinion, that git agrees.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A repository with one signed release and an allowed_signers file for its key.
struct Fixture {
    sb: Sandbox,
    repo: PathBuf,
    key: PathBuf,
    allowed: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let sb = Sandbox::new();
        let repo = sb.repo("work", false);
        let key = sb.ssh_keygen("alice", "ed25519");
        let allowed = sb.allowed_signers("allowed", &[format!("alice@example.com {}", sb.public_key(&key))]);
        Self {
            sb,
            repo,
            key,
            allowed,
        }
    }

    fn verify(&self, rev: &str) -> std::process::Output {
        self.verify_with(rev, &self.allowed)
    }

    fn verify_with(&self, rev: &str, allowed: &Path) -> std::process::Output {
        self.sb.signer(
            &[
                "verify",
                "--repo",
                self.repo.to_str().unwrap(),
                "--rev",
                rev,
                "--allowed-signers",
                allowed.to_str().unwrap(),
            ],
            &[],
        )
    }

    fn signed(&self, content: &str) -> String {
        self.sb
            .git_commit_release(&self.repo, content, Some(&self.key), &[])
    }

    /// Writes a commit object by hand and returns its id.
    fn write_raw_commit(&self, object: &str) -> String {
        let path = self.sb.path("raw-commit");
        std::fs::write(&path, object).unwrap();
        self.sb.git(
            &self.repo,
            &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()],
        )
    }

    /// Signs `commit`'s payload with ssh-keygen using extra flags, and writes
    /// the result as a new commit.
    fn resign_with_ssh_keygen(&self, commit: &str, extra: &[&str]) -> String {
        let payload = self.sb.git(&self.repo, &["cat-file", "commit", commit]) + "\n";
        let file = self.sb.path("payload");
        std::fs::write(&file, &payload).unwrap();
        let _ = std::fs::remove_file(self.sb.path("payload.sig"));
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-f"])
            .arg(&self.key)
            .args(extra)
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        let armor = std::fs::read_to_string(self.sb.path("payload.sig")).unwrap();
        let repo = git2::Repository::open(&self.repo).unwrap();
        ferry_signer::git::write_signed_commit(&repo, &payload, &armor)
            .unwrap()
            .to_string()
    }

    fn git_accepts(&self, rev: &str, allowed: &Path) -> bool {
        self.sb.git_verify(&self.repo, rev, allowed).0
    }
}

#[test]
fn unsigned_commit() {
    let f = Fixture::new();
    let c =
        f.sb.git_commit_release(&f.repo, &release_toml(1, WEB1), None, &[]);
    assert_refused(&f.verify(&c), "is not signed");
    assert!(!f.git_accepts(&c, &f.allowed));
}

#[test]
fn key_not_in_allowed_signers() {
    let f = Fixture::new();
    let other = f.sb.ssh_keygen("mallory", "ed25519");
    let c =
        f.sb.git_commit_release(&f.repo, &release_toml(1, WEB1), Some(&other), &[]);
    assert_refused(&f.verify(&c), "is not listed in allowed_signers");
    assert!(!f.git_accepts(&c, &f.allowed));
}

#[test]
fn tampered_message_or_tree() {
    let f = Fixture::new();
    let good = f.signed(&release_toml(1, WEB1));
    assert_ok(&f.verify(&good));
    let object = f.sb.git(&f.repo, &["cat-file", "commit", &good]) + "\n";

    let new_message = f.write_raw_commit(&object.replace("\n\nrelease\n", "\n\nrelease (edited)\n"));
    assert_ne!(new_message, good);
    assert_refused(&f.verify(&new_message), "does not match the signed content");
    assert!(!f.git_accepts(&new_message, &f.allowed));

    let other_tree = {
        std::fs::write(f.repo.join("release.toml"), release_toml(1, WEB1_V2)).unwrap();
        f.sb.git(&f.repo, &["add", "release.toml"]);
        f.sb.git(&f.repo, &["write-tree"])
    };
    let old_tree = f.sb.git(&f.repo, &["rev-parse", &format!("{good}^{{tree}}")]);
    let new_tree = f.write_raw_commit(&object.replace(&old_tree, &other_tree));
    assert_refused(&f.verify(&new_tree), "does not match the signed content");
    assert!(!f.git_accepts(&new_tree, &f.allowed));
}

#[test]
fn namespace_other_than_git() {
    let f = Fixture::new();
    let c =
        f.sb.git_commit_release(&f.repo, &release_toml(1, WEB1), None, &[]);
    let file_ns = f.resign_with_ssh_keygen(&c, &["-n", "file"]);
    assert_refused(&f.verify(&file_ns), "namespace `file`, not `git`");
    assert!(!f.git_accepts(&file_ns, &f.allowed));
    // Control: the same route with namespace git and sha256 is accepted by both.
    let git_ns = f.resign_with_ssh_keygen(&c, &["-n", "git", "-O", "hashalg=sha256"]);
    assert_ok(&f.verify(&git_ns));
    assert!(f.git_accepts(&git_ns, &f.allowed));
}

#[test]
fn malformed_armor_and_blob() {
    let f = Fixture::new();
    let c =
        f.sb.git_commit_release(&f.repo, &release_toml(1, WEB1), None, &[]);
    let payload = f.sb.git(&f.repo, &["cat-file", "commit", &c]) + "\n";
    let repo = git2::Repository::open(&f.repo).unwrap();
    let write = |sig: &str| {
        ferry_signer::git::write_signed_commit(&repo, &payload, sig)
            .unwrap()
            .to_string()
    };

    let pgp = write("-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n-----END PGP SIGNATURE-----");
    assert_refused(&f.verify(&pgp), "armor is malformed");
    let truncated = write("-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----");
    assert_refused(&f.verify(&truncated), "blob is malformed: truncated public key");
    let not_b64 = write("-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----");
    assert_refused(&f.verify(&not_b64), "not valid base64");
    for c in [pgp, truncated, not_b64] {
        assert!(!f.git_accepts(&c, &f.allowed));
    }
}

#[test]
fn key_outside_its_validity_window() {
    let f = Fixture::new();
    let key = f.sb.public_key(&f.key);
    // Committed 2026-11-21 12:00 UTC; git checks the window against this time.
    let env = [("GIT_COMMITTER_DATE", "2026-11-21T12:00:00Z")];
    let c =
        f.sb.git_commit_release(&f.repo, &release_toml(1, WEB1), Some(&f.key), &env);

    let expired =
        f.sb.allowed_signers("expired", &[format!("alice valid-before=\"20261101Z\" {key}")]);
    assert_refused(&f.verify_with(&c, &expired), "expired at 2026-11-01");
    assert!(!f.git_accepts(&c, &expired));

    let future =
        f.sb.allowed_signers("future", &[format!("alice valid-after=\"20261201Z\" {key}")]);
    assert_refused(&f.verify_with(&c, &future), "is not valid until 2026-12-01");
    assert!(!f.git_accepts(&c, &future));

    let inside = f.sb.allowed_signers(
        "inside",
        &[format!(
            "alice valid-after=\"20261101Z\",valid-before=\"20261201Z\" {key}"
        )],
    );
    assert_ok(&f.verify_with(&c, &inside));
    assert!(f.git_accepts(&c, &inside));
}

#[test]
fn principal_whose_namespaces_exclude_git() {
    let f = Fixture::new();
    let c = f.signed(&release_toml(1, WEB1));
    let file_only = f.sb.allowed_signers(
        "file-only",
        &[format!("alice namespaces=\"file\" {}", f.sb.public_key(&f.key))],
    );
    assert_refused(
        &f.verify_with(&c, &file_only),
        "is not allowed to sign for namespace `git`",
    );
    assert!(!f.git_accepts(&c, &file_only));
}

#[test]
fn cert_authority_lines_are_refused_clearly() {
    let f = Fixture::new();
    let c = f.signed(&release_toml(1, WEB1));
    let ca = f.sb.allowed_signers(
        "ca",
        &[format!(
            "*@example.com cert-authority {}",
            f.sb.public_key(&f.key)
        )],
    );
    assert_refused(
        &f.verify_with(&c, &ca),
        "line 1: `cert-authority` lines are not supported",
    );
}

#[test]
fn release_toml_refusals() {
    let f = Fixture::new();
    let cases: Vec<(String, &str)> = vec![
        ("format = 1\nserial = 1\n[hosts.web1\n".into(), "not valid TOML"),
        (
            release_toml(1, WEB1).replace("format = 1", "format = 2"),
            "format 2, but this Ferry understands only format 1",
        ),
        (
            release_toml(1, "/nix/store/abc-web1"),
            "hosts.web1.toplevel: `/nix/store/abc-web1` is not a Nix store path",
        ),
        (
            release_toml(1, WEB1).replace("[hosts.web1]", "[hosts.\"web1.example.com\"]"),
            "is not a valid host name",
        ),
        (
            format!("# {}\n{}", "x".repeat(8 << 20), release_toml(1, WEB1)),
            "more than the 8388608-byte limit",
        ),
    ];
    for (content, needle) in cases {
        let c = f.signed(&content);
        assert_refused(&f.verify(&c), needle);
    }
    // No release.toml at all.
    f.sb.git(&f.repo, &["rm", "-q", "release.toml"]);
    std::fs::write(f.repo.join("other"), "x").unwrap();
    f.sb.git(&f.repo, &["add", "other"]);
    let signing = format!("user.signingkey={}", f.key.display());
    f.sb.git(
        &f.repo,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing,
            "commit",
            "-q",
            "-S",
            "-m",
            "no release",
        ],
    );
    assert_refused(&f.verify("HEAD"), "has no release.toml");
}

#[test]
fn expired_release() {
    let f = Fixture::new();
    let content = release_toml(1, WEB1).replace(
        "created = 2026-11-21T23:00:00Z",
        "created = 2020-01-01T00:00:00Z\nexpires = 2020-02-01T00:00:00Z",
    );
    let c = f.signed(&content);
    assert_refused(&f.verify(&c), "expired at 2020-02-01");
}

#[test]
fn wrong_passphrase_or_identity_writes_nothing() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let r = repo.to_str().unwrap();
    let host = format!("web1={WEB1}");

    let pass_key = sb.path("pass.key");
    assert_ok(&sb.signer(
        &["keygen", "--out", pass_key.to_str().unwrap()],
        &[("FERRY_SIGNER_PASSPHRASE", "right")],
    ));
    let out = sb.release(
        r,
        pass_key.to_str().unwrap(),
        &["--host", &host],
        &[("FERRY_SIGNER_PASSPHRASE", "wrong")],
    );
    assert_refused(&out, "wrong passphrase");

    let id = age::x25519::Identity::generate();
    let stranger = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    let stranger_file = sb.path("stranger.txt");
    std::fs::write(&stranger_file, stranger.to_string().expose_secret()).unwrap();
    let age_key = sb.path("age.key");
    assert_ok(&sb.signer(
        &[
            "keygen",
            "--out",
            age_key.to_str().unwrap(),
            "--recipient",
            &id.to_public().to_string(),
        ],
        &[],
    ));
    let out = sb.release(
        r,
        age_key.to_str().unwrap(),
        &["--identity", stranger_file.to_str().unwrap(), "--host", &host],
        &[],
    );
    assert_refused(&out, "none of the given age identities can decrypt this key");
    let out = sb.release(r, age_key.to_str().unwrap(), &["--host", &host], &[]);
    assert_refused(&out, "no --identity was given");

    // Nothing was written: no branch, no objects.
    let refs = sb.git(&repo, &["for-each-ref"]);
    assert_eq!(refs, "");
    let objects = sb.git(&repo, &["count-objects", "-v"]);
    assert!(
        objects.contains("count: 0") && objects.contains("in-pack: 0"),
        "{objects}"
    );

    // And the right identity works.
    let id_file = sb.path("id.txt");
    std::fs::write(&id_file, id.to_string().expose_secret()).unwrap();
    assert_ok(&sb.release(
        r,
        age_key.to_str().unwrap(),
        &["--identity", id_file.to_str().unwrap(), "--host", &host],
        &[],
    ));
}
