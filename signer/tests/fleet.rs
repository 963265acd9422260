//! The fleet commands against the loopback forge: `status` on every forge
//! with pagination, `wait` and its exit codes, and wave rollouts with a fleet
//! of simulated hosts that report through the forge as agents do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::forge::{Forge, Kind, TOKEN};
use crate::common::*;

const SOURCE: &str = "5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0";

fn toplevel(host: &str, generation: char) -> String {
    format!(
        "/nix/store/{}-nixos-system-{host}",
        generation.to_string().repeat(32)
    )
}

/// A deploy repository with a first release, a signing key and a token file.
struct Deploy {
    sb: Sandbox,
    repo: PathBuf,
    key: PathBuf,
    token: PathBuf,
}

impl Deploy {
    fn new(hosts: &[String], generation: char) -> Self {
        let sb = Sandbox::new();
        let repo = sb.repo("deploy.git", true);
        let key = sb.ssh_keygen("k", "ed25519");
        let token = sb.path("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let d = Self { sb, repo, key, token };
        let file = d.hosts_file("first.json", hosts, generation, &[]);
        assert_ok(&d.sb.release(
            d.repo.to_str().unwrap(),
            d.key.to_str().unwrap(),
            &["--hosts-file", file.to_str().unwrap()],
            &[],
        ));
        d
    }

    /// A hosts file: every host on `generation`, except the overrides.
    fn hosts_file(&self, name: &str, hosts: &[String], generation: char, except: &[(&str, char)]) -> PathBuf {
        let map: BTreeMap<&str, String> = hosts
            .iter()
            .map(|h| {
                let g = except
                    .iter()
                    .find(|(e, _)| e == h)
                    .map_or(generation, |(_, g)| *g);
                (h.as_str(), toplevel(h, g))
            })
            .collect();
        let path = self.sb.path(name);
        std::fs::write(&path, serde_json::to_string(&map).unwrap()).unwrap();
        path
    }

    fn tip(&self) -> String {
        self.sb.git(&self.repo, &["rev-parse", "deploy"])
    }

    fn release(&self) -> ferry_signer::Release {
        release_at(&self.repo)
    }

    /// Writes `plan` and runs `ferry-signer rollout` of `hosts_file` with it
    /// ([`rollout_args`]) against `forge`.
    fn rollout(&self, plan: &str, hosts_file: &Path, forge: &Forge) -> Output {
        let path = self.sb.path("rollout.toml");
        std::fs::write(&path, plan).unwrap();
        let (r, k, p, h) = (
            self.repo.to_str().unwrap(),
            self.key.to_str().unwrap(),
            path.to_str().unwrap(),
            hosts_file.to_str().unwrap(),
        );
        self.run(&rollout_args(r, k, p, h), forge)
    }

    /// `ferry-signer ARGS… <forge flags>`.
    fn run(&self, args: &[&str], forge: &Forge) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(forge.args(&self.token));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.sb.signer(&refs, &[])
    }
}

fn release_at(repo: &Path) -> ferry_signer::Release {
    let r = git2::Repository::open(repo).unwrap();
    let oid = ferry_signer::git::resolve_commit(&r, "deploy").unwrap();
    ferry_signer::git::read_release(&r, oid).unwrap()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

#[test]
fn status_reads_every_page_of_every_forge() {
    for kind in [Kind::Github, Kind::Gitea, Kind::Gitlab] {
        let hosts = names("h", 230);
        let d = Deploy::new(&hosts, 'a');
        let forge = Forge::start(kind);
        let sha = d.tip();
        for (i, h) in hosts.iter().enumerate() {
            let context = format!("ferry/{h}");
            if i % 10 == 2 {
                continue; // never reported
            }
            // An older status first: only the newest may count.
            forge.post(&sha, &context, "pending", "deploying");
            match i % 10 {
                0 => forge.post(&sha, &context, "failure", &format!("{h}: health check failed")),
                1 => {}
                _ => forge.post(&sha, &context, "success", &format!("{h} runs release 1")),
            }
        }
        forge.post(&sha, "ci/build", "failure", "another system's context");
        let out = d.run(&["status", "--repo", d.repo.to_str().unwrap(), "--json"], &forge);
        let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
        assert_eq!(
            json["summary"],
            serde_json::json!({"hosts": 230, "success": 161, "pending": 23, "failure": 23, "not_reported": 23}),
            "{kind:?}"
        );
        assert_eq!(json["commit"], sha);
        let h010 = json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == "h010")
            .unwrap();
        assert_eq!(h010["state"], "failure");
        assert_eq!(h010["description"], "h010: health check failed");
        assert_eq!(h010["toplevel"], toplevel("h010", 'a'));
        assert!(h010["age_seconds"].as_i64().unwrap() < 600);
        let h012 = json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == "h012")
            .unwrap();
        assert_eq!(h012["state"], "not_reported");
        assert_eq!(h012["description"], serde_json::Value::Null);

        // Every page read, each at the forge's own path and page size.
        let reads = forge.requests();
        let (path, size_key, size, pages) = match kind {
            // 231 contexts, newest each: 100 a page.
            Kind::Github => (
                format!("/repos/ops/deploy/commits/{sha}/status"),
                "per_page",
                "100",
                3,
            ),
            // 231 contexts: 50 a page (Gitea's cap).
            Kind::Gitea => (
                format!("/api/v1/repos/ops/deploy/commits/{sha}/status"),
                "limit",
                "50",
                5,
            ),
            // Every status: 207 pending, 184 final, 1 other = 392, 100 a page.
            Kind::Gitlab => (
                format!("/api/v4/projects/ops%2Fdeploy/repository/commits/{sha}/statuses"),
                "per_page",
                "100",
                4,
            ),
        };
        assert_eq!(reads.len(), pages, "{kind:?}: {reads:?}");
        assert_eq!(json["requests"], pages);
        for (i, r) in reads.iter().enumerate() {
            assert_eq!(r.method, "GET");
            assert_eq!(r.path, path);
            assert_eq!(r.query[size_key], size);
            assert_eq!(r.query["page"], (i + 1).to_string());
            if kind == Kind::Gitlab {
                assert_eq!(r.query["all"], "true");
            }
        }
    }
}

#[test]
fn status_as_a_table_with_a_custom_context_and_host_patterns() {
    let hosts: Vec<String> = ["web1", "web2", "db1"].map(String::from).to_vec();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Gitea);
    let sha = d.tip();
    forge.post(&sha, "deploy/web1", "success", "web1 runs release 1");
    forge.post(&sha, "deploy/web2", "error", "cannot fetch the closure");
    // The default context is not what these hosts post.
    forge.post(&sha, "ferry/db1", "success", "wrong context");
    let r = d.repo.to_str().unwrap();
    let out = d.run(&["status", "--repo", r, "--context", "deploy/{host}"], &forge);
    let text = assert_ok(&out);
    assert!(
        text.contains("3 hosts: 1 success, 0 pending, 1 failure, 1 not reported"),
        "{text}"
    );
    let web2 = text.lines().find(|l| l.starts_with("web2")).unwrap();
    assert!(
        web2.contains("failure") && web2.contains("cannot fetch the closure"),
        "{text}"
    );
    let out = d.run(
        &[
            "status",
            "--repo",
            r,
            "--context",
            "deploy/{host}",
            "--host",
            "web*",
        ],
        &forge,
    );
    assert!(assert_ok(&out).contains("2 hosts: 1 success, 0 pending, 1 failure, 0 not reported"));
    // A pattern that matches nothing is a mistake, not an empty fleet.
    assert_refused(
        &d.run(&["status", "--repo", r, "--host", "wbe*"], &forge),
        "matches no host",
    );

    // The same settings from an agent's agent.toml, every key of its
    // `[report]` section set (the signer reads it with the agent's definition).
    let agent_toml = d.sb.path("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "host = \"web1\"\n[source]\nurl = \"https://x/d.git\"\n[report]\nforge = \"forgejo\"\napi_url = \"{}\"\nrepository = \"ops/deploy\"\ntoken_file = \"{}\"\ncontext = \"deploy/{{host}}\"\nerror_after = \"10m\"\n",
            forge.api_url(),
            d.token.display()
        ),
    )
    .unwrap();
    let out = d.sb.signer(
        &[
            "status",
            "--repo",
            r,
            "--agent-config",
            agent_toml.to_str().unwrap(),
        ],
        &[],
    );
    assert!(assert_ok(&out).contains("3 hosts: 1 success, 0 pending, 1 failure, 1 not reported"));
}

/// Every key path of a JSON value (`hosts[].state`), arrays' elements merged.
fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// `status --json` is an interface: docs/ci.md's example has exactly the
/// keys the output has, and the states it lists are the ones that occur.
#[test]
fn status_json_is_the_documented_interface() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ci.md")).unwrap();
    let section = doc
        .split("### `status --json`")
        .nth(1)
        .expect("docs/ci.md documents `status --json`");
    let example = section
        .split("```json\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a JSON example");
    let documented: serde_json::Value = serde_json::from_str(example).expect("the example is JSON");

    let hosts: Vec<String> = ["web1", "web2", "web3", "db1"].map(String::from).to_vec();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Github);
    let sha = d.tip();
    forge.post(&sha, "ferry/web1", "success", "web1 runs release 1");
    forge.post(&sha, "ferry/web2", "pending", "deploying release 1 to web2");
    forge.post(
        &sha,
        "ferry/web3",
        "error",
        "error: the binary cache is unreachable",
    );
    let out = d.run(&["status", "--repo", d.repo.to_str().unwrap(), "--json"], &forge);
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();

    let (mut want, mut got) = (Default::default(), Default::default());
    key_paths(&documented, "", &mut want);
    key_paths(&json, "", &mut got);
    assert_eq!(
        got, want,
        "docs/ci.md's `status --json` example and the output differ in keys"
    );
    let states: Vec<(&str, &str)> = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), h["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("db1", "not_reported"),
            ("web1", "success"),
            ("web2", "pending"),
            ("web3", "failure")
        ],
        "sorted by name; an error counts as a failure"
    );
    for state in ["success", "pending", "failure", "not_reported"] {
        assert!(
            section.contains(&format!("`{state}`")),
            "docs/ci.md names the state {state}"
        );
    }
    assert!(
        json["hosts"][0]["description"].is_null(),
        "not reported: no description"
    );
}

/// A forge over its rate limit, worded as each forge words it: `wait` says
/// so (never blaming the token), leaves the forge alone for as long as it
/// asks, then goes on waiting; past its timeout it times out (exit 4), not
/// "unreachable".
#[test]
fn wait_waits_out_a_rate_limit_the_way_each_forge_words_it() {
    for kind in [Kind::Github, Kind::Gitlab, Kind::Gitea] {
        let d = Deploy::new(&["web1".to_owned()], 'a');
        let r = d.repo.to_str().unwrap();
        let forge = Forge::start(kind);
        forge.post(&d.tip(), "ferry/web1", "success", "web1 runs release 1");
        forge.limit(2, 2);
        let out = d.run(
            &["wait", "--repo", r, "--interval", "100ms", "--timeout", "60s"],
            &forge,
        );
        let text = assert_ok(&out);
        assert!(
            text.contains("limits the rate of requests until"),
            "{kind:?}: {text}"
        );
        assert!(!text.to_lowercase().contains("token"), "{kind:?}: {text}");
        let requests = forge.requests();
        assert_eq!(requests.len(), 3, "{kind:?}: two limited, then one through");
        for pair in requests.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= Duration::from_secs(2), "{kind:?}: came back after {gap:?}");
        }

        // Limited for longer than the wait may last.
        forge.limit(1000, 3600);
        let out = d.run(
            &["wait", "--repo", r, "--interval", "100ms", "--timeout", "2s"],
            &forge,
        );
        assert_eq!(code(&out), 4, "{kind:?}: {}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains("timed out: the forge limits the rate of requests"),
            "{kind:?}: {text}"
        );
        assert!(
            !text.contains("unreachable") && !text.contains("token"),
            "{kind:?}: {text}"
        );
    }
}

/// A token with little left of its primary limit: `wait` reads the fleet's
/// pages only as often as half of what is left allows until the reset, so
/// the forge never has to refuse it, and says so once.
#[test]
fn wait_paces_its_reads_to_fit_the_tokens_budget() {
    let hosts = names("h", 230);
    for kind in [Kind::Github, Kind::Gitlab, Kind::Gitea] {
        let d = Deploy::new(&hosts, 'a');
        let r = d.repo.to_str().unwrap();
        let forge = Forge::start(kind);
        for h in &hosts {
            forge.post(&d.tip(), &format!("ferry/{h}"), "pending", "deploying release 1");
        }
        // Unpaced, 100 ms apart for 3 s, the reads would spend 40 requests
        // in under half a second.
        forge.budget(40, 3600);
        let out = d.run(
            &["wait", "--repo", r, "--interval", "100ms", "--timeout", "3s"],
            &forge,
        );
        let text = stdout(&out);
        assert_eq!(
            code(&out),
            4,
            "{kind:?}: timed out waiting
{text}"
        );
        assert_eq!(
            forge.over_budget(),
            0,
            "{kind:?}: never refused
{text}"
        );
        let pages = match kind {
            Kind::Gitea => 5,
            Kind::Github | Kind::Gitlab => 3,
        };
        assert_eq!(
            forge.requests().len(),
            2 * pages,
            "{kind:?}: one read at the start, one at the timeout\n{text}"
        );
        assert!(
            text.contains(&format!(
                "instead: a read costs {pages} request(s), and the forge allows this token"
            )),
            "{kind:?}: {text}"
        );
        assert!(!text.contains("unreachable"), "{kind:?}: {text}");
    }
}

/// `wait` asks GitHub again with `If-None-Match`: unchanged pages come back
/// 304 (not counted against the rate limit) and are taken from the last
/// answer, changed ones are read anew, so the counts stay right across
/// pages.
#[test]
fn wait_reads_unchanged_pages_as_not_modified() {
    let hosts = names("h", 230);
    let d = Deploy::new(&hosts, 'a');
    let r = d.repo.to_str().unwrap();
    let forge = Forge::start(Kind::Github);
    let sha = d.tip();
    for h in &hosts[..229] {
        forge.post(&sha, &format!("ferry/{h}"), "success", "runs release 1");
    }
    let reporter = {
        let (forge, sha, last) = (forge.clone(), sha.clone(), hosts[229].clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            forge.post(&sha, &format!("ferry/{last}"), "success", "runs release 1");
        })
    };
    let out = d.run(
        &["wait", "--repo", r, "--interval", "100ms", "--timeout", "30s"],
        &forge,
    );
    reporter.join().unwrap();
    let text = assert_ok(&out);
    assert!(text.contains("230 hosts: 230 success"), "{text}");
    let reads = forge.requests().iter().filter(|q| q.method == "GET").count();
    assert!(reads >= 9, "three pages a poll, several polls: {reads}");
    assert!(
        forge.not_modified() >= reads / 2,
        "{} of {reads} reads not modified",
        forge.not_modified()
    );
}

#[test]
fn wait_exit_codes() {
    let hosts: Vec<String> = ["web1", "web2", "db1"].map(String::from).to_vec();
    let d = Deploy::new(&hosts, 'a');
    let r = d.repo.to_str().unwrap();
    let sha = d.tip();
    let fast = ["--interval", "100ms", "--timeout", "20s"];
    let wait = |forge: &Forge, extra: &[&str]| {
        let mut args = vec!["wait", "--repo", r];
        args.extend(extra);
        d.run(&args, forge)
    };

    // Hosts report while we wait: success, with a progress line per change.
    let forge = Forge::start(Kind::Github);
    let reporter = {
        let (forge, sha) = (forge.clone(), sha.clone());
        std::thread::spawn(move || {
            for h in ["web1", "web2", "db1"] {
                std::thread::sleep(Duration::from_millis(300));
                forge.post(&sha, &format!("ferry/{h}"), "success", "runs release 1");
            }
        })
    };
    let out = wait(&forge, &fast);
    reporter.join().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("done: 3 hosts: 3 success"), "{text}");
    assert!(
        text.lines().filter(|l| l.contains(" not reported")).count() >= 2,
        "a line per change:\n{text}"
    );

    // One failure: too many with the default budget, fine with one allowed.
    forge.post(&sha, "ferry/db1", "failure", "switch failed: 2 units failed");
    let out = wait(&forge, &fast);
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("db1 failed: switch failed"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("more than the 0 allowed: db1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        code(&wait(&forge, &[&fast[..], &["--max-failures", "1"]].concat())),
        0
    );
    // Only the selected hosts count.
    assert_eq!(code(&wait(&forge, &[&fast[..], &["--host", "web*"]].concat())), 0);

    // Nobody reports: the timeout, naming who is missing.
    let silent = Forge::start(Kind::Gitlab);
    let out = wait(&silent, &["--interval", "100ms", "--timeout", "500ms"]);
    assert_eq!(code(&out), 4);
    assert!(
        stdout(&out).contains("still waiting for db1 web1 web2"),
        "{}",
        stdout(&out)
    );

    // The forge refuses the token: exit 1 at once, saying so.
    silent.force(Some(401));
    let out = wait(&silent, &fast);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("refused the token (HTTP 401)"),
        "{}",
        stderr(&out)
    );

    // The forge fails or is gone for the whole wait: exit 5.
    silent.force(Some(503));
    let out = wait(&silent, &["--interval", "100ms", "--timeout", "500ms"]);
    assert_eq!(code(&out), 5, "{}", stdout(&out));
    assert!(stdout(&out).contains("HTTP 503"), "{}", stdout(&out));
    let closed = ferry_test_support::free_port();
    let mut args = vec![
        "wait".to_string(),
        "--repo".into(),
        r.into(),
        "--interval".into(),
        "100ms".into(),
    ];
    args.extend(["--timeout", "400ms", "--forge", "github", "--repository", "o/r"].map(String::from));
    args.extend(["--api-url".into(), format!("http://127.0.0.1:{closed}")]);
    args.extend(["--token-file".into(), d.token.display().to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.sb.signer(&refs, &[]);
    assert_eq!(code(&out), 5);
    assert!(
        stdout(&out).contains("cannot reach the forge"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn forge_settings_are_refused_with_what_to_do() {
    let hosts = vec!["web1".to_string()];
    let d = Deploy::new(&hosts, 'a');
    let r = d.repo.to_str().unwrap();
    let t = d.token.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "which forge"),
        (vec!["--forge", "bitbucket"], "not a forge"),
        (
            vec!["--forge", "gitea", "--repository", "o/r", "--token-file", t],
            "required for gitea",
        ),
        (
            vec!["--forge", "github", "--token-file", t],
            "repository is required",
        ),
        (vec!["--forge", "github", "--repository", "o/r"], "no forge token"),
        (
            vec![
                "--forge",
                "gitea",
                "--api-url",
                "http://git.example.com/api/v1",
                "--repository",
                "o/r",
                "--token-file",
                t,
            ],
            "cross the network in clear",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["status", "--repo", r];
        args.extend(extra);
        let out = d.sb.signer(&args, &[]);
        assert_eq!(code(&out), 1);
        assert_refused(&out, needle);
        assert!(!stderr(&out).contains(TOKEN), "the token is never printed");
    }
    // The token from the environment.
    let forge = Forge::start(Kind::Github);
    let out = d.sb.signer(
        &[
            "status",
            "--repo",
            r,
            "--forge",
            "github",
            "--api-url",
            &forge.api_url(),
            "--repository",
            "o/r",
        ],
        &[("FERRY_FORGE_TOKEN", TOKEN)],
    );
    assert!(assert_ok(&out).contains("1 host: 0 success"));
}

/// Hosts as agents behave towards the forge: on every new release each host
/// reports on the release commit; a host given `bad` fails its health check.
struct SimulatedFleet {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimulatedFleet {
    fn start(forge: &Forge, repo: &Path, bad: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (forge, repo, flag) = (forge.clone(), repo.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = String::new();
            while !flag.load(Ordering::SeqCst) {
                let r = git2::Repository::open(&repo).unwrap();
                let tip = r.refname_to_id("refs/heads/deploy").unwrap().to_string();
                if tip != seen {
                    let release = release_at(&repo);
                    for (host, entry) in &release.hosts {
                        let context = format!("ferry/{host}");
                        if bad.contains(&entry.toplevel.to_string()) {
                            forge.post(&tip, &context, "failure", "health check failed");
                        } else {
                            forge.post(
                                &tip,
                                &context,
                                "success",
                                &format!("{host} runs release {}", release.serial),
                            );
                        }
                    }
                    seen = tip;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SimulatedFleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const PLAN: &str = r#"
[[wave]]
name = "canary"
hosts = ["canary1"]
timeout = "30s"
soak = "1s"

[[wave]]
name = "web"
hosts = ["web*"]
timeout = "30s"

[[wave]]
name = "rest"
rest = true
timeout = "30s"
"#;

fn fleet_hosts() -> Vec<String> {
    ["canary1", "web1", "web2", "db1", "db2"]
        .map(String::from)
        .to_vec()
}

fn rollout_args<'a>(repo: &'a str, key: &'a str, plan: &'a str, hosts: &'a str) -> Vec<&'a str> {
    vec![
        "rollout",
        "--repo",
        repo,
        "--key",
        key,
        "--plan",
        plan,
        "--hosts-file",
        hosts,
        "--source",
        SOURCE,
        "--interval",
        "100ms",
    ]
}

fn generation_of(release: &ferry_signer::Release, host: &str) -> char {
    let t = release.hosts[&host.parse().unwrap()].toplevel.to_string();
    t.chars().nth("/nix/store/".len()).unwrap()
}

fn rollout_status(forge: &Forge) -> (String, String) {
    let s = forge
        .statuses()
        .into_iter()
        .rev()
        .find(|s| s.context == "ferry/rollout" && s.sha == SOURCE)
        .expect("a ferry/rollout status");
    (s.state, s.description)
}

#[test]
fn a_failing_canary_stops_the_rollout_and_a_healthy_one_goes_everywhere() {
    let hosts = fleet_hosts();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Github);
    let plan = d.sb.path("rollout.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let (r, k, p) = (
        d.repo.to_str().unwrap(),
        d.key.to_str().unwrap(),
        plan.to_str().unwrap(),
    );
    let _fleet = SimulatedFleet::start(&forge, &d.repo, vec![toplevel("canary1", 'b')]);

    // Generation b breaks the canary: the rollout stops after wave 1.
    let bad = d.hosts_file("b.json", &hosts, 'b', &[]);
    let out = d.run(&rollout_args(r, k, p, bad.to_str().unwrap()), &forge);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("wave 1 (canary) failed on canary1"),
        "{}",
        stdout(&out)
    );
    let release = d.release();
    assert_eq!(release.serial, 2, "only the canary's wave was released");
    assert_eq!(generation_of(&release, "canary1"), 'b');
    for h in ["web1", "web2", "db1", "db2"] {
        assert_eq!(generation_of(&release, h), 'a', "{h} never saw the new system");
    }
    let (state, description) = rollout_status(&forge);
    assert_eq!(state, "failure");
    assert!(
        description.starts_with("wave 1 of 3 (canary) failed"),
        "{description}"
    );
    // Re-running does not pass the failed wave.
    let again = d.run(&rollout_args(r, k, p, bad.to_str().unwrap()), &forge);
    assert_eq!(code(&again), 3);
    assert_eq!(d.release().serial, 2);

    // Generation c is healthy: every wave goes out, once each.
    let good = d.hosts_file("c.json", &hosts, 'c', &[]);
    let out = d.run(&rollout_args(r, k, p, good.to_str().unwrap()), &forge);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let release = d.release();
    assert_eq!(release.serial, 5, "three waves, three releases");
    assert!(hosts.iter().all(|h| generation_of(&release, h) == 'c'));
    let log = d.sb.git(&d.repo, &["log", "--format=%s", "deploy"]);
    let waves: Vec<&str> = log.lines().take(3).collect();
    assert_eq!(
        waves,
        [
            "rollout wave 3 of 3 (rest): 2 host(s)",
            "rollout wave 2 of 3 (web): 2 host(s)",
            "rollout wave 1 of 3 (canary): 1 host(s)",
        ]
    );
    assert_eq!(
        rollout_status(&forge),
        ("success".into(), "all 3 waves: 5 of 5 hosts".into())
    );
    // The release now shows every host on it, and waiting for it returns at once.
    let out = d.run(&["status", "--repo", r, "--json"], &forge);
    let json: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(json["summary"]["success"], 5);
    assert_eq!(
        code(&d.run(&["wait", "--repo", r, "--timeout", "10s"], &forge)),
        0
    );
    // Re-running a finished rollout releases nothing.
    assert_eq!(
        code(&d.run(&rollout_args(r, k, p, good.to_str().unwrap()), &forge)),
        0
    );
    assert_eq!(d.release().serial, 5);
}

/// A rollout reads as often as the token's budget allows, not as often as
/// asked: the forge never refuses it, and every wave still goes out.
#[test]
fn a_rollout_paces_its_reads_to_fit_the_tokens_budget() {
    let hosts = fleet_hosts();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Github);
    let _fleet = SimulatedFleet::start(&forge, &d.repo, vec![]);
    // 120 requests until the reset a minute from now: a read (one page)
    // every second or two, not ten a second.
    forge.budget(120, 60);
    let good = d.hosts_file("b.json", &hosts, 'b', &[]);
    let out = d.rollout(PLAN, &good, &forge);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}\n{}", stderr(&out));
    assert_eq!(d.release().serial, 4, "three waves released: {text}");
    assert_eq!(forge.over_budget(), 0, "never refused: {text}");
    assert!(
        text.contains("instead: a read costs 1 request(s), and the forge allows this token"),
        "{text}"
    );
}

/// A forge that rate-limits every read for longer than any wave may take:
/// the rollout stops as timed out (exit 4), not as unreachable, and not
/// only at the CI job's own timeout.
#[test]
fn a_rollout_limited_for_longer_than_its_waves_times_out() {
    let hosts = fleet_hosts();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Github);
    forge.limit(usize::MAX, 1);
    let good = d.hosts_file("b.json", &hosts, 'b', &[]);
    let out = d.rollout(&PLAN.replace("\"30s\"", "\"2s\""), &good, &forge);
    let text = stdout(&out);
    assert_eq!(code(&out), 4, "{text}\n{}", stderr(&out));
    assert!(
        text.contains("timed out: the forge kept limiting the rate of requests"),
        "{text}"
    );
    assert!(!text.contains("unreachable") && !text.contains("token"), "{text}");
}

#[test]
fn a_rollout_resumes_from_the_branch_and_the_forge_alone() {
    let hosts = fleet_hosts();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Gitlab);
    let plan = d.sb.path("rollout.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let _fleet = SimulatedFleet::start(&forge, &d.repo, vec![]);
    let target = d.hosts_file("d.json", &hosts, 'd', &[]);
    let (k, p, t) = (
        d.key.to_str().unwrap(),
        plan.to_str().unwrap(),
        target.to_str().unwrap(),
    );
    // Each run works in a fresh clone, as a CI job does, and pushes to the remote.
    let clone = |name: &str| {
        let dir = d.sb.path(name);
        d.sb.git(
            d.sb.dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                d.repo.to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        dir
    };
    let with_push = |dir: &Path, once: bool| {
        let mut args: Vec<String> = rollout_args(dir.to_str().unwrap(), k, p, t)
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(["--push".into(), d.repo.display().to_string()]);
        if once {
            args.push("--once".into());
        }
        args.extend(forge.args(&d.token));
        args
    };

    // A scheduled job: at most one wave per run.
    let c1 = clone("ci1");
    let args = with_push(&c1, true);
    let out =
        d.sb.signer(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(d.release().serial, 2);
    assert_eq!(generation_of(&d.release(), "canary1"), 'd');
    assert_eq!(generation_of(&d.release(), "web1"), 'a');
    // The forge shows the wave just released, not "releasing".
    let (state, description) = rollout_status(&forge);
    assert_eq!(state, "running", "GitLab's name for pending");
    assert!(
        description.starts_with("wave 1 of 3 (canary): ") && !description.contains("releasing"),
        "{description}"
    );

    // A full run, killed as soon as it released the second wave.
    let c2 = clone("ci2");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-signer"));
    cmd.args(with_push(&c2, false))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", d.sb.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while release_at(&d.repo).serial < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "wave 2 was never released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(generation_of(&d.release(), "web1"), 'd');

    // Re-run from a fresh clone: it continues with wave 3 and releases no wave twice.
    let c3 = clone("ci3");
    let args = with_push(&c3, false);
    let out =
        d.sb.signer(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let release = d.release();
    assert_eq!(release.serial, 4, "one release per wave, none twice");
    assert!(hosts.iter().all(|h| generation_of(&release, h) == 'd'));
    let log = d.sb.git(&d.repo, &["log", "--format=%s", "deploy"]);
    for wave in ["1 of 3 (canary)", "2 of 3 (web)", "3 of 3 (rest)"] {
        assert_eq!(log.matches(wave).count(), 1, "wave {wave} released once:\n{log}");
    }
}

#[test]
fn plans_that_do_not_fit_the_hosts_are_refused_before_anything_is_released() {
    let hosts = fleet_hosts();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Gitea);
    let target = d.hosts_file("b.json", &hosts, 'b', &[]);
    let cases = [
        ("[[wave]]\nname = \"c\"\nhosts = [\"canary9\"]\n[[wave]]\nname = \"r\"\nrest = true\n", "names host `canary9`, which is not in the hosts"),
        ("[[wave]]\nname = \"c\"\nhosts = [\"canary1\", \"web1\"]\n[[wave]]\nname = \"w\"\nhosts = [\"web*\"]\n[[wave]]\nname = \"r\"\nrest = true\n", "host web1 is in wave `c` and in wave `w`"),
        ("[[wave]]\nname = \"c\"\nhosts = [\"canary1\"]\n[[wave]]\nname = \"w\"\nhosts = [\"web*\"]\n", "2 host(s) are in no wave (db1, db2): they would keep the system they run now"),
        ("[[wave]]\nname = \"c\"\nhosts = [\"canary1\"]\nsoak = \"a while\"\n", "`soak`"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let plan = d.sb.path(&format!("plan{i}.toml"));
        std::fs::write(&plan, text).unwrap();
        let args = rollout_args(
            d.repo.to_str().unwrap(),
            d.key.to_str().unwrap(),
            plan.to_str().unwrap(),
            target.to_str().unwrap(),
        );
        let out = d.run(&args, &forge);
        assert_eq!(code(&out), 1);
        assert_refused(&out, needle);
    }
    assert_eq!(d.release().serial, 1, "nothing was released");
    assert!(forge.requests().is_empty(), "the forge was not even asked");
}

/// Hosts report on the release; with approvals on top of it, `status` looks
/// through them and shows hosts that wait for approval as pending.
#[test]
fn status_looks_through_approvals_and_shows_hosts_awaiting_them() {
    let hosts: Vec<String> = ["web1", "db1"].map(String::from).to_vec();
    let d = Deploy::new(&hosts, 'a');
    let forge = Forge::start(Kind::Gitea);
    let release = d.tip();
    forge.post(&release, "ferry/web1", "success", "web1 runs release 1");
    forge.post(
        &release,
        "ferry/db1",
        "pending",
        "release 1 awaits approval (1 of 2: alice)",
    );
    let repo = git2::Repository::open(&d.repo).unwrap();
    let alice = ferry_signer::keys::SigningKey::generate("alice").unwrap();
    let tip = ferry_signer::git::branch_tip(&repo, "deploy").unwrap().unwrap();
    let approval = ferry_signer::publish::approve(&repo, "deploy", tip, &alice, "approve").unwrap();
    assert_eq!(d.tip(), approval.to_string());
    let out = d.run(&["status", "--repo", d.repo.to_str().unwrap()], &forge);
    let text = assert_ok(&out);
    assert!(text.contains(&format!("release 1 ({release})")), "{text}");
    let db1 = text.lines().find(|l| l.starts_with("db1")).unwrap();
    assert!(
        db1.contains("pending") && db1.contains("release 1 awaits approval (1 of 2: alice)"),
        "{text}"
    );
    assert!(
        text.contains("2 hosts: 1 success, 1 pending, 0 failure, 0 not reported"),
        "{text}"
    );
}
