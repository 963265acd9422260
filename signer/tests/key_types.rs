//! Every key type git signs commits with (issue: hardware keys, ECDSA, RSA),
//! checked against the reference tools: commits signed by real `git commit -S`
//! with `ssh-keygen` keys, FIDO signatures from a software authenticator
//! cross-checked with `ssh-keygen` through `git verify-commit`, and signing
//! through OpenSSH's own `ssh-agent`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use ferry_signer::sshsig::{self, GitSigner, SignError};
use ssh_key::{Algorithm, HashAlg, PrivateKey, SshSig};

use crate::common::sk::SoftSecurityKey;
use crate::common::*;

/// (file name, ssh-keygen -t, -b, the key type ferry reports)
const SSH_KEYGEN_TYPES: &[(&str, &str, &str, &str)] = &[
    ("ed25519", "ed25519", "", "ssh-ed25519"),
    ("ecdsa256", "ecdsa", "256", "ecdsa-sha2-nistp256"),
    ("ecdsa384", "ecdsa", "384", "ecdsa-sha2-nistp384"),
    ("ecdsa521", "ecdsa", "521", "ecdsa-sha2-nistp521"),
    ("rsa", "rsa", "3072", "ssh-rsa"),
];

/// Makes an unsigned commit with git, then signs its payload with `signer`
/// and writes the signed commit (not on any branch). Returns its id.
fn commit_signed_by(sb: &Sandbox, repo: &Path, serial: u64, signer: &dyn GitSigner) -> String {
    let unsigned = sb.git_commit_release(repo, &release_toml(serial, WEB1), None, &[]);
    let payload = sb.git(repo, &["cat-file", "commit", &unsigned]) + "\n";
    let armor = signer.sign_git(payload.as_bytes()).expect("sign");
    write_signed(repo, &payload, &armor)
}

fn write_signed(repo: &Path, payload: &str, armor: &str) -> String {
    let repository = git2::Repository::open(repo).unwrap();
    ferry_signer::git::write_signed_commit(&repository, payload, armor)
        .unwrap()
        .to_string()
}

#[test]
fn commits_signed_by_git_with_every_ssh_keygen_key_type_verify() {
    let sb = Sandbox::new();
    let repo = sb.repo("work", false);
    for (serial, (name, key_type, bits, reported)) in SSH_KEYGEN_TYPES.iter().enumerate() {
        let key = sb.ssh_keygen_bits(name, key_type, bits);
        let principal = format!("rm-{name}@example.com");
        let allowed = sb.allowed_signers(
            &format!("allowed-{name}"),
            &[format!("{principal} namespaces=\"git\" {}", sb.public_key(&key))],
        );
        let commit = sb.git_commit_release(&repo, &release_toml(serial as u64 + 1, WEB1), Some(&key), &[]);

        let (git_ok, git_err) = sb.git_verify(&repo, &commit, &allowed);
        assert!(git_ok, "{name}: git verify-commit refused: {git_err}");
        let out = sb.verify_signature_only(&repo, &commit, &allowed);
        assert_eq!(assert_ok(&out).trim(), principal, "{name}");
        assert!(stderr(&out).contains(reported), "{name}: {}", stderr(&out));

        let full = sb.signer(
            &[
                "verify",
                "--repo",
                repo.to_str().unwrap(),
                "--rev",
                &commit,
                "--allowed-signers",
                allowed.to_str().unwrap(),
            ],
            &[],
        );
        let line = assert_ok(&full);
        assert!(
            line.contains(&format!("signed by {principal} ({reported} SHA256:")),
            "{line}"
        );

        // Bytes appended inside the signature field: both refuse.
        let object = sb.git(&repo, &["cat-file", "commit", &commit]);
        let (payload, armor) = split_gpgsig(&object);
        let (key_blob, mut sig_field) = sshsig_fields(&dearmor(&armor));
        sig_field.extend(b"GARBAGE");
        let padded = write_signed(&repo, &payload, &armor_blob(&sshsig_blob(&key_blob, &sig_field)));
        assert!(
            !sb.git_verify(&repo, &padded, &allowed).0,
            "{name}: git refuses trailing bytes"
        );
        assert_refused(
            &sb.verify_signature_only(&repo, &padded, &allowed),
            "trailing bytes after the signature",
        );

        // The same key outside allowed_signers: both refuse.
        let other = sb.allowed_signers(
            &format!("other-{name}"),
            &[format!(
                "x@example.com {}",
                sb.public_key(&sb.ssh_keygen_bits(&format!("o{name}"), key_type, bits))
            )],
        );
        assert!(!sb.git_verify(&repo, &commit, &other).0);
        assert_refused(
            &sb.verify_signature_only(&repo, &commit, &other),
            "is not listed in allowed_signers",
        );
    }
}

/// RSA signatures: rsa-sha2-256 is accepted like rsa-sha2-512 (ssh-keygen
/// always makes the latter), and ssh-rsa (SHA-1) is refused, as OpenSSH does.
#[test]
fn rsa_sha2_256_is_accepted_and_ssh_rsa_is_refused_like_openssh() {
    use rsa::pkcs1v15;
    use rsa::signature::{SignatureEncoding, Signer};

    let sb = Sandbox::new();
    let repo = sb.repo("work", false);
    let key_path = sb.ssh_keygen_bits("rsa", "rsa", "2048");
    let key = PrivateKey::read_openssh_file(&key_path).unwrap();
    let rsa_key = {
        let kp = key.key_data().rsa().unwrap();
        let n = |m: &ssh_key::Mpint| rsa::BigUint::from_bytes_be(m.as_positive_bytes().unwrap());
        rsa::RsaPrivateKey::from_components(
            n(&kp.public.n),
            n(&kp.public.e),
            n(&kp.private.d),
            vec![n(&kp.private.p), n(&kp.private.q)],
        )
        .unwrap()
    };
    let allowed = sb.allowed_signers(
        "allowed",
        &[format!("rsa@example.com {}", sb.public_key(&key_path))],
    );

    let unsigned = sb.git_commit_release(&repo, &release_toml(1, WEB1), None, &[]);
    let payload = sb.git(&repo, &["cat-file", "commit", &unsigned]) + "\n";

    let armor = sshsig::sign_git_with(
        key.public_key(),
        "rsa-sha2-256 test",
        payload.as_bytes(),
        |data| {
            let sig = pkcs1v15::SigningKey::<sha2::Sha256>::new(rsa_key.clone()).sign(data);
            Ok(ssh_key::Signature::new(
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
                sig.to_vec(),
            )?)
        },
    )
    .unwrap();
    let sha256 = write_signed(&repo, &payload, &armor);
    assert!(
        sb.git_verify(&repo, &sha256, &allowed).0,
        "git accepts rsa-sha2-256"
    );
    assert_eq!(
        assert_ok(&sb.verify_signature_only(&repo, &sha256, &allowed)).trim(),
        "rsa@example.com"
    );

    // ssh-rsa: a PKCS#1 v1.5 SHA-1 signature in an otherwise valid SSHSIG.
    let to_sign = SshSig::signed_data("git", HashAlg::Sha512, payload.as_bytes()).unwrap();
    let sha1_sig = pkcs1v15::SigningKey::<sha1::Sha1>::new(rsa_key)
        .sign(&to_sign)
        .to_vec();
    let mut sig_field = Vec::new();
    put_string(&mut sig_field, b"ssh-rsa");
    put_string(&mut sig_field, &sha1_sig);
    let blob = sshsig_blob(&key.public_key().to_bytes().unwrap(), &sig_field);
    let sha1 = write_signed(&repo, &payload, &armor_blob(&blob));
    assert!(!sb.git_verify(&repo, &sha1, &allowed).0, "git refuses ssh-rsa");
    assert_refused(
        &sb.verify_signature_only(&repo, &sha1, &allowed),
        "ssh-rsa (RSA with SHA-1)",
    );
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

/// An SSHSIG blob for namespace git / sha512 with a hand-made signature field.
fn sshsig_blob(public_key: &[u8], signature_field: &[u8]) -> Vec<u8> {
    let mut out = b"SSHSIG".to_vec();
    out.extend(1u32.to_be_bytes());
    put_string(&mut out, public_key);
    put_string(&mut out, b"git");
    put_string(&mut out, b"");
    put_string(&mut out, b"sha512");
    put_string(&mut out, signature_field);
    out
}

/// The public key and signature fields of an SSHSIG blob.
fn sshsig_fields(blob: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut rest = &blob[10..];
    let mut next = || {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let field = rest[4..4 + n].to_vec();
        rest = &rest[4 + n..];
        field
    };
    let key = next();
    let (_namespace, _reserved, _hash) = (next(), next(), next());
    (key, next())
}

fn armor_blob(blob: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
        lines.join("\n")
    )
}

fn dearmor(armor: &str) -> Vec<u8> {
    let body: String = armor.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

/// FIDO signatures made as `PROTOCOL.u2f` says, checked by `ssh-keygen`
/// (through `git verify-commit`) and by Ferry, including where the two
/// deliberately differ: Ferry requires the touch flag, OpenSSH's SSHSIG
/// verification ignores it and knows no `no-touch-required` option.
#[test]
fn security_key_signatures_agree_with_ssh_keygen_and_require_a_touch() {
    let sb = Sandbox::new();
    let repo = sb.repo("work", false);
    let mut serial = 0;
    for (kind, make) in [
        (
            "sk-ssh-ed25519@openssh.com",
            SoftSecurityKey::ed25519 as fn(u8) -> SoftSecurityKey,
        ),
        ("sk-ecdsa-sha2-nistp256@openssh.com", SoftSecurityKey::p256),
    ] {
        let key = make(0x01);
        assert!(key.public_line().starts_with(kind), "{}", key.public_line());
        let strict = sb.allowed_signers("strict", &[format!("yubi@example.com {}", key.public_line())]);
        let pin = sb.allowed_signers(
            "pin",
            &[format!("yubi@example.com verify-required {}", key.public_line())],
        );

        // Touched: both accept.
        serial += 1;
        let touched = commit_signed_by(&sb, &repo, serial, &key);
        let (ok, err) = sb.git_verify(&repo, &touched, &strict);
        assert!(ok, "{kind}: git refused a touched signature: {err}");
        assert_eq!(
            assert_ok(&sb.verify_signature_only(&repo, &touched, &strict)).trim(),
            "yubi@example.com"
        );
        // verify-required wants the PIN flag, which a plain touch lacks.
        assert_refused(
            &sb.verify_signature_only(&repo, &touched, &pin),
            "without user verification",
        );

        // Tampered counter (covered by the signature): both refuse.
        let tampered_counter = {
            let object = sb.git(&repo, &["cat-file", "commit", &touched]);
            let (unsigned_payload, armor) = split_gpgsig(&object);
            // Rewriting it unchanged gives the same object: the split is exact.
            assert_eq!(write_signed(&repo, &unsigned_payload, &armor), touched);
            let mut blob = dearmor(&armor);
            let last = blob.len() - 1;
            blob[last] ^= 0x01;
            write_signed(&repo, &unsigned_payload, &armor_blob(&blob))
        };
        assert!(!sb.git_verify(&repo, &tampered_counter, &strict).0, "{kind}");
        assert_refused(
            &sb.verify_signature_only(&repo, &tampered_counter, &strict),
            "does not match the signed content",
        );

        // Not touched: OpenSSH ignores the flag, Ferry refuses unless waived.
        let untouched_key = make(0x00);
        let strict_u = sb.allowed_signers(
            "strict-u",
            &[format!("yubi@example.com {}", untouched_key.public_line())],
        );
        let waived_u = sb.allowed_signers(
            "waived-u",
            &[format!(
                "yubi@example.com no-touch-required {}",
                untouched_key.public_line()
            )],
        );
        serial += 1;
        let untouched = commit_signed_by(&sb, &repo, serial, &untouched_key);
        assert!(
            sb.git_verify(&repo, &untouched, &strict_u).0,
            "{kind}: ssh-keygen accepts an untouched signature (it does not check the flag)"
        );
        assert_refused(
            &sb.verify_signature_only(&repo, &untouched, &strict_u),
            "signed without a touch",
        );
        assert_eq!(
            assert_ok(&sb.verify_signature_only(&repo, &untouched, &waived_u)).trim(),
            "yubi@example.com"
        );
        let (ok, err) = sb.git_verify(&repo, &untouched, &waived_u);
        assert!(!ok, "ssh-keygen does not know no-touch-required: {err}");

        // Touched and verified (PIN): verify-required is satisfied.
        let verified_key = make(0x05);
        let pin_v = sb.allowed_signers(
            "pin-v",
            &[format!(
                "yubi@example.com verify-required {}",
                verified_key.public_line()
            )],
        );
        serial += 1;
        let verified = commit_signed_by(&sb, &repo, serial, &verified_key);
        assert_ok(&sb.verify_signature_only(&repo, &verified, &pin_v));
    }
}

/// Splits a raw commit object into the payload git signs and the armored
/// signature from its `gpgsig` header.
pub fn split_gpgsig(object: &str) -> (String, String) {
    let mut payload = String::new();
    let mut armor = String::new();
    let mut in_sig = false;
    let mut in_headers = true;
    for line in object.split_inclusive('\n') {
        if in_headers && line.starts_with("gpgsig ") {
            in_sig = true;
            armor.push_str(&line["gpgsig ".len()..]);
            continue;
        }
        if in_sig && line.starts_with(' ') {
            armor.push_str(&line[1..]);
            continue;
        }
        in_sig = false;
        if line == "\n" {
            in_headers = false;
        }
        payload.push_str(line);
    }
    if !payload.ends_with('\n') {
        payload.push('\n');
    }
    (payload, armor)
}

/// OpenSSH's `ssh-agent`, listening on a socket in the sandbox; killed on drop.
struct SshAgent {
    child: Child,
    socket: std::path::PathBuf,
}

impl SshAgent {
    fn start(sb: &Sandbox) -> Self {
        let socket = sb.path("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent is installed (openssh-client)");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(socket.exists(), "ssh-agent did not create its socket");
        Self { child, socket }
    }

    fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh-add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn releases_signed_through_ssh_agent_verify_with_git_and_ferry() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let r = repo.to_str().unwrap();
    let agent = SshAgent::start(&sb);
    let sock = agent.socket.to_str().unwrap().to_owned();
    let env = [("SSH_AUTH_SOCK", sock.as_str())];
    let host = format!("web1={WEB1}");

    // No agent at all.
    assert_refused(
        &sb.signer(&["release", "--repo", r, "--ssh-agent", "--host", &host], &[]),
        "SSH_AUTH_SOCK is not set",
    );
    // An empty agent.
    assert_refused(
        &sb.signer(&["release", "--repo", r, "--ssh-agent", "--host", &host], &env),
        "holds no keys",
    );

    let ed = sb.ssh_keygen("ed", "ed25519");
    let ec = sb.ssh_keygen_bits("ec", "ecdsa", "384");
    let rsa = sb.ssh_keygen_bits("rsa", "rsa", "2048");
    agent.add(&ed);
    // One key: used without --key.
    let out = sb.signer(&["release", "--repo", r, "--ssh-agent", "--host", &host], &env);
    let first = assert_ok(&out).trim().to_owned();

    agent.add(&ec);
    agent.add(&rsa);
    assert_refused(
        &sb.signer(&["release", "--repo", r, "--ssh-agent", "--host", &host], &env),
        "choose one with --key",
    );
    let stranger = sb.ssh_keygen("stranger", "ed25519");
    let stranger_pub = format!("{}.pub", stranger.display());
    assert_refused(
        &sb.signer(
            &[
                "release",
                "--repo",
                r,
                "--ssh-agent",
                "--key",
                &stranger_pub,
                "--host",
                &host,
            ],
            &env,
        ),
        "does not hold the key",
    );

    let allowed = sb.allowed_signers(
        "allowed",
        &[
            format!("ed@example.com {}", sb.public_key(&ed)),
            format!("ec@example.com {}", sb.public_key(&ec)),
            format!("rsa@example.com {}", sb.public_key(&rsa)),
        ],
    );
    let mut commits = vec![(first, "ed@example.com")];
    for (key, principal) in [(&ec, "ec@example.com"), (&rsa, "rsa@example.com")] {
        let public = format!("{}.pub", key.display());
        let out = sb.signer(
            &[
                "release",
                "--repo",
                r,
                "--ssh-agent",
                "--key",
                &public,
                "--host",
                &host,
            ],
            &env,
        );
        commits.push((assert_ok(&out).trim().to_owned(), principal));
    }
    for (commit, principal) in &commits {
        let (ok, err) = sb.git_verify(&repo, commit, &allowed);
        assert!(ok, "git refused the agent-signed release by {principal}: {err}");
        let out = sb.verify_signature_only(&repo, commit, &allowed);
        assert_eq!(assert_ok(&out).trim(), *principal);
    }
    // They are real releases on the branch: serials 1, 2, 3.
    let shown = assert_ok(&sb.signer(&["show", "--repo", r, "--json"], &[]));
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["serial"], 3);
}

/// A signer that returns a signature by the wrong key is caught before
/// anything is written.
#[test]
fn a_signature_that_does_not_verify_is_never_written() {
    struct Liar {
        claimed: PrivateKey,
        actual: PrivateKey,
    }
    impl GitSigner for Liar {
        fn public_key(&self) -> ssh_key::PublicKey {
            self.claimed.public_key().clone()
        }
        fn sign_git(&self, payload: &[u8]) -> Result<String, SignError> {
            sshsig::sign_git_with(self.claimed.public_key(), "liar", payload, |data| {
                use p256::ecdsa::signature::Signer;
                Ok(self.actual.try_sign(data).unwrap())
            })
        }
    }
    let liar = Liar {
        claimed: PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap(),
        actual: PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap(),
    };
    let err = liar.sign_git(b"tree x\n").unwrap_err();
    assert!(matches!(err, SignError::Unverifiable { .. }), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
}

/// RSA moduli outside what the `rsa` crate takes by default: a commit signed
/// by git with an 8192-bit key (a committed vector: ssh-keygen needs ~15 s to
/// make such a key) and one signed live with a 1024-bit key. OpenSSH accepts
/// 1024 to 16384 bits; Ferry agrees with `git verify-commit` on both.
#[test]
fn rsa_keys_from_1024_to_8192_bits_verify_like_git() {
    let sb = Sandbox::new();
    let repo = sb.repo("work", false);
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let object = vectors.join("rsa8192.commit");
    let commit = sb.git(
        &repo,
        &["hash-object", "-t", "commit", "-w", object.to_str().unwrap()],
    );
    // The commit's tree must exist for git to show it; write the same tree.
    std::fs::write(
        repo.join("release.toml"),
        "format = 1\nserial = 1\ncreated = 2026-11-22T03:30:00Z\n\n[hosts.web1]\ntoplevel = \"/nix/store/0c0mb5j1x3dg5bf3wk3jh4xyz6p4s3ld-nixos-system-web1-25.11\"\n",
    )
    .unwrap();
    sb.git(&repo, &["add", "release.toml"]);
    sb.git(&repo, &["write-tree"]);
    let public = std::fs::read_to_string(vectors.join("rsa8192.pub")).unwrap();
    let allowed = sb.allowed_signers("allowed8k", &[format!("rm@example.com {}", public.trim())]);
    let (ok, err) = sb.git_verify(&repo, &commit, &allowed);
    assert!(ok, "git accepts the 8192-bit signature: {err}");
    assert_eq!(
        assert_ok(&sb.verify_signature_only(&repo, &commit, &allowed)).trim(),
        "rm@example.com"
    );
    // Tampered: both refuse.
    let text = std::fs::read_to_string(&object).unwrap();
    let tampered_file = sb.path("tampered");
    std::fs::write(&tampered_file, text.replacen("release 1", "release 2", 1)).unwrap();
    let tampered = sb.git(
        &repo,
        &[
            "hash-object",
            "-t",
            "commit",
            "-w",
            tampered_file.to_str().unwrap(),
        ],
    );
    assert!(!sb.git_verify(&repo, &tampered, &allowed).0);
    assert_refused(
        &sb.verify_signature_only(&repo, &tampered, &allowed),
        "does not match the signed content",
    );

    let small = sb.ssh_keygen_bits("rsa1024", "rsa", "1024");
    let allowed = sb.allowed_signers(
        "allowed1k",
        &[format!("old@example.com {}", sb.public_key(&small))],
    );
    let commit = sb.git_commit_release(&repo, &release_toml(2, WEB1), Some(&small), &[]);
    let (git_ok, git_err) = sb.git_verify(&repo, &commit, &allowed);
    let ferry = sb.verify_signature_only(&repo, &commit, &allowed);
    assert_eq!(
        git_ok,
        ferry.status.success(),
        "git: {git_err}; ferry: {}",
        stderr(&ferry)
    );
    assert!(git_ok, "OpenSSH accepts 1024-bit RSA: {git_err}");
}
