//! The NixOS module's own unit, run. `nixos-module/tests/unit.nix`
//! evaluates `services.ferry-agent` for a configuration (with nixpkgs' `lib`
//! when `FERRY_NIXPKGS_LIB` names its `lib/` directory, else with the
//! stand-in `nixos-module/tests/lib-standin.nix`) and renders what NixOS
//! would install: the `ferry-agent.service` unit file, /etc/ferry, the
//! tmpfiles rules. This file installs that in the testbed as NixOS would —
//! the packages the unit names as store paths of their own holding only
//! what the package holds (so the unit's `PATH` is NixOS's, not Debian's),
//! the secrets as the files `LoadCredential=` reads — and deploys, rolls
//! back, restarts and reboots through it, from a public cache, private
//! caches and S3, with approvals, then scores its sandbox with
//! `systemd-analyze security`.

use std::collections::BTreeSet;
use std::path::Path;

use ferry_test_support::nix::Behaviour;

use super::*;

/// The highest exposure `systemd-analyze security` may give the module's
/// unit (0 is fully confined, 10 not at all).
const MAX_EXPOSURE: f64 = 2.0;

/// Where the test keeps the secrets the module loads as credentials (what
/// sops-nix or agenix would decrypt to).
const SECRETS: &str = "/run/secrets";

/// The packages the rendered unit refers to: the agent, Nix, the default
/// `PATH` of every NixOS service, the time zones, and `curl` for the
/// documented health command.
const PACKAGES: [&str; 9] = [
    "ferry-agent",
    "nix",
    "coreutils",
    "findutils",
    "gnugrep",
    "gnused",
    "systemd",
    "tzdata",
    "curl",
];

/// A store path that looks like Nix's (32 characters of Nix's base-32, then
/// the name), unique to this test run.
fn fake_store_path(seed: &str, name: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    // FNV-1a over the seed and name, then a linear congruential walk.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in seed.bytes().chain(name.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let hash: String = (0..32)
        .map(|_| {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ALPHABET[(h >> 59) as usize] as char
        })
        .collect();
    format!("/nix/store/{hash}-{name}")
}

/// The store paths standing for [`PACKAGES`] in this run.
fn package_paths(seed: &str) -> BTreeMap<String, String> {
    PACKAGES
        .iter()
        .map(|p| (p.to_string(), fake_store_path(seed, p)))
        .collect()
}

/// Makes the packages inside the testbed (in its overlay, never on this
/// machine): the agent binary the test built, and for each other package a
/// `bin/` and `sbin/` of links to exactly the programs its Debian package
/// installs, so a program NixOS would not have on the unit's `PATH` is not
/// found here either.
fn install_packages(w: &World, paths: &BTreeMap<String, String>) {
    w.bed.install(
        crate::common::agent_binary(),
        &format!("{}/bin/ferry-agent", paths["ferry-agent"]),
    );
    let script = format!(
        r#"set -e
pkg() {{
  dir=$1; shift
  mkdir -p "$dir/bin" "$dir/sbin"
  for p in "$@"; do
    dpkg -L "$p" | grep -E '^(/usr)?/s?bin/[^/]+$' | while read -r f; do
      case "$f" in */sbin/*) d=sbin ;; *) d=bin ;; esac
      ln -sfn "$f" "$dir/$d/${{f##*/}}"
    done
  done
}}
mkdir -p {nix}/bin
nixbin=$(dirname "$(command -v nix-store)")
for f in "$nixbin"/nix "$nixbin"/nix-*; do ln -sfn "$f" {nix}/bin/; done
pkg {coreutils} coreutils
pkg {findutils} findutils
pkg {gnugrep} grep
pkg {gnused} sed
pkg {systemd} systemd
mkdir -p {curl}/bin {tzdata}/share
ln -sfn /usr/bin/curl {curl}/bin/curl
ln -sfn /usr/share/zoneinfo {tzdata}/share/zoneinfo
test -x {systemd}/bin/systemctl && test -x {coreutils}/bin/readlink
"#,
        nix = paths["nix"],
        coreutils = paths["coreutils"],
        findutils = paths["findutils"],
        gnugrep = paths["gnugrep"],
        gnused = paths["gnused"],
        systemd = paths["systemd"],
        curl = paths["curl"],
        tzdata = paths["tzdata"],
    );
    let out = w.bed.exec(&["sh", "-c", &script]);
    assert!(
        out.status.success(),
        "making the packages in the testbed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Nix string literal holding `s`.
fn nix_str(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace("${", "\\${")
}

/// Where a configuration points the agent.
struct Endpoints {
    git: String,
    cache: String,
    cache_key: String,
    forge: String,
    /// A server answering 200 for `/<basename of a healthy system>`.
    health: String,
    signers: Vec<String>,
}

impl Endpoints {
    /// The endpoints of `w`'s git daemon, cache and forge.
    fn of(w: &World, health: &StaticServer) -> Self {
        let config: toml::Table = toml::from_str(&w.config).unwrap();
        Self {
            git: config["source"]["url"].as_str().unwrap().to_owned(),
            cache: config["cache"]["substituters"][0].as_str().unwrap().to_owned(),
            cache_key: config["cache"]["trusted_public_keys"][0]
                .as_str()
                .unwrap()
                .to_owned(),
            forge: config["report"]["api_url"].as_str().unwrap().to_owned(),
            health: health.url(),
            signers: vec![w.deploy.key.allowed_signers_line("ci@example.com")],
        }
    }

    /// Endpoints for an evaluation alone (nothing listens).
    fn example() -> Self {
        Self {
            git: "git://127.0.0.1:9418/deploy.git".into(),
            cache: "http://127.0.0.1:8080".into(),
            cache_key: "test-cache-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".into(),
            forge: "http://127.0.0.1:3000/api/v1".into(),
            health: "http://127.0.0.1:8081".into(),
            signers: vec![
                "ci@example.com namespaces=\"git\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbJ2z2K2kMA6a+umVyITxuefXhgqiTFPHMg5jzyflzf"
                    .into(),
            ],
        }
    }
}

/// The configurations the module is evaluated and run with: what differs
/// from the public-cache one, as `services.ferry-agent` bindings and
/// top-level bindings.
#[derive(Clone, Copy, Debug)]
enum Setup {
    /// A public HTTP cache; node_exporter reads the agent's metrics.
    PublicWithMetrics,
    /// A private cache that wants this bearer token file's token.
    Bearer,
    /// A private cache that wants HTTP Basic from this netrc.
    Netrc,
    /// An S3 bucket, credentials from a file.
    S3,
    /// One approval from alice required.
    Approvals,
    /// Reboots in a window (the one `bindings` is given).
    RebootsInWindow,
    /// A deploy repository behind a token (git over HTTP).
    GitToken,
}

impl Setup {
    const ALL: [Setup; 7] = [
        Setup::PublicWithMetrics,
        Setup::Bearer,
        Setup::Netrc,
        Setup::S3,
        Setup::Approvals,
        Setup::RebootsInWindow,
        Setup::GitToken,
    ];

    /// (bindings in `services.ferry-agent`, top-level bindings).
    fn bindings(self, alice: &str, window: &str) -> (String, String) {
        match self {
            Setup::PublicWithMetrics => (
                "metrics = { enable = true; listen = \"127.0.0.1:9101\"; };".into(),
                "services.prometheus.exporters.node.enable = true;".into(),
            ),
            Setup::Bearer => (
                format!(
                    "cacheBearerTokenFiles = {{ \"127.0.0.1\" = \"{SECRETS}/cache-token\"; }};"
                ),
                String::new(),
            ),
            Setup::Netrc => (
                format!(
                    "cacheNetrcFile = \"{SECRETS}/nix-netrc\";"
                ),
                String::new(),
            ),
            Setup::S3 => (
                format!(
                    "cacheS3CredentialsFile = \"{SECRETS}/cache-s3\";"
                ),
                String::new(),
            ),
            Setup::Approvals => (
                format!(
                    "approvals = {{ required = 1; approvers = [ \"alice\" ]; releasers = [ \"ci@example.com\" ];\n\
                     allowedSigners = [ {} ]; }};",
                    nix_str(alice)
                ),
                String::new(),
            ),
            Setup::RebootsInWindow => (
                format!(
                    "reboot = {{ policy = \"in-window\"; window = [ {} ]; }};",
                    nix_str(window)
                ),
                String::new(),
            ),
            Setup::GitToken => (
                format!("gitTokenFile = \"{SECRETS}/git-token\";"),
                String::new(),
            ),
        }
    }
}

/// The configuration module of `setup`: everything a host sets, the
/// documented health commands (`systemctl`, and `curl` by store path) and
/// the test's short intervals through `settings`.
fn configuration(e: &Endpoints, setup: Setup, cache: &str, alice: &str, window: &str) -> String {
    let (inside, top) = setup.bindings(alice, window);
    let signers: Vec<String> = e.signers.iter().map(|s| nix_str(s)).collect();
    format!(
        r#"{{ pkgs, lib, ... }}: {{
  services.ferry-agent = {{
    enable = true;
    repository = {git};
    allowedSigners = [ {signers} ];
    substituters = [ {cache} ];
    trustedPublicKeys = [ {key} ];
    pollInterval = "1s";
    forge = {{
      kind = "gitea";
      apiUrl = {forge};
      repository = "ops/deploy";
      tokenFile = "{SECRETS}/forge-token";
    }};
    healthCommands = [
      "systemctl is-active nix-daemon.socket"
      {{ command = "${{pkgs.curl}}/bin/curl -fsS {health}/$(basename $(readlink /run/current-system))"; timeout = "10s"; }}
    ];
    settings = {{
      source.jitter = "0s";
      health.settle = "0s";
      switch.timeout = "60s";
    }};
    {inside}
  }};
  {top}
}}
"#,
        git = nix_str(&e.git),
        signers = signers.join(" "),
        cache = nix_str(cache),
        key = nix_str(&e.cache_key),
        forge = nix_str(&e.forge),
        health = e.health,
    )
}

/// What `nixos-module/tests/unit.nix` rendered.
#[derive(Debug)]
struct Rendered {
    /// Which `lib` evaluated the module: "stand-in" or "nixpkgs <version>".
    lib: String,
    json: serde_json::Value,
}

impl Rendered {
    fn unit(&self) -> &str {
        self.json["unit"].as_str().unwrap()
    }

    fn etc(&self) -> BTreeMap<String, String> {
        serde_json::from_value(self.json["etc"].clone()).unwrap()
    }

    /// /etc/ferry/agent.toml as NixOS's TOML format writes it (from the
    /// JSON the module's `settings` render to).
    fn agent_toml(&self) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.etc()["ferry/agent.toml"]).unwrap();
        toml::to_string(&json).unwrap_or_else(|e| panic!("agent.toml as TOML: {e}\n{json}"))
    }
}

/// The nixpkgs `lib/` directory FERRY_NIXPKGS_LIB names, checked.
fn nixpkgs_lib() -> Option<String> {
    let dir = std::env::var("FERRY_NIXPKGS_LIB")
        .ok()
        .filter(|d| !d.is_empty())?;
    assert!(
        Path::new(&dir).join("default.nix").exists() && Path::new(&dir).join("modules.nix").exists(),
        "FERRY_NIXPKGS_LIB={dir} is not a nixpkgs lib/ directory (no default.nix and modules.nix): \
         point it at the lib/ of a nixpkgs checkout, or unset it to use the stand-in"
    );
    Some(dir)
}

/// Evaluates the module for `configuration` (a module's text) with `lib`
/// (a nixpkgs `lib/` directory, or `None` for the stand-in).
fn evaluate_with(
    configuration: &str,
    packages: &BTreeMap<String, String>,
    lib: Option<&str>,
) -> Result<Rendered, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.nix");
    std::fs::write(&file, configuration).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(root.join("nixos-module/tests/unit.nix"))
        .arg("--arg")
        .arg("configuration")
        .arg(&file)
        .args(["--argstr", "packagesJson"])
        .arg(serde_json::to_string(packages).unwrap())
        .args(["--argstr", "nixpkgsLib", lib.unwrap_or("")])
        .output()
        .expect("nix-instantiate is installed (scripts/install-deps)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(Rendered {
        lib: json["lib"].as_str().unwrap().to_owned(),
        json,
    })
}

/// [`evaluate_with`] the lib this run uses, which must succeed with no
/// failing assertion.
fn evaluate(configuration: &str, packages: &BTreeMap<String, String>) -> Rendered {
    let r = evaluate_with(configuration, packages, nixpkgs_lib().as_deref())
        .unwrap_or_else(|e| panic!("the module does not evaluate:\n{e}\nfor:\n{configuration}"));
    assert_eq!(
        r.json["failedAssertions"],
        serde_json::json!([]),
        "the module's assertions fail for:\n{configuration}"
    );
    r
}

impl World {
    /// Installs what NixOS would for `r` and (re)starts the unit: /etc/ferry
    /// (replacing the files `World` wrote), the tmpfiles rules applied, the
    /// unit enabled, nix-daemon's socket started (NixOS starts it with
    /// sockets.target; the testbed boots a target of its own).
    fn install_module_unit(&self, r: &Rendered) {
        let etc = self.bed.host_path("/etc/ferry");
        let _ = std::fs::remove_dir_all(&etc);
        std::fs::create_dir_all(&etc).unwrap();
        for (name, text) in r.etc() {
            let text = match name.as_str() {
                "ferry/agent.toml" => r.agent_toml(),
                _ => text,
            };
            std::fs::write(self.bed.host_path(&format!("/etc/{name}")), text).unwrap();
        }
        let rules: Vec<String> = serde_json::from_value(r.json["tmpfiles"].clone()).unwrap();
        std::fs::create_dir_all(self.bed.host_path("/etc/tmpfiles.d")).unwrap();
        std::fs::write(
            self.bed.host_path("/etc/tmpfiles.d/ferry-agent.conf"),
            rules.join("\n") + "\n",
        )
        .unwrap();
        std::fs::write(
            self.bed.host_path("/etc/systemd/system/ferry-agent.service"),
            r.unit(),
        )
        .unwrap();
        let out = self.bed.exec(&["systemctl", "cat", "nix-daemon.socket"]);
        assert!(
            out.status.success(),
            "the module's unit talks to nix-daemon (NIX_REMOTE=daemon), but this machine's Nix \
             has no nix-daemon.socket: run scripts/install-deps (Debian's nix-setup-systemd has it)"
        );
        for cmd in [
            vec!["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/ferry-agent.conf"],
            vec!["systemctl", "daemon-reload"],
            vec!["systemctl", "enable", "ferry-agent.service"],
            vec!["systemctl", "start", "nix-daemon.socket"],
            vec!["systemctl", "restart", "ferry-agent.service"],
        ] {
            let out = self.bed.exec(&cmd);
            assert!(
                out.status.success(),
                "{cmd:?}: {}\nthe unit:\n{}",
                String::from_utf8_lossy(&out.stderr),
                r.unit()
            );
        }
        // Every line of the unit is one this systemd knows.
        let out = self.bed.exec(&[
            "systemd-analyze",
            "verify",
            "/etc/systemd/system/ferry-agent.service",
        ]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !said.contains("Unknown key") && !said.contains("Failed to parse"),
            "systemd does not take the module's unit as written:\n{said}"
        );
    }

    /// Writes a secret where the module's configuration points
    /// `LoadCredential=` (root-only, as sops-nix writes them).
    fn secret(&self, name: &str, text: &str) {
        let path = self.bed.host_path(&format!("{SECRETS}/{name}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    }

    fn unit_journal(&self) -> String {
        self.journal("_SYSTEMD_UNIT=ferry-agent.service")
    }

    /// Waits until `commit`'s statuses end in `state` (bounded), failing
    /// with the unit's journal.
    fn wait_for_status(&self, commit: &str, state: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.status_of(commit).iter().any(|(s, _)| s == state) {
            assert!(
                Instant::now() < deadline,
                "no {state} status on {commit} within {secs}s (statuses: {:?}); the unit says:\n{}\n{}",
                self.status_of(commit),
                self.bed
                    .exec(&["systemctl", "status", "--no-pager", "ferry-agent.service"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                self.unit_journal()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A server that answers 200 for the systems given (by their store path's
/// base name) and 404 for any other: the documented `curl` health command
/// asks it about the running system.
fn health_server(dir: &Path, healthy: &[&String]) -> StaticServer {
    std::fs::create_dir_all(dir).unwrap();
    for system in healthy {
        std::fs::write(dir.join(&system["/nix/store/".len()..]), "ok\n").unwrap();
    }
    StaticServer::start(dir)
}

/// Checks, on the running agent's process, that the sandbox the module
/// writes is applied in this testbed: no capability, no new privileges, a
/// seccomp filter, a user namespace mapping root to root alone, its own
/// /proc hiding other users' processes, empty home directories.
fn sandbox_in_force(w: &World) {
    let out = w.bed.exec(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "ferry-agent.service",
    ]);
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(pid != "0" && !pid.is_empty(), "the agent is not running");
    let read = |file: &str| {
        std::fs::read_to_string(w.bed.host_path(&format!("/proc/{pid}/{file}")))
            .unwrap_or_else(|e| panic!("/proc/{pid}/{file}: {e}"))
    };
    let status = read("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    assert_eq!(field("CapBnd"), "0000000000000000", "CapabilityBoundingSet=");
    assert_eq!(field("CapEff"), "0000000000000000", "no capability in effect");
    assert_eq!(field("NoNewPrivs"), "1", "NoNewPrivileges=");
    assert_eq!(field("Seccomp"), "2", "SystemCallFilter= (a seccomp filter)");
    let uid_map: Vec<String> = read("uid_map").split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        uid_map,
        ["0", "0", "1"],
        "PrivateUsers=: root mapped to root alone"
    );
    let mounts = read("mountinfo");
    let proc_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/proc"))
        .unwrap_or_else(|| panic!("no /proc in the agent's mounts:\n{mounts}"));
    assert!(
        proc_mount.contains("hidepid=invisible"),
        "ProtectProc=invisible is not in force: {proc_mount}"
    );
    let home = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/root"))
        .unwrap_or_else(|| panic!("no mount on /root (ProtectHome=tmpfs) in:\n{mounts}"));
    assert!(home.contains(" - tmpfs "), "ProtectHome=tmpfs: {home}");
}

/// `systemd-analyze security`'s overall exposure for the running unit.
fn exposure(w: &World) -> (f64, String) {
    let out = w
        .bed
        .exec(&["systemd-analyze", "security", "--no-pager", "ferry-agent.service"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let level = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ferry-agent.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security's output:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (level, text)
}

/// The module's unit, from a public cache with metrics for node_exporter:
/// started, it deploys a release (the documented health commands run:
/// `systemctl`, and `curl` by store path), rolls back a release whose
/// health check fails, and survives a restart in the middle of a switch
/// (the switch runs outside its sandbox, in a transient unit: it ends once,
/// as success). Then its sandbox is scored: at most [`MAX_EXPOSURE`].
#[test]
fn the_modules_unit_deploys_rolls_back_and_survives_a_restart() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("unhealthy", Behaviour::Succeed),
        (
            "c",
            Behaviour::Activation(
                "touch /run/ferry-test/switching; while [ -e /run/ferry-test/hold-switch ]; do sleep 0.1; done",
            ),
        ),
    ]);
    let health = health_server(
        &w.dir.path().join("health"),
        &[&w.systems["current"], &w.systems["b"], &w.systems["c"]],
    );
    let seed = ferry_test_support::unique("unit");
    let packages = package_paths(&seed);
    install_packages(&w, &packages);
    let e = Endpoints::of(&w, &health);
    let r = evaluate(
        &configuration(&e, Setup::PublicWithMetrics, &e.cache, "", ""),
        &packages,
    );
    eprintln!("module evaluated with lib: {}\n{}", r.lib, r.unit());
    w.secret("forge-token", "s3cret-token\n");
    w.install_module_unit(&r);

    // 1. A release: deployed through the unit, health commands passing.
    let r1 = w.release("b");
    w.wait_for_status(&r1, "success", 90);
    assert_eq!(w.running(), w.systems["b"]);
    let said: Vec<String> = w.status_of(&r1).into_iter().map(|(s, _)| s).collect();
    assert_eq!(said, ["pending", "success"], "{:?}", w.status_of(&r1));
    // The forge token came through its credential.
    assert_eq!(
        w.forge.requests()[0].headers["authorization"],
        "token s3cret-token"
    );
    // The metrics land where node_exporter is pointed, readable by it.
    let flags: Vec<String> = serde_json::from_value(r.json["nodeExporter"]["extraFlags"].clone()).unwrap();
    let dir = flags
        .iter()
        .find_map(|f| f.strip_prefix("--collector.textfile.directory="))
        .unwrap_or_else(|| panic!("node_exporter is not pointed at a textfile directory: {flags:?}"));
    let prom = w.bed.host_path(&format!("{dir}/ferry_agent.prom"));
    wait_until(&w, 30, "the metrics file", || prom.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // 2. A release whose health check fails (curl gets a 404): rolled back.
    let r2 = w.release("unhealthy");
    w.wait_for_status(&r2, "failure", 90);
    wait_until(&w, 30, "the rollback to b", || w.running() == w.systems["b"]);
    let failure = w
        .status_of(&r2)
        .into_iter()
        .find(|(s, _)| s == "failure")
        .unwrap()
        .1;
    assert!(
        failure.starts_with(&format!("check `{}/bin/curl -fsS", packages["curl"])),
        "the failing check is the curl one: {failure}"
    );
    let journal = w.unit_journal();
    assert!(
        journal.contains("exited with 22; rolled back to"),
        "curl said 404 (exit 22) and the agent rolled back:\n{journal}"
    );

    // 3. A restart in the middle of a switch: the switch (outside the
    //    sandbox) goes on, the new agent waits for it, one success.
    let hold = w.bed.host_path("/run/ferry-test/hold-switch");
    std::fs::create_dir_all(hold.parent().unwrap()).unwrap();
    std::fs::write(&hold, "").unwrap();
    let r3 = w.release("c");
    let switching = w.bed.host_path("/run/ferry-test/switching");
    wait_until(&w, 90, "the switch to c to start", || switching.exists());
    let out = w.bed.exec(&["systemctl", "restart", "ferry-agent.service"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&hold).unwrap();
    w.wait_for_status(&r3, "success", 90);
    assert_eq!(w.running(), w.systems["c"]);
    let said: Vec<String> = w.status_of(&r3).into_iter().map(|(s, _)| s).collect();
    assert_eq!(said, ["pending", "success"], "{:?}", w.status_of(&r3));
    let switches = w
        .switch_log()
        .iter()
        .filter(|l| **l == format!("switch {}", w.systems["c"]))
        .count();
    assert_eq!(switches, 1, "c switched once: {:?}", w.switch_log());

    // 4. The sandbox: in force on the running agent (not only written), and
    //    scored.
    sandbox_in_force(&w);
    let (level, report) = exposure(&w);
    eprintln!("{report}");
    // Written to stderr itself, past the test harness's capture: the score
    // shows in every run's output, passing or not.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "deploy::module_unit: systemd-analyze security gives ferry-agent.service {level} \
         (at most {MAX_EXPOSURE}; module evaluated with lib: {})",
        r.lib
    );
    assert!(
        level <= MAX_EXPOSURE,
        "the module's unit is exposed {level} > {MAX_EXPOSURE}:\n{report}"
    );
}

/// The module's unit with every kind of cache credential, approvals and
/// reboots: one testbed, the module evaluated again and the unit restarted
/// for each configuration, as `nixos-rebuild switch` would. Each deploy
/// reads its secret through the credential the module names
/// (`LoadCredential=`), so a name that differs from what the agent is told
/// to read fails it: a bearer token and a netrc for nginx caches that
/// demand them, an AWS key pair for moto's S3, then one approval (alice's,
/// from the approvers' keys the module installs), then a release needing a
/// reboot, rebooted into inside the window and confirmed after the boot.
#[test]
fn the_modules_unit_reads_every_credential_and_reboots_in_its_window() {
    use chrono::Timelike;
    let mut w = World::new(&[
        ("b", Behaviour::Succeed),
        ("c", Behaviour::Succeed),
        ("d", Behaviour::Succeed),
        ("e", Behaviour::Succeed),
        ("newkernel", Behaviour::Succeed),
    ]);
    let healthy: Vec<&String> = w.systems.values().collect();
    let health = health_server(&w.dir.path().join("health"), &healthy);
    let packages = package_paths(&ferry_test_support::unique("unit"));
    install_packages(&w, &packages);
    let e = Endpoints::of(&w, &health);
    w.secret("forge-token", "s3cret-token\n");
    let alice = ferry_signer::keys::SigningKey::generate("alice").unwrap();
    let alice_line = alice.allowed_signers_line("alice");
    let run = |w: &World, setup: Setup, cache: &str, window: &str| {
        let r = evaluate(&configuration(&e, setup, cache, &alice_line, window), &packages);
        w.install_module_unit(&r);
    };
    let deployed = |w: &World, system: &str| {
        let r = w.release(system);
        w.wait_for_status(&r, "success", 120);
        assert_eq!(w.running(), w.systems[system]);
    };

    // A cache that wants a bearer token.
    let bearer = Nginx::serve(
        &w.cache_dir,
        &Access::Bearer {
            token: "cache-tok".into(),
            forbidden: None,
        },
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    w.secret("cache-token", "cache-tok\n");
    run(&w, Setup::Bearer, &bearer.url(), "");
    deployed(&w, "b");
    let seen = bearer.requests();
    assert!(
        seen.iter()
            .any(|r| r.target.starts_with("/nar/") && r.status == 200),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer cache-tok")));

    // A cache that wants HTTP Basic, from a netrc.
    let basic = Nginx::serve(
        &w.cache_dir,
        &Access::Basic {
            user: "nix".into(),
            password: "netrc-pw".into(),
        },
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    w.secret("nix-netrc", "machine 127.0.0.1 login nix password netrc-pw\n");
    run(&w, Setup::Netrc, &basic.url(), "");
    deployed(&w, "c");
    let seen = basic.requests();
    assert!(
        seen.iter()
            .any(|r| r.target.starts_with("/nar/") && r.status == 200),
        "{seen:?}"
    );
    assert!(seen.iter().all(|r| r.status != 401), "{seen:?}");

    // An S3 bucket (moto, requests authenticated).
    let moto = Moto::start();
    moto.upload_cache("deploy-cache", "us-east-1", &w.cache_dir);
    w.secret(
        "cache-s3",
        &format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.key.access_key_id,
            moto.key.secret_access_key.as_str()
        ),
    );
    run(
        &w,
        Setup::S3,
        &format!("s3://deploy-cache?endpoint={}", moto.endpoint()),
        "",
    );
    deployed(&w, "d");

    // One approval required: waited for, then deployed.
    run(&w, Setup::Approvals, &e.cache, "");
    let r = w.release("e");
    w.wait_for_status(&r, "pending", 60);
    assert_eq!(
        w.status_of(&r),
        [(
            "pending".to_owned(),
            "release 4 awaits approval (0 of 1)".to_owned()
        )]
    );
    assert_eq!(w.running(), w.systems["d"]);
    super::approvals::approve(&w, &alice);
    w.wait_for_status(&r, "success", 120);
    assert_eq!(w.running(), w.systems["e"]);

    // A new kernel, in a window open from this minute: rebooted into. The
    // testbed boots its own target, so the next boot starts what NixOS's
    // multi-user.target would: nix-daemon's socket and the agent, after
    // the secrets are back in /run (sops-nix and agenix decrypt them at
    // every boot; systemd 252 fails a unit whose credential file is
    // missing: "Failed to set up credentials: Protocol error").
    let now = chrono::Local::now();
    let hm = |t: chrono::DateTime<chrono::Local>| format!("{:02}:{:02}", t.hour(), t.minute());
    let window = format!("{}-{}", hm(now), hm(now + chrono::Duration::minutes(2)));
    run(&w, Setup::RebootsInWindow, &e.cache, &window);
    let r = w.release("newkernel");
    w.bed.next_boot(Duration::from_secs(240), None);
    w.secret("forge-token", "s3cret-token\n");
    let out = w
        .bed
        .exec(&["systemctl", "start", "nix-daemon.socket", "ferry-agent.service"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.wait_for_status(&r, "success", 120);
    assert_eq!(w.link("/run/booted-system"), w.systems["newkernel"]);
    let last = w.status_of(&r).last().cloned().unwrap();
    assert!(last.1.ends_with("(rebooted)"), "{last:?}");
}

/// The deploy repository over smart HTTP behind a token: the module's
/// unit fetches it with the token its `git-token` credential holds.
#[test]
fn the_modules_unit_fetches_with_its_git_token() {
    let w = World::over_http(&[("b", Behaviour::Succeed)]);
    let health = health_server(
        &w.dir.path().join("health"),
        &[&w.systems["current"], &w.systems["b"]],
    );
    let packages = package_paths(&ferry_test_support::unique("unit"));
    install_packages(&w, &packages);
    let e = Endpoints::of(&w, &health);
    assert!(e.git.starts_with("http://127.0.0.1:"), "{}", e.git);
    w.secret("forge-token", "s3cret-token\n");
    w.secret("git-token", "git-s3cret\n");
    let r = evaluate(&configuration(&e, Setup::GitToken, &e.cache, "", ""), &packages);
    w.install_module_unit(&r);
    let r1 = w.release("b");
    w.wait_for_status(&r1, "success", 90);
    assert_eq!(w.running(), w.systems["b"]);
}

/// Runs `nixos-module/tests/lib-standin-check.nix` with `lib` (a nixpkgs
/// `lib/` directory, or `None` for the stand-in): the names of the known
/// answers it gets wrong.
fn known_answers_wrong(lib: Option<&str>) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(root.join("nixos-module/tests/lib-standin-check.nix"))
        .args(["--argstr", "nixpkgsLib", lib.unwrap_or("")])
        .output()
        .expect("nix-instantiate is installed (scripts/install-deps)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: BTreeMap<String, bool> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answers.len() >= 20, "{answers:?}");
    answers
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(k, _)| k)
        .collect()
}

/// The stand-in `lib` is held to the module system it stands in for: it
/// gives the module system's known answers; for every configuration the
/// module is run with here it evaluates every option the module declares
/// (each to its definition, default or type's empty value, each checked
/// against its type) with no failing assertion, and the agent's parser
/// accepts the agent.toml it renders; a renderer that meets a unit
/// setting it cannot write fails. With FERRY_NIXPKGS_LIB, nixpkgs' lib must
/// give the same known answers and render every configuration exactly as
/// the stand-in does.
#[test]
fn the_stand_in_lib_evaluates_the_module_as_nixpkgs_does() {
    assert_eq!(known_answers_wrong(None), Vec::<String>::new());
    let real = nixpkgs_lib();
    if let Some(lib) = &real {
        assert_eq!(
            known_answers_wrong(Some(lib)),
            Vec::<String>::new(),
            "nixpkgs' lib at {lib}"
        );
    }
    let declared = crate::snippets::module_options();
    let packages = package_paths("evaluation");
    let e = Endpoints::example();
    let mut compared = Vec::new();
    let alice = "alice ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEbJ2z2K2kMA6a+umVyITxuefXhgqiTFPHMg5jzyflzf";
    for setup in Setup::ALL {
        let text = configuration(&e, setup, &e.cache, alice, "Sat,Sun 02:00-04:00");
        let stand_in = evaluate_with(&text, &packages, None)
            .unwrap_or_else(|err| panic!("{setup:?}: the stand-in cannot evaluate the module:\n{err}"));
        assert_eq!(stand_in.lib, "stand-in");
        assert_eq!(
            stand_in.json["failedAssertions"],
            serde_json::json!([]),
            "{setup:?}"
        );
        let evaluated: BTreeSet<String> = stand_in.json["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["path"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            evaluated, declared,
            "{setup:?}: the options evaluated are not those the module declares"
        );
        // The agent's parser accepts what the module writes.
        if let Err(err) = ferry_agent::config::Config::parse(
            &stand_in.agent_toml(),
            Path::new("/etc/ferry/agent.toml"),
            || Some("web1".into()),
        ) {
            panic!(
                "{setup:?}: the agent refuses the module's agent.toml: {err:#}\n{}",
                stand_in.agent_toml()
            );
        }
        if let Some(lib) = &real {
            let nixpkgs = evaluate_with(&text, &packages, Some(lib))
                .unwrap_or_else(|err| panic!("{setup:?}: nixpkgs' lib cannot evaluate the module:\n{err}"));
            let mut a = stand_in.json.clone();
            let mut b = nixpkgs.json.clone();
            a["lib"] = serde_json::Value::Null;
            b["lib"] = serde_json::Value::Null;
            assert!(
                a == b,
                "{setup:?}: the stand-in and {} render differently:\nstand-in: {a:#}\nnixpkgs: {b:#}",
                nixpkgs.lib
            );
            compared.push(format!("{setup:?}"));
        }
    }
    // Past the harness's capture: which lib ran shows in every run's output.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "deploy::module_unit: {} configurations evaluated with the stand-in lib; {}",
        Setup::ALL.len(),
        match &real {
            Some(lib) => format!(
                "rendered the same by nixpkgs' lib at {lib} ({})",
                compared.join(", ")
            ),
            None => "FERRY_NIXPKGS_LIB unset: not compared with nixpkgs' lib".to_owned(),
        }
    );
    // A unit setting the renderer does not write fails the evaluation.
    let text = configuration(&e, Setup::PublicWithMetrics, &e.cache, "", "").replace(
        "services.prometheus.exporters.node.enable = true;",
        "systemd.services.ferry-agent.preStart = \"true\";",
    );
    let err = evaluate_with(&text, &packages, None).unwrap_err();
    assert!(
        err.contains("sets preStart, which this renderer does not write"),
        "{err}"
    );
}
