//! The two-person rule against the reference tools: approvals made with
//! plain `git commit -S --allow-empty` by every key type, `git verify-commit`
//! agreeing on each, every counting rule through `ferry-signer verify`, the
//! refusals (a key not pinned, a tree-changing commit, a merge at the tip),
//! and `ferry-signer approve` end to end.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_signer::sshsig::GitSigner;

use crate::common::sk::SoftSecurityKey;
use crate::common::*;

/// A work-tree deploy repository on `main` with release 1 by `ci`, and the
/// keys of the people around it.
struct Deploy {
    sb: Sandbox,
    repo: PathBuf,
    ci: PathBuf,
    alice: PathBuf,
    alice2: PathBuf,
    bob: PathBuf,
    allowed: PathBuf,
}

const POLICY: &[&str] = &[
    "--approvals",
    "2",
    "--approver",
    "alice",
    "--approver",
    "bob",
    "--approver",
    "carol",
    "--releaser",
    "ci",
];

impl Deploy {
    fn new() -> Self {
        let sb = Sandbox::new();
        let repo = sb.repo("work", false);
        let ci = sb.ssh_keygen("ci", "ed25519");
        let alice = sb.ssh_keygen("alice", "ed25519");
        let alice2 = sb.ssh_keygen("alice2", "ed25519");
        let bob = sb.ssh_keygen("bob", "ed25519");
        let line = |p: &str, k: &Path| format!("{p} namespaces=\"git\" {}", sb.public_key(k));
        let allowed = sb.allowed_signers(
            "allowed",
            &[
                line("ci", &ci),
                line("alice", &alice),
                line("alice", &alice2),
                line("bob", &bob),
            ],
        );
        let d = Self {
            sb,
            repo,
            ci,
            alice,
            alice2,
            bob,
            allowed,
        };
        d.release(WEB1);
        d
    }

    /// A release by ci on `main`, checked out (so `git commit` keeps its tree).
    fn release(&self, toplevel: &str) -> String {
        let out = self.sb.release(
            self.repo.to_str().unwrap(),
            self.ci.to_str().unwrap(),
            &["--branch", "main", "--host", &format!("web1={toplevel}")],
            &[],
        );
        let commit = assert_ok(&out).trim().to_owned();
        self.sb.git(&self.repo, &["reset", "-q", "--hard"]);
        commit
    }

    /// `git commit -S --allow-empty` by `key`: an approval made by hand.
    fn git_approve(&self, key: &Path) -> String {
        let signing = format!("user.signingkey={}", key.display());
        self.sb.git(
            &self.repo,
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
                "approve",
            ],
        );
        self.sb.git(&self.repo, &["rev-parse", "HEAD"])
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "verify",
            "--repo",
            self.repo.to_str().unwrap(),
            "--rev",
            "main",
            "--allowed-signers",
            self.allowed.to_str().unwrap(),
        ];
        args.extend(extra);
        self.sb.signer(&args, &[])
    }
}

#[test]
fn approvals_made_with_git_commit_by_every_key_type_count_and_git_agrees() {
    let d = Deploy::new();
    let sb = &d.sb;
    let mut lines = vec![format!("ci namespaces=\"git\" {}", sb.public_key(&d.ci))];
    let mut approvers = Vec::new();
    for (name, key_type, bits) in [
        ("ed25519", "ed25519", ""),
        ("ecdsa256", "ecdsa", "256"),
        ("ecdsa384", "ecdsa", "384"),
        ("ecdsa521", "ecdsa", "521"),
        ("rsa", "rsa", "3072"),
    ] {
        let key = sb.ssh_keygen_bits(&format!("p-{name}"), key_type, bits);
        lines.push(format!("p-{name} namespaces=\"git\" {}", sb.public_key(&key)));
        let allowed = sb.allowed_signers(&format!("allowed-{name}"), &lines);
        let commit = d.git_approve(&key);
        let (ok, err) = sb.git_verify(&d.repo, &commit, &allowed);
        assert!(ok, "{name}: git verify-commit refused the approval: {err}");
        approvers.push(format!("p-{name}"));
    }
    // Security keys (FIDO): signed through the library, as `approve` does.
    for (name, key) in [
        ("sk-ed25519", SoftSecurityKey::ed25519(0x01)),
        ("sk-p256", SoftSecurityKey::p256(0x01)),
    ] {
        lines.push(format!("p-{name} namespaces=\"git\" {}", key.public_line()));
        let repository = git2::Repository::open(&d.repo).unwrap();
        let tip = repository.head().unwrap().target().unwrap();
        let commit =
            ferry_signer::publish::approve(&repository, "main", tip, &key as &dyn GitSigner, "approve")
                .unwrap()
                .to_string();
        let allowed = sb.allowed_signers(&format!("allowed-{name}"), &lines);
        let (ok, err) = sb.git_verify(&d.repo, &commit, &allowed);
        assert!(ok, "{name}: git verify-commit refused the approval: {err}");
        approvers.push(format!("p-{name}"));
    }
    sb.git(&d.repo, &["reset", "-q", "--hard"]);
    let all = sb.allowed_signers("allowed-all", &lines);
    let required = approvers.len().to_string();
    let mut args = vec![
        "verify",
        "--repo",
        d.repo.to_str().unwrap(),
        "--rev",
        "main",
        "--allowed-signers",
        all.to_str().unwrap(),
        "--approvals",
        &required,
    ];
    for a in &approvers {
        args.extend(["--approver", a.as_str()]);
    }
    let out = sb.signer(&args, &[]);
    let text = assert_ok(&out);
    assert!(text.contains("serial 1 signed by ci"), "{text}");
    assert!(
        text.contains(&format!("approved by {}", approvers.join(", "))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{required} of {required} required")),
        "{text}"
    );
}

#[test]
fn the_threshold_is_met_only_by_distinct_approvers_other_than_the_releaser() {
    let d = Deploy::new();
    // Not met: nobody approved yet.
    let out = d.verify(POLICY);
    assert_refused(&out, "release 1 awaits approval (0 of 2)");
    assert!(stdout(&out).starts_with("awaiting-approval "), "{}", stdout(&out));
    // Without a policy the release verifies as it always did.
    assert_ok(&d.verify(&[]));
    d.git_approve(&d.alice);
    assert_refused(&d.verify(POLICY), "release 1 awaits approval (1 of 2: alice)");
    // The same approver twice, and a second key of the same principal.
    d.git_approve(&d.alice);
    d.git_approve(&d.alice2);
    let out = d.verify(POLICY);
    assert_refused(&out, "(1 of 2: alice)");
    assert_eq!(
        stdout(&out).matches("does not count: already counted").count(),
        2,
        "{}",
        stdout(&out)
    );
    // The releaser approving its own release.
    d.git_approve(&d.ci);
    let out = d.verify(POLICY);
    assert_refused(&out, "(1 of 2: alice)");
    assert!(
        stdout(&out).contains("by ci does not count: signed the release itself"),
        "{}",
        stdout(&out)
    );
    // Bob: met.
    d.git_approve(&d.bob);
    let text = assert_ok(&d.verify(POLICY));
    assert!(text.contains("approved by alice, bob"), "{text}");
    assert!(text.contains("2 of 2 required approval(s)"), "{text}");
}

#[test]
fn approvals_of_an_older_release_do_not_count_for_a_new_one() {
    let d = Deploy::new();
    d.git_approve(&d.alice);
    d.git_approve(&d.bob);
    assert_ok(&d.verify(POLICY));
    d.release(WEB1_V2);
    let out = d.verify(POLICY);
    assert_refused(&out, "release 2 awaits approval (0 of 2)");
}

#[test]
fn an_approval_by_a_key_that_is_not_pinned_refuses_the_tip() {
    let d = Deploy::new();
    let mallory = d.sb.ssh_keygen("mallory", "ed25519");
    d.git_approve(&d.alice);
    let foreign = d.git_approve(&mallory);
    assert!(
        !d.sb.git_verify(&d.repo, &foreign, &d.allowed).0,
        "git refuses it too"
    );
    assert_refused(&d.verify(POLICY), "is not listed in allowed_signers");
    // Buried under a good approval, it still refuses the tip, named.
    d.git_approve(&d.bob);
    assert_refused(&d.verify(POLICY), &format!("approval {foreign}"));
    // A principal that is pinned but not an approver does not count.
    let pinned_only = d.sb.allowed_signers(
        "allowed-mallory",
        &[
            std::fs::read_to_string(&d.allowed).unwrap().trim().to_owned(),
            format!("mallory namespaces=\"git\" {}", d.sb.public_key(&mallory)),
        ],
    );
    let mut args = vec!["--approver-signers", pinned_only.to_str().unwrap()];
    args.extend(POLICY);
    let text = assert_ok(&d.verify(&args));
    assert!(
        text.contains("by mallory does not count: not an approver here"),
        "{text}"
    );
    assert!(text.contains("approved by alice, bob"), "{text}");
}

#[test]
fn a_commit_that_changes_the_tree_is_a_release_and_needs_a_releaser() {
    let d = Deploy::new();
    d.git_approve(&d.alice);
    // Alice edits release.toml herself and signs it: that is a release by
    // alice, not an approval; hosts that name releasers refuse it.
    let text = std::fs::read_to_string(d.repo.join("release.toml")).unwrap();
    let changed = text.replace("serial = 1", "serial = 2").replace(WEB1, WEB1_V2);
    d.sb.git_commit_release(&d.repo, &changed, Some(&d.alice), &[]);
    assert_refused(
        &d.verify(POLICY),
        "the release is signed by alice, who may not release here (releasers: ci)",
    );
}

#[test]
fn a_merge_commit_at_the_tip_is_not_an_approval() {
    let d = Deploy::new();
    let release = d.sb.git(&d.repo, &["rev-parse", "HEAD"]);
    d.sb.git(&d.repo, &["checkout", "-q", "-b", "side"]);
    d.git_approve(&d.bob);
    d.sb.git(&d.repo, &["checkout", "-q", "main"]);
    d.git_approve(&d.alice);
    // Alice merges bob's approval branch and signs the merge: same tree, two
    // parents. It is judged as a release (by a non-releaser), never counted.
    let signing = format!("user.signingkey={}", d.alice.display());
    d.sb.git(
        &d.repo,
        &[
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing,
            "merge",
            "-q",
            "-S",
            "--no-ff",
            "-m",
            "merge",
            "side",
        ],
    );
    assert_refused(&d.verify(POLICY), "signed by alice, who may not release here");
    // Without named releasers it is a release with release 1's serial: hosts
    // refuse it as not increasing; verify shows it carries no approvals.
    let out = d.verify(&["--approvals", "1", "--approver", "bob"]);
    assert_refused(&out, "awaits approval (0 of 1)");
    assert!(
        !stdout(&out).contains(&release),
        "the merge is the release here: {}",
        stdout(&out)
    );
}

#[test]
fn approve_shows_what_it_approves_signs_and_git_verifies_it() {
    let d = Deploy::new();
    d.release(WEB1_V2);
    let sb = &d.sb;
    let approve = |key: &Path, extra: &[&str]| {
        let mut args = vec![
            "approve",
            "--repo",
            d.repo.to_str().unwrap(),
            "--branch",
            "main",
            "--allowed-signers",
            d.allowed.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        args.extend(extra);
        sb.signer(&args, &[])
    };
    // No terminal to ask on and no --yes: nothing is written.
    let before = sb.git(&d.repo, &["rev-parse", "main"]);
    let out = approve(&d.alice, &[]);
    assert_refused(&out, "stdin is not a terminal");
    let shown = stderr(&out);
    assert!(shown.contains("release 2 ("), "{shown}");
    assert!(shown.contains("released by ci (ssh-ed25519"), "{shown}");
    assert!(
        shown.contains(&format!("web1: {WEB1} → {WEB1_V2} (switch)")),
        "{shown}"
    );
    assert_eq!(sb.git(&d.repo, &["rev-parse", "main"]), before);
    // The releaser may not approve its own release.
    assert_refused(&approve(&d.ci, &["--yes"]), "ci signed release 2 itself");
    // Alice approves; git verifies her commit; its tree is the release's.
    let commit = assert_ok(&approve(&d.alice, &["--yes"])).trim().to_owned();
    assert_eq!(sb.git(&d.repo, &["rev-parse", "main"]), commit);
    let (ok, err) = sb.git_verify(&d.repo, &commit, &d.allowed);
    assert!(ok && err.contains("Good \"git\" signature for alice"), "{err}");
    assert_eq!(
        sb.git(&d.repo, &["rev-parse", "main^{tree}"]),
        sb.git(&d.repo, &["rev-parse", "main~1^{tree}"])
    );
    // Twice is refused; bob's makes the release approved.
    assert_refused(
        &approve(&d.alice2, &["--yes"]),
        "alice has already approved release 2",
    );
    // Pushing to a remote that is not there: recorded locally, and said so.
    assert_refused(
        &approve(&d.bob, &["--yes", "--push", "nowhere"]),
        "was recorded on main locally, but pushing it to nowhere failed",
    );
    sb.git(&d.repo, &["reset", "-q", "--hard"]);
    assert_ok(&d.verify(POLICY));
    // show lists the approvals above the release.
    let out = sb.signer(
        &[
            "show",
            "--repo",
            d.repo.to_str().unwrap(),
            "--rev",
            "main",
            "--json",
        ],
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(json["serial"], 2);
    assert_eq!(json["approvals"].as_array().unwrap().len(), 2);
    assert_eq!(json["approvals"][0]["commit"], commit.as_str());
    // Unverified: the signing key, not a name anyone could write.
    assert_eq!(json["approvals"][0]["principal"], serde_json::Value::Null);
    assert_eq!(json["approvals"][0]["verified"], false);
    let alice_key = json["approvals"][0]["key"].as_str().unwrap().to_owned();
    assert!(alice_key.starts_with("SHA256:"), "{json}");
    // With the approvers' keys: by principal, as the hosts count them.
    let show = |extra: &[&str]| {
        let mut args = vec!["show", "--repo", d.repo.to_str().unwrap(), "--rev", "main"];
        args.extend(extra);
        assert_ok(&sb.signer(&args, &[]))
    };
    let allowed = d.allowed.to_str().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&show(&["--json", "--approver-signers", allowed])).unwrap();
    let principals: Vec<&str> = json["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["principal"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(principals, ["alice", "bob"], "{json}");
    assert_eq!(json["approvals"][1]["verified"], true);
    let text = show(&["--approver-signers", allowed]);
    assert!(
        text.contains(&format!("# approval {commit} by alice (key {alice_key}) at ")),
        "{text}"
    );
    let text = show(&[]);
    assert!(
        text.contains(&format!(
            "# approval {commit} signed with key {alice_key} (not verified"
        )),
        "{text}"
    );
    // A file that does not pin alice's key: hers is said not to verify.
    let only_bob = sb.path("only-bob");
    let lines = std::fs::read_to_string(&d.allowed).unwrap();
    let bob_line: String = lines.lines().filter(|l| l.starts_with("bob ")).collect();
    std::fs::write(&only_bob, bob_line + "\n").unwrap();
    let json: serde_json::Value = serde_json::from_str(&show(&[
        "--json",
        "--approver-signers",
        only_bob.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(json["approvals"][0]["verified"], false, "{json}");
    assert!(
        json["approvals"][0]["problem"].as_str().unwrap().contains("not"),
        "{json}"
    );
    assert_eq!(json["approvals"][1]["principal"], "bob", "{json}");
}
