//! The command line: host input, refusals of bad arguments, pushing.

use crate::common::*;

#[test]
fn hosts_file_from_nix_eval_json() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let key = sb.ssh_keygen("k", "ed25519");
    let hosts = sb.path("hosts.json");
    std::fs::write(
        &hosts,
        format!(r#"{{"web1": "{WEB1}", "db1": {{"toplevel": "{DB1}", "action": "boot"}}}}"#),
    )
    .unwrap();
    let r = repo.to_str().unwrap();
    assert_ok(&sb.release(
        r,
        key.to_str().unwrap(),
        &["--hosts-file", hosts.to_str().unwrap()],
        &[],
    ));
    let shown = assert_ok(&sb.signer(&["show", "--repo", r], &[]));
    assert!(
        shown.contains(&format!("[hosts.db1]\ntoplevel = \"{DB1}\"\naction = \"boot\"")),
        "{shown}"
    );
    assert!(shown.contains("serial = 1\n"), "{shown}");

    // --replace-hosts drops db1.
    assert_ok(&sb.release(
        r,
        key.to_str().unwrap(),
        &["--host", &format!("web1={WEB1_V2}"), "--replace-hosts"],
        &[],
    ));
    let shown = assert_ok(&sb.signer(&["show", "--repo", r], &[]));
    assert!(
        !shown.contains("[hosts.db1]") && shown.contains(WEB1_V2),
        "{shown}"
    );
}

#[test]
fn bad_arguments_are_refused_before_anything_is_written() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let key = sb.ssh_keygen("k", "ed25519");
    let (r, k) = (repo.to_str().unwrap(), key.to_str().unwrap());
    let bad_json = sb.path("bad.json");
    std::fs::write(&bad_json, r#"["web1"]"#).unwrap();
    let bad_path = sb.path("badpath.json");
    std::fs::write(&bad_path, r#"{"web1": "/tmp/evil"}"#).unwrap();
    let web1 = format!("web1={WEB1}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--host", "web1"], "expected NAME=TOPLEVEL"),
        (vec!["--host", "web1=/nix/store/nope"], "is not a Nix store path"),
        (vec!["--host", "bad name=/x"], "is not a valid host name"),
        (vec![], "no hosts given"),
        (
            vec!["--hosts-file", bad_json.to_str().unwrap()],
            "expected a JSON object",
        ),
        (vec!["--hosts-file", bad_path.to_str().unwrap()], "host `web1`"),
        (
            vec!["--host", &web1, "--source", "main"],
            "not a full git commit id",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["release", "--repo", r, "--key", k];
        args.extend(extra);
        assert_refused(&sb.signer(&args, &[]), needle);
    }
    assert_eq!(sb.git(&repo, &["for-each-ref"]), "", "no branch was created");

    let dsa_like = sb.ssh_keygen("ecdsa", "ecdsa");
    let out = sb.release(
        r,
        dsa_like.to_str().unwrap(),
        &["--host", &format!("web1={WEB1}")],
        &[],
    );
    assert_refused(&out, "pass --ssh-agent");
    let not_repo = sb.path("nothing");
    let out = sb.release(
        not_repo.to_str().unwrap(),
        k,
        &["--host", &format!("web1={WEB1}")],
        &[],
    );
    assert_refused(&out, "is not a git repository");
}

#[test]
fn push_to_a_remote() {
    let sb = Sandbox::new();
    let origin = sb.repo("origin.git", true);
    let local = sb.repo("local", false);
    sb.git(&local, &["remote", "add", "origin", origin.to_str().unwrap()]);
    let key = sb.ssh_keygen("k", "ed25519");
    let out = sb.release(
        local.to_str().unwrap(),
        key.to_str().unwrap(),
        &["--host", &format!("web1={WEB1}"), "--push", "origin"],
        &[],
    );
    let commit = assert_ok(&out).trim().to_owned();
    assert_eq!(sb.git(&origin, &["rev-parse", "deploy"]), commit);

    // The remote moved on elsewhere: the push is refused and says what to do.
    let elsewhere = sb.repo("elsewhere", false);
    sb.git(
        &elsewhere,
        &["fetch", "-q", origin.to_str().unwrap(), "deploy:deploy"],
    );
    assert_ok(&sb.release(
        elsewhere.to_str().unwrap(),
        key.to_str().unwrap(),
        &["--host", &format!("web1={WEB1_V2}")],
        &[],
    ));
    sb.git(&elsewhere, &["push", "-q", origin.to_str().unwrap(), "deploy"]);
    let out = sb.release(
        local.to_str().unwrap(),
        key.to_str().unwrap(),
        &["--host", &format!("db1={DB1}"), "--push", "origin"],
        &[],
    );
    assert_refused(&out, "fetch it and make the release again");
}

#[test]
fn verify_of_a_missing_rev_or_file_says_so() {
    let sb = Sandbox::new();
    let repo = sb.repo("deploy.git", true);
    let allowed = sb.allowed_signers("allowed", &[]);
    let out = sb.signer(
        &[
            "verify",
            "--repo",
            repo.to_str().unwrap(),
            "--allowed-signers",
            allowed.to_str().unwrap(),
        ],
        &[],
    );
    assert_refused(&out, "`deploy` does not name a commit");
    let out = sb.signer(
        &[
            "verify",
            "--repo",
            repo.to_str().unwrap(),
            "--allowed-signers",
            "/nonexistent",
        ],
        &[],
    );
    assert_refused(&out, "cannot read allowed_signers file /nonexistent");
}
