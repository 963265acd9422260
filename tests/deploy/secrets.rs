//! Secrets under Ferry, as sops-nix and agenix handle them: the encrypted
//! files travel in the system's closure (through the binary cache, like any
//! store path), and the new system's own activation decrypts them with a key
//! that never leaves the host — an age identity file (sops-nix's
//! `sops.age.keyFile`) and the SSH host key (agenix's `age.identityPaths`) —
//! while `switch-to-configuration` runs, exactly as under nixos-rebuild.
//!
//! The fake systems here decrypt with the real `age` CLI into
//! `/run/secrets.d/<n>` and `/run/agenix.d/<n>` and point `/run/secrets` and
//! `/run/agenix` at them, and log each step to an events file; a health check
//! logs that it sees the decrypted file. The test checks the order of events
//! (closure realised, profile set, switch unit, decryption, health, status),
//! that a release whose secret the host cannot decrypt is rolled back to the
//! previous secrets, that a rotated secret arrives with its release, and that
//! no secret text reaches the release, the forge or the journal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{World, SOURCE};
use ferry_test_support::nix::{self, Behaviour};

const EVENTS: &str = "/run/ferry-test/events.log";
const AGE_KEY: &str = "/var/lib/sops-nix/key.txt";
const SSH_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// The host's keys and another host's: an age identity and an SSH host key.
struct Keys {
    age_identity: PathBuf,
    age_recipient: String,
    ssh_host_key: PathBuf,
    other_host_recipient: String,
}

impl Keys {
    /// (`nix::run` serves for any command: it only adds the Nix lock.)
    fn generate(dir: &Path) -> Self {
        assert!(
            Command::new("age").arg("--version").output().is_ok(),
            "the age CLI is missing: scripts/install-deps installs it"
        );
        let age_identity = dir.join("age-key.txt");
        nix::run(Command::new("age-keygen").arg("-o").arg(&age_identity));
        let age_recipient = nix::run(Command::new("age-keygen").arg("-y").arg(&age_identity));
        let ssh_host_key = dir.join("ssh_host_ed25519_key");
        nix::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "root@web1", "-f"])
                .arg(&ssh_host_key),
        );
        let other = dir.join("other-host-age-key.txt");
        nix::run(Command::new("age-keygen").arg("-o").arg(&other));
        let other_host_recipient = nix::run(Command::new("age-keygen").arg("-y").arg(&other));
        Self {
            age_identity,
            age_recipient,
            ssh_host_key,
            other_host_recipient,
        }
    }
}

/// Encrypts `plaintext` (given on stdin, never written to disk) to `file`
/// with age's `recipient_args`; returns the store path the file takes in a
/// closure (see [`store_file`]).
fn encrypt(file: &Path, recipient_args: &[&str], plaintext: &str) -> String {
    let mut age = Command::new("age")
        .args(recipient_args)
        .arg("-o")
        .arg(file)
        .stdin(Stdio::piped())
        .spawn()
        .expect("the age CLI is installed (scripts/install-deps)");
    age.stdin.take().unwrap().write_all(plaintext.as_bytes()).unwrap();
    assert!(age.wait().unwrap().success(), "age could not encrypt");
    nix::run(
        Command::new("nix-store")
            .args(["--add-fixed", "sha256"])
            .arg(file),
    )
}

/// A Nix expression for `file` as a store path of its own: a fixed-output
/// derivation, so it is in the closure of whatever refers to it and, unlike
/// a source path, no `.drv` file keeps it alive on the machine that built it.
fn store_file(file: &Path) -> String {
    let name = file.file_name().unwrap().to_str().unwrap();
    let file = file.display();
    format!(
        r#"${{derivation {{
  name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/bin/cp {file} $out" ];
  outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = builtins.hashFile "sha256" "{file}";
}}}}"#
    )
}

/// A system whose activation decrypts `db` (sops-nix style, with the age
/// identity) and `api` (agenix style, with the SSH host key).
fn activation(db: &Path, api: &Path) -> Behaviour {
    let script = format!(
        r#"ev={EVENTS}
echo "activate \$1 in \$(grep -o 'ferry-switch[^/]*\.service' /proc/self/cgroup | head -n1)" >> \$ev
echo "profile \$(readlink -f /nix/var/nix/profiles/system)" >> \$ev
for f in {db} {api}; do test -f \$f && echo "ciphertext \$f" >> \$ev; done
umask 077
echo "activation: decrypting the secrets of \$top"
mkdir -p /run/secrets.d/\$\$ /run/agenix.d/\$\$
if ! age --decrypt -i {AGE_KEY} -o /run/secrets.d/\$\$/db-password {db} ||
   ! age --decrypt -i {SSH_HOST_KEY} -o /run/agenix.d/\$\$/api-token {api}; then
  echo "decryption failed" >> \$ev
  exit 2
fi
chmod 0400 /run/secrets.d/\$\$/db-password /run/agenix.d/\$\$/api-token
ln -sfn /run/secrets.d/\$\$ /run/secrets
ln -sfn /run/agenix.d/\$\$ /run/agenix
echo "decrypted" >> \$ev"#,
        db = store_file(db),
        api = store_file(api),
    );
    Behaviour::Activation(Box::leak(script.into_boxed_str()))
}

/// One release's secrets: plaintexts, encrypted files and their store paths.
struct Secrets {
    db: String,
    api: String,
    db_store: String,
    api_store: String,
    behaviour: Behaviour,
}

impl Secrets {
    /// `to_other_host`: the database password is encrypted to another host's
    /// key only (this host was left out of the recipients).
    fn new(dir: &Path, keys: &Keys, name: &str, to_other_host: bool) -> Self {
        let db = ferry_test_support::unique(&format!("db-password-{name}-"));
        let api = ferry_test_support::unique(&format!("api-token-{name}-"));
        let db_file = dir.join(format!("{name}-db-password.age"));
        let api_file = dir.join(format!("{name}-api-token.age"));
        let db_recipient = match to_other_host {
            false => &keys.age_recipient,
            true => &keys.other_host_recipient,
        };
        let db_store = encrypt(&db_file, &["-r", db_recipient], &db);
        let ssh_pub = format!("{}.pub", keys.ssh_host_key.display());
        let api_store = encrypt(&api_file, &["-R", &ssh_pub], &api);
        Self {
            behaviour: activation(&db_file, &api_file),
            db,
            api,
            db_store,
            api_store,
        }
    }
}

impl World {
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.bed.host_path(EVENTS))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A file's text, read inside the testbed (its symlinks point there).
    fn read(&self, inside: &str) -> String {
        let out = self.bed.exec(&["cat", inside]);
        assert!(out.status.success(), "cannot read {inside} in the testbed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the release history holds: every object of the deploy
    /// repository, as git prints them.
    fn release_objects(&self) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.deploy.path)
            .args(["cat-file", "--batch-all-objects", "--batch"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The files of the agent's state directory, concatenated.
    fn state_files(&self) -> String {
        fn walk(dir: &Path, text: &mut String) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if entry.file_type().unwrap().is_dir() {
                    walk(&path, text);
                } else if entry.file_type().unwrap().is_file() {
                    text.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut text = String::new();
        walk(&self.bed.host_path("/var/lib/ferry-agent"), &mut text);
        text
    }
}

/// The lines one successful activation of `s` logs, in unit `unit`.
fn activated(w: &World, system: &str, unit: &str, s: &Secrets) -> Vec<String> {
    vec![
        format!("activate switch in {unit}.service"),
        format!("profile {}", w.systems[system]),
        format!("ciphertext {}", s.db_store),
        format!("ciphertext {}", s.api_store),
        "decrypted".into(),
    ]
}

#[test]
fn encrypted_secrets_travel_in_the_closure_and_are_decrypted_by_the_host_during_the_switch() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Keys::generate(keys_dir.path());
    let v1 = Secrets::new(keys_dir.path(), &keys, "v1", false);
    let forgotten = Secrets::new(keys_dir.path(), &keys, "forgotten", true);
    let v2 = Secrets::new(keys_dir.path(), &keys, "v2", false);
    let w = World::new(&[
        ("v1", v1.behaviour),
        ("forgotten", forgotten.behaviour),
        ("v2", v2.behaviour),
    ]);
    // The host's keys, where sops-nix and agenix read them; nothing else
    // on the host knows a secret.
    for (from, inside) in [(&keys.age_identity, AGE_KEY), (&keys.ssh_host_key, SSH_HOST_KEY)] {
        let to = w.bed.host_path(inside);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    }
    w.set_health_commands(&format!(
        "['echo \"health $(stat -L -c %a /run/secrets/db-password) $(stat -L -c %a /run/agenix/api-token)\" >> {EVENTS}; \
          test -s /run/secrets/db-password && test -s /run/agenix/api-token']"
    ));
    // The ciphertext is in the binary cache only, not on the host.
    assert!(
        !w.bed.host_path(&v1.db_store).exists(),
        "{} is on the host already",
        v1.db_store
    );

    // 1. The first release: the closure (ciphertext included) is realised
    //    from the cache, the profile set, and switch-to-configuration in its
    //    unit decrypts with the host's keys; the health check then sees the
    //    files; the success status comes last.
    let r1 = w.release("v1");
    let (ok, out1) = w.once();
    assert!(ok, "{out1}");
    let mut expected = activated(&w, "v1", "ferry-switch-1", &v1);
    expected.push("health 400 400".into());
    assert_eq!(w.events(), expected);
    assert_eq!(w.read("/run/secrets/db-password"), v1.db);
    assert_eq!(w.read("/run/agenix/api-token"), v1.api);
    let ciphertext = w.read(&v1.db_store);
    assert!(
        ciphertext.starts_with("age-encryption.org/v1\n"),
        "not age: {ciphertext:?}"
    );
    assert_eq!(
        w.status_of(&r1)
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["pending", "success"]
    );
    let phases = w.journal(&format!("FERRY_COMMIT={r1}"));
    let order = [
        "realising the closure",
        "starting switch-to-configuration",
        "checking health",
        "runs release 1",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|m| {
            phases
                .find(m)
                .unwrap_or_else(|| panic!("no `{m}` in the journal:\n{phases}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|p| p[0] < p[1]),
        "phases out of order:\n{phases}"
    );

    // 2. A release whose secret was encrypted without this host among the
    //    recipients: its activation fails, switch-to-configuration exits
    //    non-zero, and Ferry rolls back — the previous system's activation
    //    decrypts the previous secrets again.
    let before = w.events().len();
    let r2 = w.release("forgotten");
    let (ok, out2) = w.once();
    assert!(!ok, "{out2}");
    assert!(
        out2.contains("switch-to-configuration failed (exit 2); rolled back to"),
        "{out2}"
    );
    let mut expected = vec![
        "activate switch in ferry-switch-2.service".to_owned(),
        format!("profile {}", w.systems["forgotten"]),
        format!("ciphertext {}", forgotten.db_store),
        format!("ciphertext {}", forgotten.api_store),
        "decryption failed".into(),
    ];
    expected.extend(activated(&w, "v1", "ferry-switch-2-rollback", &v1));
    assert_eq!(w.events()[before..], expected);
    assert_eq!(
        w.read("/run/secrets/db-password"),
        v1.db,
        "the previous secret is back"
    );
    assert_eq!(w.running(), w.systems["v1"]);
    assert!(w
        .status_of(&r2)
        .iter()
        .any(|(s, d)| s == "failure" && d.contains("rolled back")));

    // 3. A rotated secret is simply a new release.
    let before = w.events().len();
    let r3 = w.release("v2");
    let (ok, out3) = w.once();
    assert!(ok, "{out3}");
    let mut expected = activated(&w, "v2", "ferry-switch-3", &v2);
    expected.push("health 400 400".into());
    assert_eq!(w.events()[before..], expected);
    assert_eq!(w.read("/run/secrets/db-password"), v2.db);
    assert_eq!(w.read("/run/agenix/api-token"), v2.api);
    assert_eq!(w.status_of(&r3).last().unwrap().0, "success");

    // What Ferry never does with a secret: carry it in a release, send it to
    // the forge, log it, keep it in its state. (Each place is first shown
    // to hold what the deploys put there, so the search is not vacuous.)
    let release = w.release_objects();
    assert!(release.contains(&w.systems["v2"]) && release.contains(SOURCE));
    let forge = format!("{:?}", w.forge.requests());
    assert!(forge.contains("web1 runs release 3"), "{forge}");
    let journal = w.bed.exec(&["journalctl", "--no-pager", "--output=json"]);
    let journal = String::from_utf8_lossy(&journal.stdout).into_owned();
    assert!(
        journal.contains(&r3) && journal.contains("activation: decrypting the secrets of"),
        "{journal}"
    );
    let state = w.state_files();
    assert!(state.contains(&r3));
    let status = w.status_json().to_string();
    for (place, text) in [
        ("the release history", &release),
        ("the forge requests", &forge),
        ("the journal", &journal),
        ("the agent's state directory", &state),
        ("ferry-agent status", &status),
        ("ferry-agent once's output", &format!("{out1}{out2}{out3}")),
        ("the ciphertext in the store", &ciphertext),
    ] {
        for s in [&v1, &forgotten, &v2] {
            for secret in [&s.db, &s.api] {
                assert!(!text.contains(secret.as_str()), "a secret is in {place}");
            }
        }
    }
}
