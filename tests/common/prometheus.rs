//! Prometheus's own checker, `promtool`, unpacked from Debian's `prometheus`
//! package by `scripts/install-deps` into a directory of the project's
//! (`/var/lib/ferry-test/prometheus`, `FERRY_TEST_PROMETHEUS` to move it):
//! nothing of Prometheus is installed or started.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The promtool executable; fails the test, naming the fix, when missing.
pub fn promtool() -> PathBuf {
    let dir: PathBuf = std::env::var_os("FERRY_TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/ferry-test/prometheus".into());
    let exe = dir.join("usr/bin/promtool");
    assert!(
        exe.is_file(),
        "{} is missing: run scripts/install-deps (it unpacks promtool from Debian's prometheus package)",
        exe.display()
    );
    exe
}

/// `promtool ARGS…` with `stdin` as its standard input.
pub fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `promtool check metrics` on `text`: `Err` with promtool's complaints.
pub fn check_metrics(text: &str) -> Result<(), String> {
    let out = run(&["check", "metrics"], text);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// The value of the sample `name` (with its labels, as written, e.g.
/// `ferry_deploys_total{outcome="failed"}`) in an exposition text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}
