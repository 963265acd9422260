//! Prometheus metrics on a real host: `ferry-agent once` in the testbed
//! writes `ferry_agent.prom` into a textfile-collector directory after each
//! deploy, rollback and refusal; every file passes `promtool check metrics`,
//! and its values say what happened. Each `once` is a new process, so the
//! counters are read back from the state directory every time. Then
//! `ferry-agent run` serves the same metrics on a loopback port, scraped
//! from outside the testbed, and a non-loopback address is refused.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use super::{wait_until, World};
use crate::common::prometheus::{self, sample};
use ferry_test_support::nix::Behaviour;

const TEXTFILE_DIR: &str = "/var/lib/prometheus-node-exporter/textfile";

/// The textfile, checked by promtool and readable by others (node_exporter's user).
fn textfile(w: &World) -> String {
    let path = w.bed.host_path(&format!("{TEXTFILE_DIR}/ferry_agent.prom"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "{}", path.display());
    let text = std::fs::read_to_string(&path).unwrap();
    prometheus::check_metrics(&text).unwrap_or_else(|e| panic!("promtool check metrics: {e}\n{text}"));
    text
}

fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

fn deploys(text: &str, outcome: &str) -> f64 {
    value(text, &format!("ferry_deploys_total{{outcome=\"{outcome}\"}}"))
}

/// The outcome the last deploy is marked with (exactly one is 1).
fn last_outcome(text: &str) -> String {
    let marked: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ferry_last_deploy_outcome{outcome=\"")?
                .strip_suffix("\"} 1")
        })
        .collect();
    assert_eq!(marked.len(), 1, "{text}");
    marked[0].to_owned()
}

fn scrape(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn metrics_follow_deploys_rollbacks_and_refusals() {
    let w = World::new(&[
        ("b", Behaviour::Succeed),
        ("fails", Behaviour::Exit(4)),
        ("reboot", Behaviour::RebootRequired),
    ]);
    let port = ferry_test_support::free_port();
    w.set_config(
        "[report]\n",
        &format!("[metrics]\ntextfile_dir = \"{TEXTFILE_DIR}\"\nlisten = \"127.0.0.1:{port}\"\n[report]\n"),
    );
    let out = w.bed.exec(&["mkdir", "-p", TEXTFILE_DIR]);
    assert!(out.status.success());

    // 1. A deploy: release 1 runs, one success counted, nothing waits.
    let r1 = w.release_expiring("b", Some(chrono::Duration::days(30)));
    let (ok, out) = w.once();
    assert!(ok, "{out}");
    let text = textfile(&w);
    assert_eq!(last_outcome(&text), "success");
    assert_eq!(deploys(&text, "success"), 1.0);
    assert_eq!(value(&text, "ferry_release_serial"), 1.0);
    assert!(
        text.contains(&format!(
            "ferry_release_info{{serial=\"1\",commit=\"{r1}\",toplevel=\"{}\"}} 1\n",
            w.systems["b"]
        )),
        "{text}"
    );
    assert_eq!(value(&text, "ferry_reboot_required"), 0.0);
    assert_eq!(value(&text, "ferry_drift"), 0.0);
    assert_eq!(value(&text, "ferry_statuses_queued"), 0.0);
    assert_eq!(value(&text, "ferry_newest_release_serial"), 1.0);
    let left = value(&text, "ferry_newest_release_expiry_seconds");
    assert!(
        left <= 30.0 * 86400.0 && left > 29.0 * 86400.0,
        "30 days left, not {left}"
    );
    let polled = value(&text, "ferry_last_poll_success_timestamp_seconds");
    assert!(polled > 0.0);
    assert!(text.contains(&format!(
        "ferry_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));

    // 2. A switch that fails: rolled back, counted as failed; the host
    //    still runs release 1.
    w.release("fails");
    let (ok, out) = w.once();
    assert!(!ok && out.contains("rolled back"), "{out}");
    let text = textfile(&w);
    assert_eq!(last_outcome(&text), "failed");
    assert_eq!(value(&text, "ferry_last_deploy_serial"), 2.0);
    assert_eq!((deploys(&text, "success"), deploys(&text, "failed")), (1.0, 1.0));
    assert_eq!(value(&text, "ferry_release_serial"), 1.0);
    assert_eq!(
        value(&text, "ferry_newest_release_serial"),
        2.0,
        "verified, though rolled back"
    );
    // Release 2 never expires: only its serial.
    assert!(!text.contains("ferry_newest_release_expiry"), "{text}");

    // 3. A switch that wants a reboot: the booted system is still the old one.
    w.release("reboot");
    let (ok, out) = w.once();
    assert!(ok && out.contains("reboot required"), "{out}");
    let text = textfile(&w);
    assert_eq!(last_outcome(&text), "success-reboot-required");
    assert_eq!(deploys(&text, "success-reboot-required"), 1.0);
    assert_eq!(value(&text, "ferry_release_serial"), 3.0);
    assert_eq!(value(&text, "ferry_reboot_required"), 1.0);

    // 4. An unsigned commit: refused; nothing else moves.
    let unsigned = w.custom_release("format = 1\nserial = 4\n", None);
    let (ok, out) = w.once();
    assert!(!ok && out.contains("is not signed"), "{out}");
    let text = textfile(&w);
    assert_eq!(last_outcome(&text), "refused");
    assert_eq!(value(&text, "ferry_last_deploy_serial"), 0.0);
    assert_eq!(deploys(&text, "refused"), 1.0);
    assert_eq!(value(&text, "ferry_release_serial"), 3.0);
    assert_eq!(value(&text, "ferry_newest_release_serial"), 3.0);
    assert!(w.status_of(&unsigned).iter().any(|(s, _)| s == "failure"));

    // 5. Someone switches outside Ferry. The next poll
    //    finds nothing new: drift shows, and nothing is counted twice.
    let out = w
        .bed
        .exec(&["ln", "-sfn", &w.systems["b"], "/run/current-system"]);
    assert!(out.status.success());
    let (ok, out) = w.once();
    assert!(ok && out.contains("up to date"), "{out}");
    let again = textfile(&w);
    assert_eq!(value(&again, "ferry_drift"), 1.0);
    for outcome in ["success", "success-reboot-required", "refused", "failed", "error"] {
        assert_eq!(deploys(&again, outcome), deploys(&text, outcome), "{outcome}");
    }
    assert!(value(&again, "ferry_last_poll_success_timestamp_seconds") >= polled);
    assert_eq!(value(&again, "ferry_statuses_queued"), 0.0);

    // 6. The daemon serves the same on loopback; only /metrics.
    w.start_service();
    wait_until(&w, 30, "the metrics endpoint", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let page = scrape(port, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    let body = page.split_once("\r\n\r\n").unwrap().1;
    prometheus::check_metrics(body).unwrap_or_else(|e| panic!("promtool check metrics: {e}\n{body}"));
    assert_eq!(deploys(body, "failed"), 1.0);
    assert_eq!(value(body, "ferry_drift"), 1.0);
    let other = scrape(port, "/state.json");
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");

    // 7. A non-loopback address is refused with what to do instead.
    let bad = w
        .config
        .replace("[report]\n", "[metrics]\nlisten = \"0.0.0.0:9101\"\n[report]\n");
    std::fs::write(w.bed.host_path("/etc/ferry/bad.toml"), bad).unwrap();
    let out = w
        .bed
        .exec(&[super::AGENT, "--config", "/etc/ferry/bad.toml", "check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("`metrics.listen`: `0.0.0.0:9101` is not a loopback address")
            && err.contains("metrics.textfile_dir"),
        "{err}"
    );
}
