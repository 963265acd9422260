//! A name server that never answers, in the testbed: the host's resolver is
//! pointed at a loopback UDP socket that reads every query and answers none
//! (glibc then waits 30 s per attempt, five attempts), and the deploy
//! repository, the binary cache and the forge are named by hostnames only it
//! could resolve. The system resolver cannot be interrupted, so each name
//! lookup must end inside its operation's own deadline: the poll fails as
//! unreachable and is retried, a cache fault names the cache and nothing
//! switches, statuses wait in the outbox (the forge is `localhost`, taken
//! out of `/etc/hosts`). Once the names resolve (here:
//! through `/etc/hosts`), the release deploys and every status arrives.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A name server on `127.53.0.1:53` that reads queries and never answers.
struct SilentNameServer {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentNameServer {
    const ADDRESS: &'static str = "127.53.0.1";

    fn start() -> Self {
        let socket =
            UdpSocket::bind((Self::ADDRESS, 53)).expect("bind 127.53.0.1:53 (the tests run as root)");
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, queries) = (stop.clone(), queries.clone());
            move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv_from(&mut buf).is_ok() {
                        queries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Self {
            stop,
            queries,
            thread: Some(thread),
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for SilentNameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `url` with its `127.0.0.1` replaced by `name`.
fn named(url: &str, name: &str) -> String {
    assert!(url.contains("127.0.0.1"), "{url}");
    url.replacen("127.0.0.1", name, 1)
}

#[test]
fn a_name_server_that_never_answers_is_cut_off_by_each_deadline_and_retried() {
    let w = World::new(&[("b", Behaviour::Succeed)]);
    let dns = SilentNameServer::start();
    std::fs::write(
        w.bed.host_path("/etc/resolv.conf"),
        format!(
            "nameserver {}\noptions timeout:30 attempts:5\n",
            SilentNameServer::ADDRESS
        ),
    )
    .unwrap();
    // The forge is `localhost` (a token may travel over plain HTTP only to
    // this machine), which the resolver asks the name server for once
    // `/etc/hosts` no longer lists it.
    let hosts: String = std::fs::read_to_string(w.bed.host_path("/etc/hosts"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.split_whitespace().skip(1).any(|n| n == "localhost"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(w.bed.host_path("/etc/hosts"), &hosts).unwrap();
    let (git, cache, forge) = ("git.ferry.test", "cache.ferry.test", "localhost");
    let git_url = w.source_url_line();
    let cache_url = w.cache_server.as_ref().unwrap().url();
    let named_cache = named(&cache_url, cache);
    std::fs::write(
        w.bed.host_path("/etc/ferry/agent.toml"),
        w.config
            .replace(&git_url, &named(&git_url, git))
            .replace(&cache_url, &named_cache)
            .replace(&w.forge.url(), &named(&w.forge.url(), forge))
            .replace("forge = \"gitea\"", "forge = \"gitea\"\nerror_after = \"0s\""),
    )
    .unwrap();
    let rb = w.release("b");
    w.start_service();

    // The deploy repository's name does not resolve: each poll fails as
    // unreachable inside the tip check's deadline (60 s, name resolution
    // included), not after glibc's 150 s, and the next poll tries again.
    let journal = || w.journal("_SYSTEMD_UNIT=ferry-agent.service");
    let cut_off = format!("within 60s (a total deadline per operation) (resolving {git})");
    wait_until(&w, 120, "a poll to fail on the unresolvable repository", || {
        journal().contains(&cut_off)
    });
    assert!(dns.queries() > 0, "the resolver asked the silent name server");
    assert!(w.switch_log().is_empty());

    // The repository resolves; the cache and the forge still do not. The
    // cache fault names the cache; its statuses wait in the outbox.
    std::fs::write(
        w.bed.host_path("/etc/hosts"),
        format!("{hosts}\n127.0.0.1 {git}\n"),
    )
    .unwrap();
    wait_until(&w, 150, "the cache fault to be said", || {
        let json = w.status_json();
        json["statuses_queued"].as_u64().unwrap_or(0) >= 2
            && journal().contains(&format!("binary cache unreachable: {named_cache}"))
    });
    assert!(w.forge.statuses().is_empty(), "the forge's name does not resolve");
    assert!(w.switch_log().is_empty(), "nothing switches without the closure");
    let json = w.status_json();
    assert!(json["fault_since"].is_string(), "the fault persists: {json}");
    assert_eq!(json["running"], w.systems["current"].as_str(), "{json}");

    // Every name resolves: the release deploys, once, and every status
    // arrives in order: the cache fault was said at once (error_after 0s).
    std::fs::write(
        w.bed.host_path("/etc/hosts"),
        format!("{hosts}\n127.0.0.1 {git} {cache} {forge}\n"),
    )
    .unwrap();
    wait_until(&w, 150, "b to be deployed once the names resolve", || {
        w.status_of(&rb).iter().any(|(s, _)| s == "success")
    });
    let said: Vec<String> = w.status_of(&rb).into_iter().map(|(s, _)| s).collect();
    assert_eq!(said.first().map(String::as_str), Some("pending"), "{said:?}");
    assert_eq!(said.last().map(String::as_str), Some("success"), "{said:?}");
    assert!(
        said.contains(&"error".to_owned()),
        "the cache fault was said: {said:?}"
    );
    assert_eq!(w.running(), w.systems["b"]);
    assert_eq!(w.switch_log().len(), 1);
}
