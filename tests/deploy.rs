//! The reconcile pipeline end to end on real parts: `ferry-agent once` runs
//! inside a throwaway systemd (PID 1, real D-Bus, real journald), fetches from
//! a real `git daemon`, realises from a signed HTTP binary cache with real
//! Nix, switches through a transient unit, and reports to a recording forge.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ferry_test_support::deploy_repo::{DeployRepo, GitDaemon};
use ferry_test_support::forge_recorder::Recorder;
use ferry_test_support::git;
use ferry_test_support::git_http::GitHttp;
use ferry_test_support::http::{FaultyCache, NarFault, StaticServer};
use ferry_test_support::nginx::{Access, Nginx};
use ferry_test_support::nix::{self, Behaviour, Cache};
use ferry_test_support::s3::Moto;
use ferry_test_support::systemd::Testbed;

/// Where the agent binary is installed inside the testbed.
const AGENT: &str = "/usr/local/bin/ferry-agent";
const SOURCE: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

struct World {
    dir: tempfile::TempDir,
    deploy: DeployRepo,
    _git: Option<GitDaemon>,
    git_http: Option<GitHttp>,
    cache_server: Option<StaticServer>,
    /// The cache served on the same port by a [`FaultyCache`] instead.
    faulty_cache: Option<FaultyCache>,
    cache_dir: std::path::PathBuf,
    cache_port: u16,
    config: String,
    forge: Recorder,
    systems: BTreeMap<&'static str, String>,
    bed: Testbed,
}

impl World {
    /// Builds the systems, fills and serves the cache, then boots systemd
    /// with `current` as the running system.
    fn new(systems: &[(&'static str, Behaviour)]) -> Self {
        Self::build(Behaviour::Succeed, systems, false)
    }

    /// Like `new`, the running system's switch-to-configuration behaving as
    /// `current` does (a rollback runs it).
    fn with_current(current: Behaviour, systems: &[(&'static str, Behaviour)]) -> Self {
        Self::build(current, systems, false)
    }

    /// Like `new`, with the deploy repository served over smart HTTP behind a
    /// token (in /etc/ferry/git-token) instead of git daemon.
    fn over_http(systems: &[(&'static str, Behaviour)]) -> Self {
        Self::build(Behaviour::Succeed, systems, true)
    }

    fn build(current: Behaviour, systems: &[(&'static str, Behaviour)], http: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seed = ferry_test_support::unique("w");
        let mut built = BTreeMap::new();
        for (name, behaviour) in std::iter::once(&("current", current)).chain(systems) {
            // Systems whose name starts with `newkernel` boot another kernel.
            // Kernels are this world's own: a kernel path shared with a
            // concurrent test run could not be deleted while that run holds it.
            let kernel = match name.starts_with("newkernel") {
                true => format!("k2-{seed}"),
                false => format!("k1-{seed}"),
            };
            built.insert(
                *name,
                nix::build_system(
                    dir.path(),
                    "web1",
                    &format!("{name}-{seed}"),
                    *behaviour,
                    &kernel,
                    3,
                ),
            );
        }
        // Keep the current system alive; everything else lives only in the cache.
        let root = dir.path().join("current-root");
        nix::run(
            Command::new("nix-store")
                .args(["--realise", &built["current"], "--add-root"])
                .arg(&root),
        );
        let cache = Cache::new(&dir.path().join("cache"), "test-cache-1");
        let keep: Vec<String> = nix::closure(&built["current"]);
        for (name, path) in &built {
            if *name != "current" {
                cache.copy(path);
                cache.sign(path);
            }
        }
        for (name, path) in &built {
            if *name != "current" {
                let only_here: Vec<String> = nix::closure(path)
                    .into_iter()
                    .filter(|p| !keep.contains(p))
                    .collect();
                nix::delete(&only_here);
            }
        }
        let cache_server = StaticServer::start(&cache.dir);
        let deploy = DeployRepo::new(dir.path());
        let (git_daemon, git_http) = if http {
            (None, Some(GitHttp::start(dir.path(), "git-s3cret")))
        } else {
            (Some(GitDaemon::start(dir.path())), None)
        };
        let git_url = match (&git_daemon, &git_http) {
            (Some(d), _) => d.url("deploy.git"),
            (_, Some(h)) => h.url("deploy.git"),
            _ => unreachable!(),
        };
        let token_line = if http {
            "token_file = \"/etc/ferry/git-token\"\n"
        } else {
            ""
        };
        let forge = Recorder::start();

        let bed = Testbed::boot();
        bed.install(crate::common::agent_binary(), AGENT);
        let config_text = format!(
            r#"host = "web1"
[source]
url = "{git}"
allowed_signers = "/etc/ferry/allowed_signers"
poll_interval = "1s"
jitter = "0s"
{token_line}[cache]
substituters = ["{cache}"]
trusted_public_keys = ["{key}"]
[switch]
timeout = "30s"
[health]
settle = "0s"
[report]
forge = "gitea"
api_url = "{forge}"
repository = "ops/deploy"
token_file = "/etc/ferry/forge-token"
"#,
            git = git_url,
            cache = cache_server.url(),
            key = cache.public_key,
            forge = forge.url(),
        );
        std::fs::create_dir_all(bed.host_path("/etc/ferry")).unwrap();
        std::fs::write(bed.host_path("/etc/ferry/agent.toml"), &config_text).unwrap();
        std::fs::write(
            bed.host_path("/etc/ferry/allowed_signers"),
            deploy.key.allowed_signers_line("ci@example.com") + "\n",
        )
        .unwrap();
        std::fs::write(bed.host_path("/etc/ferry/forge-token"), "s3cret-token\n").unwrap();
        std::fs::write(bed.host_path("/etc/ferry/git-token"), "git-s3cret\n").unwrap();
        let current = &built["current"];
        for cmd in [
            vec!["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", current],
            vec!["ln", "-sfn", current, "/run/current-system"],
            vec!["ln", "-sfn", current, "/run/booted-system"],
        ] {
            let out = bed.exec(&cmd);
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cache_port = cache_server.port;
        Self {
            dir,
            deploy,
            _git: git_daemon,
            git_http,
            cache_server: Some(cache_server),
            faulty_cache: None,
            cache_dir: cache.dir.clone(),
            cache_port,
            config: config_text,
            forge,
            systems: built,
            bed,
        }
    }

    /// Rewrites the agent's configuration with these `[health]` commands.
    fn set_health_commands(&self, commands: &str) {
        self.set_config("[health]\n", &format!("[health]\ncommands = {commands}\n"));
    }

    /// The `url = …` line of the agent's `[source]`.
    fn source_url_line(&self) -> String {
        let line = self.config.lines().find(|l| l.starts_with("url = "));
        line.expect("[source] has a url").to_owned()
    }

    /// Rewrites the agent's configuration with `from` replaced by `to`.
    fn set_config(&self, from: &str, to: &str) {
        assert!(self.config.contains(from), "{from} is not in the configuration");
        std::fs::write(
            self.bed.host_path("/etc/ferry/agent.toml"),
            self.config.replace(from, to),
        )
        .unwrap();
    }

    fn cache_down(&mut self) {
        self.cache_server = None;
    }

    fn cache_up(&mut self) {
        self.cache_server = Some(StaticServer::start_on(&self.cache_dir, self.cache_port));
    }

    /// Serves the cache from now on (same URL) by a [`FaultyCache`] that
    /// serves NAR bodies as `fault` says.
    fn faulty_cache(&mut self, fault: NarFault) -> &FaultyCache {
        self.cache_server = None;
        self.faulty_cache = None;
        self.faulty_cache = Some(FaultyCache::start_on(&self.cache_dir, self.cache_port, fault));
        self.faulty_cache.as_ref().unwrap()
    }

    fn status_of(&self, commit: &str) -> Vec<(String, String)> {
        self.forge
            .statuses()
            .into_iter()
            .filter(|(c, _, _)| c == commit)
            .map(|(_, s, d)| (s, d))
            .collect()
    }

    fn release(&self, system: &str) -> String {
        self.release_expiring(system, None)
    }

    /// A release of `system` that expires `expires_in` after it is made.
    fn release_expiring(&self, system: &str, expires_in: Option<chrono::Duration>) -> String {
        let repo = git2::Repository::open(&self.deploy.path).unwrap();
        let changes = ferry_signer::publish::ReleaseChanges {
            hosts: [(
                "web1".parse().unwrap(),
                ferry_signer::HostEntry {
                    toplevel: self.systems[system].parse().unwrap(),
                    action: ferry_signer::Action::Switch,
                },
            )]
            .into(),
            source: Some(SOURCE.parse().unwrap()),
            expires_in,
            ..Default::default()
        };
        ferry_signer::publish::publish(
            &repo,
            "deploy",
            &self.deploy.key,
            &changes,
            None,
            chrono::Utc::now(),
        )
        .unwrap()
        .commit
        .to_string()
    }

    fn agent(&self, args: &[&str]) -> Output {
        let mut argv = vec![AGENT, "--config", "/etc/ferry/agent.toml"];
        argv.extend(args);
        self.bed.exec(&argv)
    }

    fn once(&self) -> (bool, String) {
        let out = self.agent(&["once"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn link(&self, inside: &str) -> String {
        std::fs::read_link(self.bed.host_path(inside))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn running(&self) -> String {
        self.link("/run/current-system")
    }

    fn profile(&self) -> String {
        let generation = self.link("/nix/var/nix/profiles/system");
        self.link(&format!("/nix/var/nix/profiles/{generation}"))
    }

    fn switch_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.bed.host_path("/run/ferry-test/switch.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.agent(&["status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The journal entries matching `field`, as JSON objects.
    fn journal_json(&self, field: &str) -> Vec<serde_json::Value> {
        let out = self.bed.exec(&["journalctl", "--no-pager", "-o", "json", field]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("journalctl -o json"))
            .collect()
    }

    fn journal(&self, field: &str) -> String {
        let out = self.bed.exec(&["journalctl", "--no-pager", "-o", "cat", field]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn name(path: &str) -> &str {
    &path[44..]
}

#[test]
fn deploys_reports_rolls_back_and_refuses() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("fails", Behaviour::Exit(4)),
        ("reboot", Behaviour::RebootRequired),
    ]);
    let b = w.systems["b"].clone();

    // 1. A new release: realised from the cache, switched in the transient
    //    unit, statuses pending then success on release and source commits.
    let r1 = w.release("b");
    let (ok, out) = w.once();
    assert!(ok, "{out}");
    assert!(
        out.contains("deployed") && !out.contains("reboot"),
        "same kernel, no reboot: {out}"
    );
    assert_eq!(w.running(), b);
    assert_eq!(w.profile(), b);
    assert_eq!(w.switch_log(), vec![format!("switch {b}")]);
    assert_eq!(
        w.link("/nix/var/nix/profiles/system"),
        "system-2-link",
        "a new generation"
    );
    assert_eq!(
        w.forge
            .statuses()
            .iter()
            .map(|(c, s, _)| (c.clone(), s.clone()))
            .collect::<Vec<_>>(),
        vec![
            (r1.clone(), "pending".into()),
            (SOURCE.into(), "pending".into()),
            (r1.clone(), "success".into()),
            (SOURCE.into(), "success".into()),
        ]
    );
    let first = &w.forge.requests()[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, format!("/api/v1/repos/ops/deploy/statuses/{r1}"));
    assert_eq!(first.headers["authorization"], "token s3cret-token");
    assert_eq!(first.body["context"], "ferry/web1");
    let journal = w.journal(&format!("FERRY_COMMIT={r1}"));
    assert!(
        journal.contains("web1 runs release 1"),
        "journal for the deploy:\n{journal}"
    );
    assert!(!journal.contains("s3cret-token"));
    // Every event of the deploy carries its release, serial and toplevel
    // (from the deploy's span) and names its phase.
    let events = w.journal_json(&format!("FERRY_COMMIT={r1}"));
    let phases: Vec<&str> = events.iter().filter_map(|e| e["FERRY_PHASE"].as_str()).collect();
    for phase in ["fetch", "preflight", "realising", "switching", "checking", "done"] {
        assert!(phases.contains(&phase), "no {phase} event: {phases:?}");
    }
    for event in events.iter().filter(|e| e["FERRY_PHASE"] != "fetch") {
        assert_eq!(event["FERRY_SERIAL"], "1", "{event}");
        assert_eq!(event["FERRY_TOPLEVEL"], b.as_str(), "{event}");
    }

    // 2. Tip unchanged: nothing to do, nothing reported.
    let (ok, out) = w.once();
    assert!(ok && out.contains("up to date"), "{out}");
    assert_eq!(w.forge.statuses().len(), 4);

    // 3. switch-to-configuration exits 4: rolled back to b, failure reported.
    let r2 = w.release("fails");
    let (ok, out) = w.once();
    assert!(!ok, "{out}");
    assert!(
        out.contains("switch-to-configuration failed (exit 4); rolled back to"),
        "{out}"
    );
    assert_eq!(w.running(), b);
    assert_eq!(w.profile(), b, "the profile points at the previous system again");
    assert_eq!(
        w.switch_log()[1..],
        [format!("switch {}", w.systems["fails"]), format!("switch {b}")]
    );
    let last = w.forge.statuses().last().cloned().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), (SOURCE, "failure"));
    assert!(last.2.contains("exit 4"), "{}", last.2);
    assert!(w
        .forge
        .statuses()
        .iter()
        .any(|(c, s, _)| c == &r2 && s == "failure"));

    // 4. Exit 100: deployed, reboot required.
    w.release("reboot");
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed; reboot required"), "{out}");
    assert_eq!(w.running(), w.systems["reboot"]);
    let status = w.status_json();
    assert_eq!(status["last_outcome"]["result"], "success-reboot-required");
    assert_eq!(status["last_release"]["serial"], 3);
    assert_eq!(status["drift"], serde_json::Value::Null);

    // 5. An unsigned commit on the branch: refused, nothing changes.
    let work = w.dir.path().join("work");
    git(
        w.dir.path(),
        &[
            "clone",
            "-q",
            "-b",
            "deploy",
            w.deploy.path.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(
        work.join("release.toml"),
        std::fs::read_to_string(work.join("release.toml"))
            .unwrap()
            .replace("serial = 3", "serial = 4")
            .replace(name(&w.systems["reboot"]), name(&b)),
    )
    .unwrap();
    git(&work, &["commit", "-qam", "sneaky"]);
    git(&work, &["push", "-q", "origin", "deploy"]);
    let sneaky = git(&work, &["rev-parse", "HEAD"]);
    let (ok, out) = w.once();
    assert!(!ok && out.contains("is not signed"), "{out}");
    assert_eq!(w.running(), w.systems["reboot"]);
    let last = w.forge.statuses().last().cloned().unwrap();
    assert_eq!(
        last,
        (
            sneaky.clone(),
            "failure".into(),
            "refused: release commit is not signed".into()
        )
    );
    assert_eq!(
        w.status_json()["last_release"]["serial"],
        3,
        "the anchor did not move"
    );
    let journal = w.journal(&format!("FERRY_COMMIT={sneaky}"));
    assert!(journal.contains("release refused"), "{journal}");

    // 6. Someone switches outside Ferry: drift shows in status.
    let out = w.bed.exec(&["ln", "-sfn", &b, "/run/current-system"]);
    assert!(out.status.success());
    let drift = w.status_json()["drift"].as_str().unwrap_or_default().to_owned();
    assert!(drift.contains("switched outside Ferry"), "{drift}");

    // 7. The forge is down (HTTP 500) during a deploy: statuses wait in the
    //    durable outbox, then arrive in order once it is back.
    w.forge.answer.store(500, std::sync::atomic::Ordering::SeqCst);
    let before = w.forge.statuses().len();
    // (The host runs b after step 6, so deploy the reboot system again.)
    let r7 = w.release("reboot");
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed"), "{out}");
    assert_eq!(
        w.forge.statuses().len(),
        before,
        "nothing accepted while the forge is down"
    );
    assert_eq!(w.status_json()["statuses_queued"], 4);
    w.forge.answer.store(201, std::sync::atomic::Ordering::SeqCst);
    let (ok, out) = w.once();
    assert!(ok && out.contains("up to date"), "{out}");
    let delivered: Vec<(String, String)> = w.forge.statuses()[before..]
        .iter()
        .map(|(c, s, _)| (c.clone(), s.clone()))
        .collect();
    assert_eq!(
        delivered,
        vec![
            (r7.clone(), "pending".into()),
            (SOURCE.into(), "pending".into()),
            (r7, "success".into()),
            (SOURCE.into(), "success".into()),
        ]
    );
    assert_eq!(w.status_json()["statuses_queued"], 0);
}

/// Two agents on one host: a `once` started while another agent is
/// switching is refused (exit 75, naming the other's PID) before it reads any
/// state, so it never adopts that deploy; the first reports once.
#[test]
fn a_second_agent_is_refused_while_one_deploys() {
    let w = World::new(&[("slow", Behaviour::Slow(4))]);
    let slow = w.systems["slow"].clone();
    let r = w.release("slow");
    let first = Command::new("nsenter")
        .args(["-t", &w.bed.pid.to_string(), "-a", "-r", "-w"])
        .args([AGENT, "--config", "/etc/ferry/agent.toml", "once"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.switch_log().is_empty() {
        assert!(Instant::now() < deadline, "the switch never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = w.agent(&["once"]);
    let text = String::from_utf8_lossy(&second.stderr).into_owned();
    assert_eq!(second.status.code(), Some(75), "{text}");
    let holder = std::fs::read_to_string(w.bed.host_path("/var/lib/ferry-agent/agent.lock")).unwrap();
    assert!(
        text.contains(&format!("another ferry-agent (pid {}) is running", holder.trim())),
        "{text}"
    );
    assert!(second.stdout.is_empty(), "no reconcile ran");

    let first = first.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success() && out.contains("deployed"), "{out}");
    assert_eq!(
        w.switch_log(),
        vec![format!("switch {slow}")],
        "exactly one switch"
    );
    let finals: Vec<String> = w
        .forge
        .statuses()
        .iter()
        .filter(|(c, s, _)| c == &r && s != "pending")
        .map(|(_, s, _)| s.clone())
        .collect();
    assert_eq!(finals, ["success"], "one final status for the release");
    // Free again once the first agent has ended.
    let (ok, out) = w.once();
    assert!(ok && out.contains("up to date"), "{out}");
}

#[test]
fn a_killed_agent_resumes_without_a_second_switch() {
    let w = World::new(&[("slow", Behaviour::Slow(4))]);
    let slow = w.systems["slow"].clone();
    let r = w.release("slow");
    let mut first = Command::new("nsenter")
        .args([
            "-t",
            &w.bed.pid.to_string(),
            "-a",
            "-r",
            "-w",
            AGENT,
            "--config",
            "/etc/ferry/agent.toml",
            "once",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the switch is running in its unit, then kill the agent hard.
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.switch_log().is_empty() {
        assert!(Instant::now() < deadline, "the switch never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // nsenter forks the agent: kill that child, and only it.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", first.id())).unwrap();
    let agent_pid = children
        .split_whitespace()
        .next()
        .expect("the agent runs under nsenter");
    ferry_test_support::systemd::kill9(agent_pid.parse().unwrap()).expect("the agent can be killed");
    let _ = first.wait();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.bed.host_path("/var/lib/ferry-agent/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["in_flight"]["phase"], "switching", "killed mid-switch");

    // A new agent finds the running unit, waits for it, reports once.
    let (ok, out) = w.once();
    if !ok {
        let j = w
            .bed
            .exec(&["journalctl", "--no-pager", "-o", "short-precise", "-n", "60"]);
        eprintln!(
            "testbed journal, for diagnosis:\n{}",
            String::from_utf8_lossy(&j.stdout)
        );
    }
    assert!(ok && out.contains("deployed"), "{out}");
    assert_eq!(
        w.switch_log(),
        vec![format!("switch {slow}")],
        "exactly one switch"
    );
    assert_eq!(w.running(), slow);
    let successes = w
        .forge
        .statuses()
        .iter()
        .filter(|(c, s, _)| c == &r && s == "success")
        .count();
    assert_eq!(successes, 1);
    let (ok, out) = w.once();
    assert!(ok && out.contains("up to date"), "{out}");
    assert_eq!(
        w.forge
            .statuses()
            .iter()
            .filter(|(_, s, _)| s == "success")
            .count(),
        2,
        "release and source, once each"
    );
}

#[test]
fn attacks_and_faults_leave_the_system_untouched() {
    let mut w = World::new(&[
        ("b", Behaviour::Succeed),
        ("c", Behaviour::Succeed),
        ("d", Behaviour::Succeed),
        ("e", Behaviour::Succeed),
        ("hangs", Behaviour::Slow(600)),
        ("newkernel", Behaviour::Succeed),
        ("breaks", Behaviour::StartsFailingUnit),
    ]);
    let r1 = w.release("b");
    assert!(w.once().0);
    let r2 = w.release("c");
    assert!(w.once().0);
    let c = w.systems["c"].clone();
    assert_eq!(w.running(), c);

    // A force push back to the older signed release: refused as a rewind.
    git(&w.deploy.path, &["update-ref", "refs/heads/deploy", &r1]);
    let (ok, out) = w.once();
    assert!(
        !ok && out.contains("does not descend from the last accepted release"),
        "{out}"
    );
    assert_eq!(w.running(), c);
    assert!(w.status_of(&r1).contains(&(
        "failure".into(),
        "refused: branch was rewound (not a descendant of the last release)".into()
    )));
    assert_eq!(
        w.status_json()["last_release"]["commit"],
        r2.as_str(),
        "the anchor stays"
    );
    let journal = w.journal(&format!("FERRY_COMMIT={r1}"));
    assert!(journal.contains("release refused"), "{journal}");

    // Back on track; a release whose health check fails is rolled back.
    git(&w.deploy.path, &["update-ref", "refs/heads/deploy", &r2]);
    // A release whose activation leaves a unit failed is rolled back.
    let rb = w.release("breaks");
    let (ok, out) = w.once();
    assert!(!ok, "{out}");
    assert!(
        out.contains("failed units: broken-") && out.contains("rolled back to"),
        "{out}"
    );
    assert_eq!(w.running(), c);
    assert!(w
        .status_of(&rb)
        .iter()
        .any(|(s, d)| s == "failure" && d.contains("failed units")));

    w.set_health_commands(r#"["test -e /run/ferry-test/healthy"]"#);
    let r3 = w.release("d");
    let (ok, out) = w.once();
    assert!(!ok, "{out}");
    assert!(
        out.contains("check `test -e /run/ferry-test/healthy` exited with 1; rolled back to"),
        "{out}"
    );
    assert_eq!(w.running(), c);
    assert_eq!(w.profile(), c);
    assert!(w
        .status_of(&r3)
        .iter()
        .any(|(s, d)| s == "failure" && d.contains("rolled back")));

    // The binary cache is down: an error, retried later, no state damage.
    w.set_health_commands("[]");
    w.cache_down();
    // (e has never been on this host, so it must come from the cache.)
    let r4 = w.release("e");
    let (ok, out) = w.once();
    assert!(!ok && out.contains("binary cache unreachable"), "{out}");
    let status = w.status_json();
    assert_eq!(status["in_progress"], serde_json::Value::Null);
    assert_eq!(status["last_release"]["commit"], r3.as_str(), "not accepted yet");
    assert_eq!(w.running(), c);
    let said = w.status_of(&r4);
    assert_eq!(said.len(), 1, "a fresh fault is only retried: {said:?}");
    let deploying = said[0].clone();
    assert!(
        deploying.0 == "pending" && deploying.1.starts_with("deploying release "),
        "{said:?}"
    );
    // Still down past `report.error_after` (zero here): one `error` status,
    // not one per attempt.
    w.set_config("forge = \"gitea\"", "forge = \"gitea\"\nerror_after = \"0s\"");
    for _ in 0..2 {
        let (ok, out) = w.once();
        assert!(!ok && out.contains("binary cache unreachable"), "{out}");
    }
    let said = w.status_of(&r4);
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[1].0, "error", "{said:?}");
    assert!(
        said[1].1.starts_with(&format!(
            "error: binary cache unreachable: 127.0.0.1:{}; retrying since ",
            w.cache_port
        )),
        "{said:?}"
    );
    // It comes back: the same release deploys on the next reconcile, saying
    // "deploying" again first.
    w.cache_up();
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed"), "{out}");
    assert_eq!(w.running(), w.systems["e"]);
    let said = w.status_of(&r4);
    assert_eq!(said.len(), 4, "{said:?}");
    assert_eq!(said[2], deploying, "{said:?}");
    assert!(
        said[3].0 == "success" && said[3].1.contains(" runs release "),
        "{said:?}"
    );

    // A switch that hangs is stopped at the timeout and rolled back.
    w.set_config("timeout = \"30s\"", "timeout = \"3s\"");
    let r5 = w.release("hangs");
    let (ok, out) = w.once();
    assert!(!ok, "{out}");
    assert!(out.contains("timed out and was stopped; rolled back to"), "{out}");
    assert_eq!(w.running(), w.systems["e"]);
    assert_eq!(w.profile(), w.systems["e"]);
    assert!(w
        .status_of(&r5)
        .iter()
        .any(|(s, d)| s == "failure" && d.contains("timed out")));
}

/// Polls `cond` every 100 ms for up to `secs` seconds; on timeout, fails
/// with the testbed's journal for diagnosis.
fn wait_until(w: &World, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() >= deadline {
            let journal = w
                .bed
                .exec(&["journalctl", "--no-pager", "-o", "short-precise", "-n", "80"]);
            panic!(
                "timed out waiting for {what}; testbed journal:\n{}",
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_follows_the_branch_and_reloads_its_configuration() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("c", Behaviour::Succeed),
        ("d", Behaviour::Succeed),
    ]);
    w.start_service();
    let journal = || w.journal("_SYSTEMD_UNIT=ferry-agent.service");

    // A release is picked up by polling.
    w.release("b");
    wait_until(&w, 60, "the daemon to deploy b", || w.running() == w.systems["b"]);
    wait_until(&w, 10, "the next poll to be recorded", || {
        w.status_json()["next_poll"].is_string()
    });

    // A broken configuration is rejected and the old one kept.
    let good = std::fs::read_to_string(w.bed.host_path("/etc/ferry/agent.toml")).unwrap();
    std::fs::write(
        w.bed.host_path("/etc/ferry/agent.toml"),
        good.replace("jitter = \"0s\"", "jitter = \"soon\""),
    )
    .unwrap();
    wait_until(&w, 30, "the broken config to be rejected", || {
        journal().contains("rejected, keeping the old one")
    });
    w.release("c");
    wait_until(&w, 60, "the daemon to deploy c with the old config", || {
        w.running() == w.systems["c"]
    });

    // A valid edit is taken without a restart.
    std::fs::write(
        w.bed.host_path("/etc/ferry/agent.toml"),
        good.replace("jitter = \"0s\"", "jitter = \"1s\""),
    )
    .unwrap();
    wait_until(&w, 30, "the config to be reloaded", || {
        journal().contains("configuration /etc/ferry/agent.toml reloaded")
    });

    // Someone runs nixos-rebuild behind Ferry's back: drift in the journal.
    let out = w.bed.exec(&[
        "nix-env",
        "-p",
        "/nix/var/nix/profiles/system",
        "--set",
        &w.systems["b"],
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(&w, 30, "drift to be logged", || {
        journal().contains("changed outside Ferry")
    });

    // The release key is revoked in allowed_signers: its next release is refused.
    let other = ferry_signer::keys::SigningKey::generate("other").unwrap();
    std::fs::write(
        w.bed.host_path("/etc/ferry/allowed_signers"),
        other.allowed_signers_line("new@example.com") + "\n",
    )
    .unwrap();
    wait_until(&w, 30, "allowed_signers to be reloaded", || {
        journal().contains("allowed_signers reloaded")
    });
    let r = w.release("d");
    wait_until(&w, 60, "the revoked key's release to be refused", || {
        w.status_of(&r)
            .iter()
            .any(|(s, d)| s == "failure" && d.contains("unknown key"))
    });
    assert_eq!(w.running(), w.systems["c"]);
    let out = w.bed.exec(&["systemctl", "is-active", "ferry-agent.service"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "active");
}

/// The unit of `ferry-agent run` with executable `exe`, with the settings
/// the NixOS module uses (Restart=always, StateDirectory, Nix on PATH: this
/// machine's, wherever it is installed).
fn agent_unit(exe: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!(
        "[Unit]\nDescription=Ferry deploy agent\nAfter=network-online.target\n\
         [Service]\nExecStart={exe} --config /etc/ferry/agent.toml run\n\
         Environment=\"PATH={path}\"\n\
         Restart=always\nRestartSec=1\nStateDirectory=ferry-agent\n"
    )
}

impl World {
    /// Installs and starts `ferry-agent run` as a service, with the settings
    /// the NixOS module uses (Restart=always, StateDirectory, Nix on PATH:
    /// this machine's, wherever it is installed).
    fn start_service(&self) {
        self.start_service_with("");
    }

    /// [`World::start_service`] with `extra` lines in the unit's `[Service]`.
    fn start_service_with(&self, extra: &str) {
        self.start_unit(&(agent_unit(AGENT) + extra));
    }

    /// Installs `unit` as `ferry-agent.service` and starts it.
    fn start_unit(&self, unit: &str) {
        std::fs::write(
            self.bed.host_path("/etc/systemd/system/ferry-agent.service"),
            unit,
        )
        .unwrap();
        for cmd in [
            vec!["systemctl", "daemon-reload"],
            vec!["systemctl", "start", "ferry-agent.service"],
        ] {
            let out = self.bed.exec(&cmd);
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Writes a commit on top of the deploy branch whose release.toml is
    /// `text`, signed by `key` (or unsigned), and moves the branch to it.
    fn custom_release(&self, text: &str, key: Option<&ferry_signer::keys::SigningKey>) -> String {
        let repo = git2::Repository::open(&self.deploy.path).unwrap();
        let parent = repo
            .find_reference("refs/heads/deploy")
            .unwrap()
            .peel_to_commit()
            .unwrap();
        let blob = repo.blob(text.as_bytes()).unwrap();
        let mut tree = repo.treebuilder(Some(&parent.tree().unwrap())).unwrap();
        tree.insert("release.toml", blob, 0o100644).unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let who = git2::Signature::now("t", "t@example.com").unwrap();
        let buf = repo
            .commit_create_buffer(&who, &who, "custom", &tree, &[&parent])
            .unwrap();
        let payload = std::str::from_utf8(&buf).unwrap().to_owned();
        let oid = match key {
            Some(k) => {
                let sig = ferry_signer::sshsig::sign_git(k.private_key(), payload.as_bytes()).unwrap();
                ferry_signer::git::write_signed_commit(&repo, &payload, &sig).unwrap()
            }
            None => repo
                .odb()
                .unwrap()
                .write(git2::ObjectType::Commit, payload.as_bytes())
                .unwrap(),
        };
        repo.reference("refs/heads/deploy", oid, true, "test").unwrap();
        oid.to_string()
    }

    /// The branch back at `commit` (between attacks).
    fn reset_branch(&self, commit: &str) {
        git(&self.deploy.path, &["update-ref", "refs/heads/deploy", commit]);
    }
}

#[test]
fn every_refusal_leaves_the_host_untouched_and_says_why() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("c", Behaviour::Succeed),
        ("unsigned", Behaviour::Succeed),
    ]);
    let anchor = w.release("b");
    assert!(w.once().0);
    let b = w.systems["b"].clone();
    let release_text = |serial: u64, host: &str, system: &str, extra: &str| {
        format!(
            "format = 1\nserial = {serial}\ncreated = 2026-11-21T23:00:00Z\n{extra}\n[hosts.{host}]\ntoplevel = \"{}\"\n",
            w.systems[system]
        )
    };
    let stranger = ferry_signer::keys::SigningKey::generate("stranger").unwrap();
    // The cache serves `unsigned` without its signature line.
    let narinfo = w
        .cache_dir
        .join(format!("{}.narinfo", &w.systems["unsigned"][11..43]));
    let text = std::fs::read_to_string(&narinfo).unwrap();
    std::fs::write(
        &narinfo,
        text.lines()
            .filter(|l| !l.starts_with("Sig: "))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();

    let tampered = || {
        let c = w.custom_release(&release_text(2, "web1", "c", ""), Some(&w.deploy.key));
        let object = git(&w.deploy.path, &["cat-file", "commit", &c]) + "\n";
        let path = w.dir.path().join("tampered");
        std::fs::write(&path, object.replace("\n\ncustom\n", "\n\ncustom, edited\n")).unwrap();
        let t = git(
            &w.deploy.path,
            &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()],
        );
        w.reset_branch(&t);
        t
    };
    type Attack<'a> = (&'a str, Box<dyn Fn() -> String + 'a>, &'a str);
    let attacks: Vec<Attack> = vec![
        (
            "unsigned",
            Box::new(|| w.custom_release(&release_text(2, "web1", "c", ""), None)),
            "release commit is not signed",
        ),
        (
            "foreign key",
            Box::new(|| w.custom_release(&release_text(2, "web1", "c", ""), Some(&stranger))),
            "signed by unknown key",
        ),
        (
            "tampered",
            Box::new(tampered),
            "signature does not match the commit",
        ),
        (
            "lower serial",
            Box::new(|| w.custom_release(&release_text(1, "web1", "c", ""), Some(&w.deploy.key))),
            "serial 1 is not greater than 1",
        ),
        (
            "expired",
            Box::new(|| {
                w.custom_release(
                    &release_text(2, "web1", "c", "expires = 2026-11-22T00:00:00Z")
                        .replace("2026-11-21T23", "2020-01-01T00"),
                    Some(&w.deploy.key),
                )
            }),
            "stale: release 2 expired",
        ),
        (
            "another host's entry only",
            Box::new(|| w.custom_release(&release_text(2, "db1", "c", ""), Some(&w.deploy.key))),
            "release has no entry for web1",
        ),
        (
            "malformed release",
            Box::new(|| {
                w.custom_release(
                    &release_text(2, "web1", "c", "").replace("format = 1", "format = 2"),
                    Some(&w.deploy.key),
                )
            }),
            "understands only format 1",
        ),
        (
            // The host reads its own entry as strictly as the whole file.
            "this host's entry malformed",
            Box::new(|| {
                w.custom_release(
                    &(release_text(2, "web1", "c", "").replace(&w.systems["c"], "/tmp/not-a-store-path")
                        + &format!("\n[hosts.web2]\ntoplevel = \"{}\"\n", w.systems["c"])),
                    Some(&w.deploy.key),
                )
            }),
            "is not a Nix store path",
        ),
        (
            "unsigned closure path",
            Box::new(|| w.custom_release(&release_text(2, "web1", "unsigned", ""), Some(&w.deploy.key))),
            "is not signed",
        ),
    ];
    for (name, attack, reason) in attacks {
        let commit = attack();
        let (ok, out) = w.once();
        assert!(!ok, "{name}: accepted: {out}");
        assert_eq!(w.running(), b, "{name}: the system changed");
        assert_eq!(w.profile(), b, "{name}: the profile changed");
        let status = w.status_json();
        assert_eq!(
            status["last_release"]["commit"],
            anchor.as_str(),
            "{name}: the anchor moved"
        );
        assert_eq!(status["in_progress"], serde_json::Value::Null);
        let reported = w.status_of(&commit);
        assert!(
            reported.iter().any(|(s, d)| s == "failure" && d.contains(reason)),
            "{name}: expected a failure status with `{reason}`, got {reported:?}"
        );
        let journal = w.journal(&format!("FERRY_COMMIT={commit}"));
        assert!(journal.contains("release refused"), "{name}: journal: {journal}");
        w.reset_branch(&anchor);
    }
    // Nothing was switched at all after the first deploy.
    assert_eq!(w.switch_log(), vec![format!("switch {b}")]);

    // Another host's malformed entry (a release `ferry-signer` would not
    // have signed) is that host's refusal: this one reads only its own.
    let others_broken =
        release_text(2, "web1", "c", "") + "\n[hosts.web2]\ntoplevel = \"/tmp/not-a-store-path\"\n";
    w.custom_release(&others_broken, Some(&w.deploy.key));
    let (ok, out) = w.once();
    assert!(ok, "{out}");
    assert_eq!(w.running(), w.systems["c"]);
}

#[test]
fn the_service_survives_kill_and_outages_over_smart_http() {
    let w = World::over_http(&[
        ("b", Behaviour::Succeed),
        ("slow", Behaviour::Slow(4)),
        ("c", Behaviour::Succeed),
        ("selfupdate", Behaviour::UpdatesAgentUnit),
    ]);
    w.start_service();
    let journal = || w.journal("_SYSTEMD_UNIT=ferry-agent.service");

    // First release, over smart HTTP with the token.
    let r1 = w.release("b");
    wait_until(&w, 60, "the service to deploy b", || {
        w.running() == w.systems["b"]
    });

    // Many polls of an unchanged tip: no new fetch, no status spam.
    wait_until(&w, 10, "the success status", || {
        w.status_of(&r1).iter().any(|(s, _)| s == "success")
    });
    let statuses = w.forge.statuses().len();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        w.forge.statuses().len(),
        statuses,
        "no statuses while nothing changes"
    );
    assert_eq!(
        journal().matches("new tip on the deploy branch").count(),
        1,
        "one fetch only"
    );

    // kill -9 of the service mid-switch: systemd restarts it, it resumes,
    // exactly one switch, one success.
    let r2 = w.release("slow");
    wait_until(&w, 60, "the slow switch to start", || {
        w.switch_log().iter().any(|l| l.ends_with(&w.systems["slow"]))
    });
    let out = w
        .bed
        .exec(&["systemctl", "kill", "-s", "KILL", "ferry-agent.service"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(&w, 60, "the restarted service to finish the deploy", || {
        w.status_of(&r2).iter().any(|(s, _)| s == "success")
    });
    assert_eq!(w.running(), w.systems["slow"]);
    let switches = w
        .switch_log()
        .iter()
        .filter(|l| l.ends_with(&w.systems["slow"]))
        .count();
    assert_eq!(switches, 1, "exactly one switch for the release");
    assert_eq!(w.status_of(&r2).iter().filter(|(s, _)| s == "success").count(), 1);
    assert!(journal().contains("resuming a deploy interrupted by a restart"));

    // kill -9 of the service during a fetch: it restarts and fetches again.
    let git = w.git_http.as_ref().unwrap();
    git.hold_fetches.store(true, std::sync::atomic::Ordering::SeqCst);
    let r_fetch = w.release("b");
    wait_until(&w, 30, "the service to be mid-fetch", || {
        git.held.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    let out = w
        .bed
        .exec(&["systemctl", "kill", "-s", "KILL", "ferry-agent.service"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    git.hold_fetches.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until(&w, 60, "the deploy after the restart", || {
        w.running() == w.systems["b"]
    });
    wait_until(&w, 10, "its success status", || {
        w.status_of(&r_fetch).iter().any(|(s, _)| s == "success")
    });
    let b_switches = w
        .switch_log()
        .iter()
        .filter(|l| l.ends_with(&w.systems["b"]))
        .count();
    assert_eq!(
        b_switches, 2,
        "b was switched to once at first and once for this release"
    );

    // The git server goes down: retries with a clear line, no damage; back up: deployed.
    git.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let r3 = w.release("c");
    wait_until(&w, 30, "a retry line naming the remote", || {
        journal().contains("reconcile failed, retrying") && journal().contains(&git.url("deploy.git"))
    });
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.status_json()["in_progress"], serde_json::Value::Null);
    git.up.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_until(&w, 60, "the deploy once the server is back", || {
        w.running() == w.systems["c"]
    });
    wait_until(&w, 10, "its success status", || {
        w.status_of(&r3).iter().any(|(s, _)| s == "success")
    });

    // A deploy that changes the agent's own unit: the agent restarts into it.
    let starts = journal().matches("ferry-agent started").count();
    let r4 = w.release("selfupdate");
    wait_until(&w, 60, "the self-updating deploy", || {
        w.status_of(&r4).iter().any(|(s, _)| s == "success")
    });
    wait_until(&w, 30, "the agent to restart into its new unit", || {
        journal().matches("ferry-agent started").count() > starts
    });
    assert!(journal().contains("restarting into the one installed now"));
    let out = w.bed.exec(&["systemctl", "is-active", "ferry-agent.service"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "active");
}

// Secrets (sops-nix, agenix) through a deploy, on this file's `World`.
mod approvals;
mod secrets;

// Reboots in a maintenance window and deploy windows, on this file's `World`.
mod reboots;

// The agent deploying a newer agent, and a rollback to an older one: two
// real builds, on this file's `World`.
mod upgrades;

// Power loss: every durable write traced and held to the order a cut requires.
mod power;

// Prometheus metrics after deploys, rollbacks and refusals, on this file's `World`.
mod metrics;

// A forge that rate-limits the host's token, on this file's `World`.
mod rate_limits;

// A host clock years off, on this file's `World`.
mod clock;

// The deploy branch from a static mirror, on this file's `World`.
mod mirror;

// `systemctl stop` and `restart` of the agent in every phase, on this file's `World`.
mod stops;

// A full store while realising, on this file's `World`.
mod store;

// A binary cache stalling in the middle of a NAR, on this file's `World`.
mod stalls;

// The NixOS module's own unit, rendered as NixOS writes it and run, on this
// file's `World`.
mod module_unit;

// A name server that never answers, on this file's `World`.
mod dns;

/// Full deploys (pending → success) from a private cache (nginx) that
/// demands a bearer token, then from an S3 bucket (moto, authentication on), each
/// realised by the agent through its loopback relay inside the testbed.
#[test]
fn deploys_from_a_private_cache_and_from_s3() {
    let w = World::new(&[("b", Behaviour::Succeed), ("c", Behaviour::Succeed)]);
    let public = format!("substituters = [\"http://127.0.0.1:{}\"]\n", w.cache_port);

    let private = Nginx::serve(
        &w.cache_dir,
        &Access::Bearer {
            token: "cache-tok".into(),
            forbidden: None,
        },
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(w.bed.host_path("/etc/ferry/cache-token"), "cache-tok\n").unwrap();
    w.set_config(
        &public,
        &format!(
            "substituters = [\"{}\"]\nbearer_token_files = {{ \"127.0.0.1\" = \"/etc/ferry/cache-token\" }}\n",
            private.url()
        ),
    );
    let r1 = w.release("b");
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed"), "{out}");
    assert_eq!(w.running(), w.systems["b"]);
    let states: Vec<String> = w.status_of(&r1).into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["pending", "success"]);
    let seen = private.requests();
    assert!(seen
        .iter()
        .any(|r| r.target.starts_with("/nar/") && r.status == 200));
    assert!(seen
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer cache-tok")));

    let moto = Moto::start();
    moto.upload_cache("deploy-cache", "us-east-1", &w.cache_dir);
    std::fs::write(
        w.bed.host_path("/etc/ferry/aws-credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.key.access_key_id,
            moto.key.secret_access_key.as_str()
        ),
    )
    .unwrap();
    w.set_config(
        &public,
        &format!(
            "substituters = [\"s3://deploy-cache?endpoint={}\"]\ns3_credentials_file = \"/etc/ferry/aws-credentials\"\n",
            moto.endpoint()
        ),
    );
    let r2 = w.release("c");
    let (ok, out) = w.once();
    assert!(ok && out.contains("deployed"), "{out}");
    assert_eq!(w.running(), w.systems["c"]);
    let states: Vec<String> = w.status_of(&r2).into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["pending", "success"]);
}
