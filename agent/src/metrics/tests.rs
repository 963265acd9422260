use super::*;
use crate::state::Outcome;

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn system(c: char) -> StorePath {
    format!("/nix/store/{}-nixos-system-web1", c.to_string().repeat(32))
        .parse()
        .unwrap()
}

fn outcome(commit: &str, serial: u64, result: OutcomeKind, when: &str) -> Outcome {
    Outcome {
        commit: commit.parse().unwrap(),
        serial,
        toplevel: Some(system('b')),
        result,
        description: String::new(),
        at: at(when),
    }
}

fn full() -> Snapshot {
    let mut deploys = Counts::default();
    deploys.add(OutcomeKind::Success);
    deploys.add(OutcomeKind::Success);
    deploys.add(OutcomeKind::Failed);
    Snapshot {
        version: "0.1.0".into(),
        running: Some(RunningRelease {
            serial: 41,
            commit: C1.parse().unwrap(),
            toplevel: Some(system('b')),
        }),
        last_deploy: Some(LastDeploy {
            outcome: OutcomeKind::Failed,
            serial: 42,
            at: at("2026-12-01T10:00:00.5Z"),
        }),
        deploys,
        reboot_required: true,
        drift: false,
        statuses_queued: 2,
        receipts_queued: Some(1),
        rate_limited_until: Some(at("2026-12-30T23:10:00Z")),
        last_poll_success: Some(at("2026-12-01T10:01:00Z")),
        newest_release: Some(NewestRelease {
            serial: 42,
            expires: Some(at("2026-12-31T00:00:00Z")),
        }),
        now: at("2026-12-30T23:00:00Z"),
    }
}

#[test]
fn a_snapshot_renders_in_the_exposition_format() {
    let text = render(&full());
    let expected = r#"# HELP ferry_build_info The agent's version (always 1).
# TYPE ferry_build_info gauge
ferry_build_info{version="0.1.0"} 1
# HELP ferry_release_info The release this host runs per Ferry: the last that deployed successfully (always 1).
# TYPE ferry_release_info gauge
ferry_release_info{serial="41",commit="1111111111111111111111111111111111111111",toplevel="/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-web1"} 1
# HELP ferry_release_serial Serial of the release this host runs per Ferry.
# TYPE ferry_release_serial gauge
ferry_release_serial 41
# HELP ferry_last_deploy_outcome How the last deploy attempt ended: 1 for its outcome, 0 for the others.
# TYPE ferry_last_deploy_outcome gauge
ferry_last_deploy_outcome{outcome="success"} 0
ferry_last_deploy_outcome{outcome="success-reboot-required"} 0
ferry_last_deploy_outcome{outcome="installed"} 0
ferry_last_deploy_outcome{outcome="refused"} 0
ferry_last_deploy_outcome{outcome="failed"} 1
ferry_last_deploy_outcome{outcome="error"} 0
# HELP ferry_last_deploy_timestamp_seconds When the last deploy attempt ended.
# TYPE ferry_last_deploy_timestamp_seconds gauge
ferry_last_deploy_timestamp_seconds 1796119200.5
# HELP ferry_last_deploy_serial Serial of the release the last deploy attempt was for (0 when it was refused before its serial was known).
# TYPE ferry_last_deploy_serial gauge
ferry_last_deploy_serial 42
# HELP ferry_deploys_total Deploy attempts by how they ended (kept across restarts).
# TYPE ferry_deploys_total counter
ferry_deploys_total{outcome="success"} 2
ferry_deploys_total{outcome="success-reboot-required"} 0
ferry_deploys_total{outcome="installed"} 0
ferry_deploys_total{outcome="refused"} 0
ferry_deploys_total{outcome="failed"} 1
ferry_deploys_total{outcome="error"} 0
# HELP ferry_reboot_required 1 when the last release deployed needs a reboot to be fully active (new kernel or initrd, or a boot release) and the host has not booted into it.
# TYPE ferry_reboot_required gauge
ferry_reboot_required 1
# HELP ferry_drift 1 when the running system or the system profile differs from what Ferry deployed.
# TYPE ferry_drift gauge
ferry_drift 0
# HELP ferry_statuses_queued Commit statuses waiting to be delivered to the forge.
# TYPE ferry_statuses_queued gauge
ferry_statuses_queued 2
# HELP ferry_receipts_queued Signed receipts waiting to be written to the bucket (only with report.receipts).
# TYPE ferry_receipts_queued gauge
ferry_receipts_queued 1
# HELP ferry_forge_rate_limited_until_timestamp_seconds Until when the forge rate-limits the agent's commit statuses (absent when it does not).
# TYPE ferry_forge_rate_limited_until_timestamp_seconds gauge
ferry_forge_rate_limited_until_timestamp_seconds 1798672200
# HELP ferry_last_poll_success_timestamp_seconds When a poll of the deploy branch last completed without a transient failure.
# TYPE ferry_last_poll_success_timestamp_seconds gauge
ferry_last_poll_success_timestamp_seconds 1796119260
# HELP ferry_newest_release_serial Serial of the newest release this agent verified.
# TYPE ferry_newest_release_serial gauge
ferry_newest_release_serial 42
# HELP ferry_newest_release_expiry_timestamp_seconds When the newest verified release expires (absent when it does not).
# TYPE ferry_newest_release_expiry_timestamp_seconds gauge
ferry_newest_release_expiry_timestamp_seconds 1798675200
# HELP ferry_newest_release_expiry_seconds Seconds left, when the metrics were written, until the newest verified release expires; negative once expired.
# TYPE ferry_newest_release_expiry_seconds gauge
ferry_newest_release_expiry_seconds 3600
"#;
    assert_eq!(text, expected);
}

/// The names of the families a rendering has samples of.
fn families_in(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_family_is_rendered_when_there_is_something_to_say() {
    let names: Vec<String> = FAMILIES.iter().map(|f| f.name.to_owned()).collect();
    assert_eq!(families_in(&render(&full())), names);
    for f in FAMILIES {
        assert!(f.name.starts_with("ferry_"), "{}", f.name);
        assert_eq!(
            f.name.ends_with("_total"),
            f.kind == MetricType::Counter,
            "{}",
            f.name
        );
    }
}

#[test]
fn a_fresh_host_says_only_what_it_knows() {
    let fresh = Snapshot {
        running: None,
        last_deploy: None,
        deploys: Counts::default(),
        reboot_required: false,
        statuses_queued: 0,
        receipts_queued: None,
        rate_limited_until: None,
        last_poll_success: None,
        newest_release: None,
        ..full()
    };
    let text = render(&fresh);
    assert_eq!(
        families_in(&text),
        [
            "ferry_build_info",
            "ferry_deploys_total",
            "ferry_reboot_required",
            "ferry_drift",
            "ferry_statuses_queued"
        ]
    );
    assert!(
        text.contains("ferry_deploys_total{outcome=\"refused\"} 0\n"),
        "{text}"
    );
    // A release without an expiry: its serial, no expiry.
    let no_expiry = Snapshot {
        newest_release: Some(NewestRelease {
            serial: 7,
            expires: None,
        }),
        ..fresh
    };
    assert_eq!(
        families_in(&render(&no_expiry)).last().unwrap(),
        "ferry_newest_release_serial"
    );
}

#[test]
fn an_expired_release_has_negative_seconds_left() {
    let late = Snapshot {
        now: at("2026-12-31T00:00:10Z"),
        ..full()
    };
    assert!(render(&late).contains("\nferry_newest_release_expiry_seconds -10\n"));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
    assert_eq!(escape_label("a\nb"), "a\\nb");
    let odd = Snapshot {
        version: "1.0\"\n".into(),
        ..full()
    };
    assert!(render(&odd).contains("ferry_build_info{version=\"1.0\\\"\\n\"} 1\n"));
}

#[test]
fn reboot_required_until_the_host_boots_the_release() {
    let with = |kind| State {
        last_success: Some(outcome(C1, 1, kind, "2026-12-01T10:00:00Z")),
        ..Default::default()
    };
    let (b, a) = (system('b'), system('a'));
    assert!(reboot_required(
        &with(OutcomeKind::SuccessRebootRequired),
        Some(&a)
    ));
    assert!(!reboot_required(
        &with(OutcomeKind::SuccessRebootRequired),
        Some(&b)
    ));
    // Unknown booted system: what the state says.
    assert!(reboot_required(&with(OutcomeKind::SuccessRebootRequired), None));
    assert!(reboot_required(&with(OutcomeKind::Installed), Some(&a)));
    assert!(!reboot_required(&with(OutcomeKind::Installed), Some(&b)));
    assert!(!reboot_required(&with(OutcomeKind::Success), Some(&a)));
    assert!(!reboot_required(&State::default(), Some(&a)));
    // A deploy waiting for its reboot (reboot policy `in-window`).
    let waiting = State {
        in_flight: Some(crate::state::InFlight {
            target: crate::state::Target {
                commit: C1.parse().unwrap(),
                serial: 1,
                toplevel: b.clone(),
            },
            tip: C1.parse().unwrap(),
            source: None,
            action: ferry_signer::Action::Switch,
            phase: crate::state::Phase::AwaitingReboot {
                at: "2026-12-05T02:37:00Z".parse().unwrap(),
            },
            previous: Some(a.clone()),
            failed_before: Vec::new(),
            started: "2026-12-01T10:00:00Z".parse().unwrap(),
        }),
        ..Default::default()
    };
    assert!(reboot_required(&waiting, Some(&a)));
    assert!(!reboot_required(&waiting, Some(&b)));
}

#[test]
fn each_ending_is_counted_once() {
    let mut tally = Tally::default();
    let mut state = State::default();
    assert!(!tally.count(&state), "nothing ended yet");
    state.last_outcome = Some(outcome(C1, 1, OutcomeKind::Success, "2026-12-01T10:00:00Z"));
    assert!(tally.count(&state));
    assert!(!tally.count(&state), "the same ending again");
    // The same release ending again later (a retry) is another ending.
    state.last_outcome = Some(outcome(C1, 1, OutcomeKind::Error, "2026-12-01T11:00:00Z"));
    assert!(tally.count(&state));
    state.last_outcome = Some(outcome(C2, 2, OutcomeKind::Success, "2026-12-01T11:00:00Z"));
    assert!(tally.count(&state));
    assert_eq!(tally.deploys.get(OutcomeKind::Success), 2);
    assert_eq!(tally.deploys.get(OutcomeKind::Error), 1);
    assert_eq!(tally.deploys.get(OutcomeKind::Failed), 0);
}

#[test]
fn the_newest_release_never_goes_back() {
    let mut tally = Tally::default();
    let release = |serial| NewestRelease {
        serial,
        expires: None,
    };
    tally.saw_release(release(5));
    tally.saw_release(release(3));
    assert_eq!(tally.newest_release, Some(release(5)));
    tally.saw_release(release(6));
    assert_eq!(tally.newest_release, Some(release(6)));
}

#[test]
fn the_tally_survives_a_restart_and_a_bad_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Tally::load(dir.path()).unwrap(), Tally::default());
    let mut tally = Tally::default();
    let state = State {
        last_outcome: Some(outcome(C1, 1, OutcomeKind::Refused, "2026-12-01T10:00:00Z")),
        ..Default::default()
    };
    tally.count(&state);
    tally.last_poll_success = Some(at("2026-12-01T10:01:00Z"));
    tally.saw_release(NewestRelease {
        serial: 1,
        expires: Some(at("2026-12-31T00:00:00Z")),
    });
    tally.save(dir.path()).unwrap();
    let mut again = Tally::load(dir.path()).unwrap();
    assert_eq!(again, tally);
    assert!(!again.count(&state), "counted before the restart");

    let path = dir.path().join(TALLY_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 1"), "{text}");
    std::fs::write(&path, text.replace("\"refused\"", "\"exploded\"")).unwrap();
    let err = Tally::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("metrics.json") && err.contains("unknown outcome `exploded`"),
        "{err}"
    );
    std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 9")).unwrap();
    let err = Tally::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("version 9"), "{err}");
}

/// The `[metrics]` section `metrics` validated, or the refusal as
/// `Config::parse` words it (`` `key`: problem ``).
fn parse(metrics: &str) -> Result<MetricsConfig, String> {
    let file: MetricsFile = toml::from_str(metrics).map_err(|e| e.to_string())?;
    validate(file).map_err(|e| format!("`{}`: {}", e.key, e.problem))
}

#[test]
fn the_metrics_section_is_validated() {
    assert_eq!(parse("").unwrap(), MetricsConfig::default());
    assert!(!MetricsConfig::default().enabled());
    let c =
        parse("textfile_dir = \"/var/lib/prometheus-node-exporter/textfile\"\nlisten = \"127.0.0.1:9101\"\n")
            .unwrap();
    assert!(c.enabled());
    assert_eq!(c.listen, Some("127.0.0.1:9101".parse().unwrap()));
    assert_eq!(
        parse("listen = \"[::1]:9101\"\n").unwrap().listen,
        Some("[::1]:9101".parse().unwrap())
    );
    for (text, needle) in [
        (
            "listen = \"0.0.0.0:9101\"\n",
            "`metrics.listen`: `0.0.0.0:9101` is not a loopback address",
        ),
        (
            "listen = \"192.0.2.7:9101\"\n",
            "use metrics.textfile_dir with node_exporter",
        ),
        ("listen = \"[::]:9101\"\n", "is not a loopback address"),
        (
            "listen = \"localhost:9101\"\n",
            "is not an address and port: expected e.g. \"127.0.0.1:9101\"",
        ),
        ("listen = \"127.0.0.1\"\n", "is not an address and port"),
        ("listen = \"127.0.0.1:0\"\n", "has no port: choose a fixed port"),
        (
            "textfile_dir = \"textfile\"\n",
            "`metrics.textfile_dir`: `textfile` is not an absolute path",
        ),
        ("port = 9101\n", "unknown field `port`"),
    ] {
        let err = parse(text).unwrap_err();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn only_get_and_head_of_the_metrics_path_are_served() {
    assert_eq!(request("GET /metrics HTTP/1.1"), Ok(Request::Get));
    assert_eq!(request("HEAD /metrics HTTP/1.0"), Ok(Request::Head));
    assert_eq!(request("GET /metrics?x=1 HTTP/1.1"), Ok(Request::Get));
    assert_eq!(request("POST /metrics HTTP/1.1"), Err(405));
    assert_eq!(request("GET / HTTP/1.1"), Err(404));
    assert_eq!(request("GET /metrics/../state.json HTTP/1.1"), Err(404));
    assert_eq!(request("GET /metrics"), Err(400));
    assert_eq!(request("GET /metrics SPDY/3"), Err(400));
    assert_eq!(request(""), Err(400));
}

#[test]
fn the_endpoint_serves_the_page_and_refuses_the_rest() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let page = Page::default();
    *page.lock().unwrap() = "ferry_drift 0\n".into();
    let endpoint = rt
        .block_on(serve("127.0.0.1:0".parse().unwrap(), page.clone()))
        .unwrap();
    let addr = endpoint.addr;
    let ask = move |request: String| {
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        })
    };
    let get = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".into());
    let other = ask("GET /state.json HTTP/1.1\r\n\r\n".into());
    // A head that never ends, just over the limit (all of it read, so the
    // answer is not lost to a reset).
    let huge = ask(format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD_BYTES)));
    let (get, other, huge) = rt.block_on(async {
        let wait =
            |h: std::thread::JoinHandle<String>| tokio::task::spawn_blocking(move || h.join().unwrap());
        (
            wait(get).await.unwrap(),
            wait(other).await.unwrap(),
            wait(huge).await.unwrap(),
        )
    });
    assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
    assert!(get.contains("Content-Type: text/plain; version=0.0.4"), "{get}");
    assert!(get.ends_with("\r\n\r\nferry_drift 0\n"), "{get}");
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    assert!(!other.contains("ferry_drift"), "{other}");
    assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
}
