//! A real fleet end to end: four `ferry-agent run` daemons (hosts canary1,
//! web1, web2, db1) in one throwaway systemd, each with its own host name,
//! configuration, state directory, system profile and switch unit, follow
//! one deploy branch served by `git daemon`, realise from one signed binary
//! cache and report to one loopback forge (Gitea's API). The real
//! `ferry-signer` binary releases, waits and rolls out in waves against the
//! same branch and forge.
//!
//! One systemd hosts all four, so each agent runs in a mount namespace of its
//! own whose `/run` holds only that host's `current-system` and
//! `booted-system` links (and the shared D-Bus and journal sockets): the
//! links point into `/var/lib/ferry-fleet/<host>/`, where that host's
//! systems' `switch-to-configuration` records what it runs.
//!
//! The same fleet can follow a static mirror of the branch instead
//! (`ferry-signer mirror`, kept up to date by a job standing in for CI's
//! mirror workflow, served by nginx).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_test_support::forge::{Forge, Kind, TOKEN};

use ferry_test_support::deploy_repo::GitDaemon;
use ferry_test_support::git;
use ferry_test_support::http::StaticServer;
use ferry_test_support::nginx::{Access, Nginx};
use ferry_test_support::nix::{self, Behaviour, Cache};
use ferry_test_support::systemd::Testbed;

const AGENT: &str = "/usr/local/bin/ferry-agent";
const HOSTS: [&str; 4] = ["canary1", "web1", "web2", "db1"];
const SOURCE: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
/// Where each host's systems record what runs (inside the testbed).
const FLEET: &str = "/var/lib/ferry-fleet";

/// Starts one host of the fleet: its agent in a mount namespace whose /run
/// is its own (see the module comment). `$1` is the host name.
const HOST_SCRIPT: &str = r#"#!/bin/sh
set -eu
exec unshare --mount --propagation private /bin/sh -eu -c '
h=$1
mkdir -p /mnt/ferry-run
mount --bind /run /mnt/ferry-run
mount -t tmpfs -o mode=755 tmpfs /run
for d in dbus systemd; do mkdir /run/$d; mount --rbind /mnt/ferry-run/$d /run/$d; done
umount -l /mnt/ferry-run
ln -s /var/lib/ferry-fleet/$h/current-system /run/current-system
ln -s /var/lib/ferry-fleet/$h/booted-system /run/booted-system
exec /usr/local/bin/ferry-agent --config /etc/ferry/$h.toml run
' sh "$1"
"#;

/// Three waves; generous timeouts (a bound on the test, never a measure).
const PLAN: &str = r#"
[[wave]]
name = "canary"
hosts = ["canary1"]
timeout = "300s"

[[wave]]
name = "web"
hosts = ["web*"]
timeout = "300s"

[[wave]]
name = "rest"
rest = true
timeout = "300s"
"#;

struct Fleet {
    dir: tempfile::TempDir,
    repo: PathBuf,
    key: PathBuf,
    token: PathBuf,
    plan: PathBuf,
    signer: PathBuf,
    forge: Forge,
    /// (host, system name) → toplevel.
    systems: BTreeMap<(&'static str, &'static str), String>,
    _git: GitDaemon,
    _cache: StaticServer,
    /// When the hosts follow a static mirror: its server and the job that
    /// writes it.
    mirror: Option<(Nginx, MirrorJob)>,
    bed: Testbed,
}

/// CI's mirror workflow, in miniature: writes the deploy branch into a
/// static mirror whenever it moves, until dropped.
struct MirrorJob {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MirrorJob {
    fn start(repo: &Path, to: &Path) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, repo, to) = (stop.clone(), repo.to_owned(), to.to_owned());
        let thread = std::thread::spawn(move || {
            let store = ferry_signer::mirror::DirStore(to);
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(r) = git2::Repository::open(&repo) {
                    if r.find_reference("refs/heads/deploy").is_ok() {
                        ferry_signer::mirror::update(&r, "deploy", &store).expect("the mirror is written");
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MirrorJob {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Fleet {
    /// Builds every host's systems (`current`, which it runs at boot, and
    /// `a`, `b` in the cache; canary1 also `unhealthy`, which fails the
    /// health check), fills and serves the cache, boots the testbed and
    /// starts the four agents, following the git server.
    fn start() -> Self {
        Self::start_following(false)
    }

    /// [`Fleet::start`], the agents following a static mirror of the branch
    /// when `mirror`.
    fn start_following(mirror: bool) -> Self {
        Self::start_reporting(mirror, "")
    }

    /// [`Fleet::start_following`], with `report` appended to each agent's
    /// `[report]` section (`{host}` replaced by the host's name).
    fn start_reporting(mirror: bool, report: &str) -> Self {
        let signer = ferry_test_support::workspace_binary("ferry-signer", "ferry-signer");
        let dir = tempfile::tempdir().unwrap();
        let seed = ferry_test_support::unique("f");
        let mut systems = BTreeMap::new();
        for host in HOSTS {
            // Each host's switch-to-configuration records the system in the
            // host's own link, which its agent sees as /run/current-system.
            // (`Behaviour` is `Copy` over `&'static str`: one short string
            // per host lives as long as the test process.)
            let record: &'static str = Box::leak(
                format!("mkdir -p {FLEET}/{host}; ln -sfn \"\\$top\" {FLEET}/{host}/current-system")
                    .into_boxed_str(),
            );
            let names: &[&'static str] = match host {
                "canary1" => &["current", "a", "b", "unhealthy"],
                _ => &["current", "a", "b"],
            };
            for name in names {
                let top = nix::build_system(
                    dir.path(),
                    host,
                    &format!("{name}-{seed}"),
                    Behaviour::Activation(record),
                    &format!("k-{seed}"),
                    2,
                );
                systems.insert((host, *name), top);
            }
        }
        let cache = Cache::new(&dir.path().join("cache"), "fleet-cache-1");
        let mut keep = Vec::new();
        for host in HOSTS {
            let current = &systems[&(host, "current")];
            nix::run(
                Command::new("nix-store")
                    .args(["--realise", current, "--add-root"])
                    .arg(dir.path().join(format!("root-{host}"))),
            );
            keep.extend(nix::closure(current));
        }
        for ((_, name), top) in &systems {
            if *name != "current" {
                cache.copy(top);
                cache.sign(top);
            }
        }
        let only_in_cache: Vec<String> = systems
            .iter()
            .filter(|((_, name), _)| *name != "current")
            .flat_map(|(_, top)| nix::closure(top))
            .filter(|p| !keep.contains(p))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        nix::delete(&only_in_cache);
        let cache_server = StaticServer::start(&cache.dir);

        let repo = dir.path().join("deploy.git");
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", repo.to_str().unwrap()],
        );
        let git_daemon = GitDaemon::start(dir.path());
        let mirror = mirror.then(|| {
            let www = dir.path().join("www");
            std::fs::create_dir_all(&www).unwrap();
            let job = MirrorJob::start(&repo, &www.join("deploy.git"));
            (Nginx::serve(&www, &Access::Anyone, false).unwrap(), job)
        });
        let source_url = match &mirror {
            Some((nginx, _)) => format!("{}/deploy.git", nginx.url()),
            None => git_daemon.url("deploy.git"),
        };
        let key = ferry_test_support::ssh_keygen(dir.path(), "release-key", "ed25519", "");
        let token = dir.path().join("forge-token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let plan = dir.path().join("rollout.toml");
        std::fs::write(&plan, PLAN).unwrap();
        let forge = Forge::start(Kind::Gitea);

        let bed = Testbed::boot();
        bed.install(crate::common::agent_binary(), AGENT);
        let etc = bed.host_path("/etc/ferry");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("allowed_signers"),
            format!("ci@example.com {}\n", ferry_test_support::public_key(&key)),
        )
        .unwrap();
        std::fs::write(etc.join("forge-token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(etc.join("fleet-host.sh"), HOST_SCRIPT).unwrap();
        for host in HOSTS {
            let config = format!(
                r#"host = "{host}"
state_dir = "/var/lib/ferry-agent-{host}"
[source]
url = "{git}"
allowed_signers = "/etc/ferry/allowed_signers"
poll_interval = "1s"
jitter = "0s"
[cache]
substituters = ["{cache}"]
trusted_public_keys = ["{key}"]
[switch]
profile = "/nix/var/nix/profiles/fleet-{host}/system"
unit = "ferry-switch-{host}"
timeout = "60s"
[health]
settle = "0s"
commands = ["! grep -q unhealthy /run/current-system/nixos-version"]
[report]
forge = "gitea"
api_url = "{forge}"
repository = "ops/deploy"
token_file = "/etc/ferry/forge-token"
{report}"#,
                report = report.replace("{host}", host),
                git = source_url,
                cache = cache_server.url(),
                key = cache.public_key,
                forge = forge.api_url(),
            );
            std::fs::write(etc.join(format!("{host}.toml")), config).unwrap();
            let current = &systems[&(host, "current")];
            let profile_dir = format!("/nix/var/nix/profiles/fleet-{host}");
            for cmd in [
                vec!["mkdir", "-p", &profile_dir],
                vec![
                    "nix-env",
                    "-p",
                    &format!("{profile_dir}/system"),
                    "--set",
                    current,
                ],
                vec!["mkdir", "-p", &format!("{FLEET}/{host}")],
                vec!["ln", "-sfn", current, &format!("{FLEET}/{host}/current-system")],
                vec!["ln", "-sfn", current, &format!("{FLEET}/{host}/booted-system")],
            ] {
                exec_ok(&bed, &cmd);
            }
        }
        for host in HOSTS {
            exec_ok(
                &bed,
                &[
                    "systemd-run",
                    "--quiet",
                    &format!("--unit=ferry-agent-{host}"),
                    "/bin/sh",
                    "/etc/ferry/fleet-host.sh",
                    host,
                ],
            );
        }
        Self {
            dir,
            repo,
            key,
            token,
            plan,
            signer,
            forge,
            systems,
            _git: git_daemon,
            _cache: cache_server,
            mirror,
            bed,
        }
    }

    /// A hosts file naming, for each host, its system called `name`, except
    /// the overrides.
    fn hosts_file(&self, file: &str, name: &'static str, except: &[(&str, &'static str)]) -> PathBuf {
        let map: BTreeMap<&str, &str> = HOSTS
            .iter()
            .map(|h| {
                let n = except.iter().find(|(e, _)| e == h).map_or(name, |(_, n)| *n);
                (*h, self.systems[&(*h, n)].as_str())
            })
            .collect();
        let path = self.dir.path().join(file);
        std::fs::write(&path, serde_json::to_string(&map).unwrap()).unwrap();
        path
    }

    /// `ferry-signer ARGS…` with the forge flags for the commands that read it.
    fn signer_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.signer);
        cmd.args(args)
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "CI")
            .env("GIT_AUTHOR_EMAIL", "ci@example.com")
            .env("GIT_COMMITTER_NAME", "CI")
            .env("GIT_COMMITTER_EMAIL", "ci@example.com")
            .env_remove("SSH_AUTH_SOCK");
        if matches!(args.first(), Some(&("status" | "wait" | "rollout"))) {
            cmd.args(self.forge.args(&self.token));
        }
        cmd
    }

    fn signer(&self, args: &[&str]) -> Output {
        self.signer_command(args).output().unwrap()
    }

    fn rollout_args(&self, hosts_file: &Path) -> Vec<String> {
        [
            "rollout",
            "--repo",
            self.repo.to_str().unwrap(),
            "--key",
            self.key.to_str().unwrap(),
            "--plan",
            self.plan.to_str().unwrap(),
            "--hosts-file",
            hosts_file.to_str().unwrap(),
            "--source",
            SOURCE,
            "--interval",
            "1s",
        ]
        .map(String::from)
        .to_vec()
    }

    fn tip(&self) -> ferry_signer::Release {
        let r = git2::Repository::open(&self.repo).unwrap();
        let oid = ferry_signer::git::resolve_commit(&r, "deploy").unwrap();
        ferry_signer::git::read_release(&r, oid).unwrap()
    }

    /// The system `host` runs now, by its name in `systems`.
    fn running(&self, host: &str) -> &'static str {
        let link = self.bed.host_path(&format!("{FLEET}/{host}/current-system"));
        self.name_of(host, &std::fs::read_link(link).unwrap().display().to_string())
    }

    /// The system `host`'s profile points at, by name.
    fn profile(&self, host: &str) -> &'static str {
        let dir = format!("/nix/var/nix/profiles/fleet-{host}");
        let generation = std::fs::read_link(self.bed.host_path(&format!("{dir}/system"))).unwrap();
        let top = std::fs::read_link(self.bed.host_path(&format!("{dir}/{}", generation.display()))).unwrap();
        self.name_of(host, &top.display().to_string())
    }

    /// The name of `host`'s system in the release at the tip.
    fn released(&self, host: &str) -> &'static str {
        let tip = self.tip();
        let entry = &tip.hosts[&host.parse().unwrap()];
        self.name_of(host, entry.toplevel.as_str())
    }

    fn name_of(&self, host: &str, toplevel: &str) -> &'static str {
        self.systems
            .iter()
            .find(|((h, _), t)| *h == host && t.as_str() == toplevel)
            .map(|((_, n), _)| *n)
            .unwrap_or_else(|| panic!("{toplevel} is none of {host}'s systems"))
    }

    /// Every toplevel switched to so far, in order (all hosts).
    fn switches(&self) -> Vec<String> {
        std::fs::read_to_string(self.bed.host_path("/run/ferry-test/switch.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How often `host` switched (or rolled back) to its system `name`.
    fn switches_to(&self, host: &str, name: &str) -> usize {
        let top = self
            .systems
            .iter()
            .find(|((h, n), _)| *h == host && *n == name)
            .map(|(_, t)| t.as_str())
            .unwrap();
        self.switches().iter().filter(|l| l.ends_with(top)).count()
    }

    /// What the agents logged, for failure messages.
    fn journal(&self) -> String {
        let out = self
            .bed
            .exec(&["journalctl", "--no-pager", "-o", "cat", "-n", "200"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn exec_ok(bed: &Testbed, cmd: &[&str]) {
    let out = bed.exec(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_fleet_rolls_out_in_waves_stops_at_a_failing_canary_and_resumes() {
    let fleet = Fleet::start();

    // 1. One release for every host: the four agents deploy it at once, and
    //    `wait` returns 0 when all of them report success.
    let all_a = fleet.hosts_file("a.json", "a", &[]);
    let out = fleet.signer(&[
        "release",
        "--repo",
        fleet.repo.to_str().unwrap(),
        "--key",
        fleet.key.to_str().unwrap(),
        "--hosts-file",
        all_a.to_str().unwrap(),
        "--source",
        SOURCE,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = fleet.signer(&[
        "wait",
        "--repo",
        fleet.repo.to_str().unwrap(),
        "--timeout",
        "300s",
        "--interval",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), fleet.journal());
    for host in HOSTS {
        assert_eq!(fleet.running(host), "a", "{host}");
        assert_eq!(fleet.profile(host), "a", "{host}");
    }

    // 2. A rollout whose canary fails its health check: the canary rolls
    //    back, the rollout stops with exit 3 and says why, and no later wave
    //    is released: the other hosts never see their new system.
    let bad_canary = fleet.hosts_file("bad-canary.json", "b", &[("canary1", "unhealthy")]);
    let out = fleet.signer(
        &fleet
            .rollout_args(&bad_canary)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}\n{}", fleet.journal());
    assert!(
        said.contains("stopped: wave 1 (canary) failed on canary1; later waves were not released"),
        "{said}"
    );
    assert_eq!(fleet.tip().serial, 2, "only the canary's wave was released");
    assert_eq!(fleet.released("canary1"), "unhealthy");
    assert_eq!(
        fleet.switches_to("canary1", "unhealthy"),
        1,
        "the canary tried it"
    );
    assert_eq!(fleet.running("canary1"), "a", "and rolled back");
    assert_eq!(fleet.profile("canary1"), "a");
    for host in ["web1", "web2", "db1"] {
        assert_eq!(fleet.released(host), "a", "{host} is untouched");
        assert_eq!(fleet.running(host), "a", "{host}");
        assert_eq!(fleet.switches_to(host, "b"), 0, "{host} never saw b");
    }
    let failure = fleet
        .forge
        .statuses()
        .into_iter()
        .rfind(|s| s.context == "ferry/canary1")
        .unwrap();
    assert_eq!(failure.state, "failure", "{failure:?}");

    // 3. A healthy build, rolled out by a CI job killed while the second
    //    wave deploys, then run again: it resumes with what is left and
    //    releases no wave twice.
    let healthy = fleet.hosts_file("b.json", "b", &[]);
    let mut killed = fleet.signer_command(
        &fleet
            .rollout_args(&healthy)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let mut child = killed
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while fleet.tip().serial < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the second wave was never released:\n{}",
            fleet.journal()
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the rollout ended ({status}) before its second wave was released");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(fleet.released("web1"), "b");
    assert_eq!(fleet.released("db1"), "a", "killed before the last wave");

    let out = fleet.signer(
        &fleet
            .rollout_args(&healthy)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), fleet.journal());
    assert_eq!(fleet.tip().serial, 5, "one release per wave, none twice");
    let log = git(&fleet.repo, &["log", "--format=%s", "deploy"]);
    for wave in ["1 of 3 (canary)", "2 of 3 (web)", "3 of 3 (rest)"] {
        let released = log.lines().filter(|l| l.contains(wave)).count();
        let expected = if wave.starts_with('1') { 2 } else { 1 };
        assert_eq!(released, expected, "wave {wave}:\n{log}");
    }
    for host in HOSTS {
        assert_eq!(fleet.running(host), "b", "{host}");
        assert_eq!(fleet.profile(host), "b", "{host}");
        assert_eq!(fleet.switches_to(host, "b"), 1, "{host} switched to b once");
    }

    // `status` shows every host on the release; `wait` returns 0 at once.
    let out = fleet.signer(&["status", "--repo", fleet.repo.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["summary"]["hosts"], 4, "{json}");
    assert_eq!(json["summary"]["success"], 4, "{json}");
    let out = fleet.signer(&[
        "wait",
        "--repo",
        fleet.repo.to_str().unwrap(),
        "--timeout",
        "60s",
        "--interval",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// The fleet following a static mirror of the deploy branch (nginx serving
/// what the mirror job writes after every push): a rollout in waves goes
/// through as from the git server, each host's polls of the unchanged
/// mirror are answered 304, and each pack is downloaded once per host.
#[test]
fn a_fleet_follows_a_static_mirror_through_a_rollout() {
    let fleet = Fleet::start_following(true);
    let all_a = fleet.hosts_file("a.json", "a", &[]);
    let out = fleet.signer(
        &fleet
            .rollout_args(&all_a)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), fleet.journal());
    for host in HOSTS {
        assert_eq!(fleet.running(host), "a", "{host}");
    }
    assert_eq!(fleet.tip().serial, 3, "three waves, three releases");
    let (nginx, _) = fleet.mirror.as_ref().unwrap();
    let is_poll = |r: &&ferry_test_support::nginx::Logged| r.target == "/deploy.git/info/refs";
    // The mirror's `info/refs` changed once per release: each host read
    // each version once, whenever it polled during the rollout.
    let log = nginx.requests();
    let read = log.iter().filter(is_poll).filter(|r| r.status == 200).count();
    assert!(
        read <= HOSTS.len() * 3,
        "each host read each of the 3 versions of info/refs once, not {read} times:\n{}",
        describe(&log)
    );
    // Now nothing changes: every host's next polls are answered 304.
    let before = log.iter().filter(is_poll).count();
    let started = std::time::Instant::now();
    let log = loop {
        let log = nginx.requests();
        if log.iter().filter(is_poll).count() >= before + 2 * HOSTS.len() {
            break log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the hosts stopped polling the mirror:\n{}",
            describe(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let idle: Vec<_> = log.iter().filter(is_poll).skip(before).collect();
    assert!(
        idle.iter().all(|r| r.status == 304),
        "every poll of the unchanged mirror was answered 304:\n{}",
        describe(&log)
    );
    let packs: Vec<&str> = log
        .iter()
        .filter(|r| r.target.ends_with(".pack"))
        .map(|r| r.target.as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = packs.iter().copied().collect();
    assert!(
        packs.len() <= distinct.len() * HOSTS.len(),
        "no host downloaded a pack twice: {packs:#?}"
    );
}

/// The requests nginx logged, one a line, for an assertion's message.
fn describe(log: &[ferry_test_support::nginx::Logged]) -> String {
    log.iter()
        .map(|r| format!("{} {} {}", r.method, r.status, r.target))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fleet reporting with signed receipts (`report.receipts`) to a real S3
/// server (moto, every request signed and checked), each agent signing with
/// a host key of its own: a rollout gated on the receipts goes through its
/// three waves while the forge gets no per-host status, only one
/// `ferry/fleet` status per state of each wave; `status` verifies all four
/// receipts; a receipt forged into the bucket is shown as forged and fails
/// `wait`; a failing canary stops the next rollout, posting its failure
/// and the fleet's.
#[test]
fn a_fleet_reports_with_receipts_and_a_rollout_is_gated_on_them() {
    use ferry_test_support::s3::Moto;
    let moto = Moto::start();
    let empty = tempfile::tempdir().unwrap();
    moto.upload_cache("fleet-receipts", "us-east-1", empty.path());
    let url = format!("s3://fleet-receipts/ferry?endpoint={}", moto.endpoint());
    let fleet = Fleet::start_reporting(
        false,
        &format!("receipts = \"{url}\"\nhost_key = \"/etc/ferry/{{host}}_host_key\"\n"),
    );
    // Each host's SSH host key, and the pinned host-keys file CI keeps.
    let mut pinned = String::new();
    for host in HOSTS {
        let key =
            ferry_test_support::ssh_keygen(fleet.dir.path(), &format!("{host}_host_key"), "ed25519", "");
        std::fs::copy(&key, fleet.bed.host_path(&format!("/etc/ferry/{host}_host_key"))).unwrap();
        pinned.push_str(&format!("{host} {}\n", ferry_test_support::public_key(&key)));
    }
    let host_keys = fleet.dir.path().join("host-keys");
    std::fs::write(&host_keys, pinned).unwrap();
    // The agents' bucket credentials, where the AWS tools look as root.
    let aws = fleet.bed.host_path("/root/.aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.key.access_key_id, moto.key.secret_access_key
        ),
    )
    .unwrap();
    let with_receipts = |args: &[&str]| {
        let mut cmd = fleet.signer_command(args);
        cmd.args(["--receipts", &url, "--host-keys", host_keys.to_str().unwrap()])
            .env("AWS_ACCESS_KEY_ID", &moto.key.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &moto.key.secret_access_key);
        cmd.output().unwrap()
    };
    let rollout = |hosts_file: &Path| {
        let args = fleet.rollout_args(hosts_file);
        with_receipts(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let repo = fleet.repo.to_str().unwrap();

    // 1. Three waves, each released once the receipts say the last is healthy.
    let out = rollout(&fleet.hosts_file("a.json", "a", &[]));
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), fleet.journal());
    assert_eq!(fleet.tip().serial, 3);
    for host in HOSTS {
        assert_eq!(fleet.running(host), "a", "{host}");
    }
    let statuses = fleet.forge.statuses();
    let per_host: Vec<_> = statuses
        .iter()
        .filter(|s| HOSTS.iter().any(|h| s.context == format!("ferry/{h}")))
        .collect();
    assert!(per_host.is_empty(), "healthy hosts post nothing: {per_host:?}");
    let fleet_statuses: Vec<_> = statuses.iter().filter(|s| s.context == "ferry/fleet").collect();
    let last = fleet_statuses.last().expect("a ferry/fleet status");
    assert_eq!(
        (last.state.as_str(), last.description.as_str()),
        ("success", "4 of 4 hosts run release 3"),
    );
    // Per wave at most pending and success, each on the release and the
    // source: a handful of writes, whatever the fleet's size.
    assert!(fleet_statuses.len() <= 3 * 2 * 2, "{fleet_statuses:#?}");

    // 2. `status` reads and verifies every host's receipt.
    let out = with_receipts(&["status", "--repo", repo, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["summary"]["success"], 4, "{json}");
    assert_eq!(json["receipts"]["requests"], 5, "one listing, four reads: {json}");
    for host in json["hosts"].as_array().unwrap() {
        let expected = format!("{} runs release 3", host["host"].as_str().unwrap());
        assert!(
            host["description"].as_str().unwrap().contains(&expected),
            "{host}"
        );
    }

    // Each receipt says what its host runs, from its own
    // /run/current-system, and the boot it runs in.
    let release: ferry_signer::CommitId = git(&fleet.repo, &["rev-parse", "deploy"]).parse().unwrap();
    let env = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(moto.key.access_key_id.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(moto.key.secret_access_key.clone()),
        _ => None,
    };
    let reader = ferry_signer::receipt_bucket::Reader::open(&url, &env).unwrap();
    let keys = ferry_signer::receipt::HostKeys::load(&host_keys).unwrap();
    let found = reader.read(&release, &keys).unwrap();
    for host in HOSTS {
        let Some(ferry_signer::receipt::Verdict::Genuine(r)) = found.by_host.get(&host.parse().unwrap())
        else {
            panic!("{host}: {:?}", found.by_host)
        };
        assert_eq!(
            r.toplevel.as_ref().map(|t| t.to_string()),
            Some(fleet.systems[&(host, "a")].clone()),
            "{host}"
        );
        assert!(r.boot.is_some(), "{host}: {r:?}");
        assert_eq!(r.source.as_ref().map(|c| c.as_str()), Some(SOURCE), "{host}");
    }

    // 3. db1's receipt replaced by one signed with web1's key (what a leaked
    //    bucket credential can do): shown as forged, and `wait` fails.
    let forged = ferry_signer::receipt::Receipt {
        release: release.clone(),
        source: Some(SOURCE.parse().unwrap()),
        host: "db1".parse().unwrap(),
        state: ferry_signer::forge::StatusState::Success,
        time: chrono::Utc::now(),
        toplevel: None,
        boot: None,
        description: "db1 runs release 3".into(),
    };
    let web1_key = ferry_signer::receipt::load_host_key(&fleet.dir.path().join("web1_host_key")).unwrap();
    let staged = fleet.dir.path().join("forged");
    let object = staged.join(format!("ferry/{release}/db1"));
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, forged.sign(&web1_key).unwrap()).unwrap();
    moto.upload_cache("fleet-receipts", "us-east-1", &staged);
    let out = with_receipts(&["status", "--repo", repo]);
    let said = text(&out);
    assert!(
        said.contains("db1")
            && said.contains("forged: signed by SHA256:")
            && said.contains("not a key pinned for db1"),
        "{said}"
    );
    let out = with_receipts(&["wait", "--repo", repo, "--timeout", "60s", "--interval", "1s"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // 4. A failing canary: its failure reaches the forge (report.statuses
    //    defaults to failures), the rollout stops, and the fleet's status
    //    names it.
    let out = rollout(&fleet.hosts_file("bad.json", "b", &[("canary1", "unhealthy")]));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}\n{}", fleet.journal());
    assert!(said.contains("wave 1 (canary) failed on canary1"), "{said}");
    let statuses = fleet.forge.statuses();
    let canary = statuses
        .iter()
        .rfind(|s| s.context == "ferry/canary1")
        .expect("posted");
    assert_eq!(canary.state, "failure", "{canary:?}");
    let fleet_status = statuses.iter().rfind(|s| s.context == "ferry/fleet").unwrap();
    assert_eq!(fleet_status.state, "failure", "{fleet_status:?}");
    assert!(
        fleet_status.description.contains("failed: canary1"),
        "{fleet_status:?}"
    );
    for host in ["web1", "web2", "db1"] {
        assert_eq!(fleet.running(host), "a", "{host}");
    }
}
