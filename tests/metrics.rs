//! The metrics against Prometheus's own tools, and their documentation
//! against the code: what the agent renders passes `promtool check metrics`;
//! docs/operations.md lists exactly the families the agent writes, with
//! their types; its alert rules pass `promtool check rules`, name only
//! metrics the agent writes, and fire (`promtool test rules`) on the series
//! of a host in trouble and not on those of a healthy host.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use ferry_agent::metrics::{self, Counts, LastDeploy, NewestRelease, RunningRelease, Snapshot, FAMILIES};
use ferry_agent::state::OutcomeKind;

use crate::common::prometheus;
use crate::reference::repo_file;

const DOC: &str = "docs/operations.md";

fn snapshot() -> Snapshot {
    let mut deploys = Counts::default();
    deploys.add(OutcomeKind::Success);
    deploys.add(OutcomeKind::Refused);
    let at = |h| Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap();
    Snapshot {
        version: env!("CARGO_PKG_VERSION").into(),
        running: Some(RunningRelease {
            serial: 3,
            commit: "9fceb02d0ae598e95dc970b74767f19372d61af8".parse().unwrap(),
            toplevel: Some(
                "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-web1"
                    .parse()
                    .unwrap(),
            ),
        }),
        last_deploy: Some(LastDeploy {
            outcome: OutcomeKind::Refused,
            serial: 4,
            at: at(10),
        }),
        deploys,
        reboot_required: true,
        drift: true,
        statuses_queued: 2,
        receipts_queued: Some(1),
        rate_limited_until: Some(at(13)),
        last_poll_success: Some(at(11)),
        newest_release: Some(NewestRelease {
            serial: 4,
            expires: Some(at(23)),
        }),
        now: at(12),
    }
}

#[test]
fn promtool_accepts_every_family_and_refuses_a_bad_one() {
    let text = metrics::render(&snapshot());
    for f in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {} ", f.name)),
            "{} is rendered",
            f.name
        );
    }
    prometheus::check_metrics(&text).unwrap_or_else(|e| panic!("promtool check metrics: {e}\n{text}"));
    // The checker does check: a counter without `_total` is refused.
    let bad = text.replace("ferry_deploys_total", "ferry_deploys");
    let said = prometheus::check_metrics(&bad).unwrap_err();
    assert!(said.contains("_total"), "{said}");
}

/// The section of operations.md about metrics.
fn metrics_section() -> String {
    let doc = repo_file(DOC);
    doc.split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .unwrap_or_else(|| panic!("{DOC} has no `## Metrics` section"))
        .to_owned()
}

#[test]
fn the_operations_guide_lists_exactly_the_metrics_the_agent_writes() {
    let section = metrics_section();
    let documented: BTreeSet<(String, String)> = section
        .lines()
        .filter(|l| l.starts_with("| `ferry_"))
        .map(|l| {
            let cells = ferry_test_support::table_cells(l);
            assert!(
                cells.len() >= 4,
                "{DOC}: a metric row needs name, type, labels and meaning: {l}"
            );
            (cells[0].trim_matches('`').to_owned(), cells[1].to_owned())
        })
        .collect();
    let written: BTreeSet<(String, String)> = FAMILIES
        .iter()
        .map(|f| (f.name.to_owned(), f.kind.as_str().to_owned()))
        .collect();
    let undocumented: Vec<_> = written.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&written).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "{DOC}: metrics (name, type) the agent writes but the table lacks: {undocumented:?}; \
         in the table but not written (or with another type): {unknown:?}"
    );
}

/// The alert rules of the guide (its one YAML block in the metrics section).
fn rules() -> String {
    let section = metrics_section();
    let start = section.find("```yaml\n").expect("an alert rules block") + "```yaml\n".len();
    let len = section[start..].find("```").expect("the block ends");
    section[start..start + len].to_owned()
}

/// The rules without their annotations (the unit tests compare labels only).
fn without_annotations(rules: &str) -> String {
    let mut out = String::new();
    let mut skipping: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skipping {
            if indent > level {
                continue;
            }
            skipping = None;
        }
        if line.trim() == "annotations:" {
            skipping = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn the_alert_rules_are_valid_and_name_only_real_metrics() {
    let rules = rules();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = std::process::Command::new(prometheus::promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let known: BTreeSet<&str> = FAMILIES.iter().map(|f| f.name).collect();
    let named: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("ferry_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!named.is_empty());
    for name in &named {
        assert!(
            known.contains(name.as_str()),
            "an alert rule names {name}, which the agent does not write"
        );
    }
    // The checker does check: a rule on a broken expression is refused.
    std::fs::write(&file, rules.replace("== 1", "== == 1")).unwrap();
    let out = std::process::Command::new(prometheus::promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a broken rule file passed");
}

/// One case of the rules' unit test: a series of host `instance`, and which
/// alert must (or must not) fire at `eval`.
struct Case {
    instance: &'static str,
    series: &'static str,
    values: &'static str,
    alert: &'static str,
    eval: &'static str,
    /// The alert's extra labels when it must fire; `None`: must not.
    fires: Option<&'static str>,
}

#[test]
fn each_alert_fires_for_a_host_in_trouble_and_not_for_a_healthy_one() {
    let sick = |series, values, alert, eval, labels| Case {
        instance: "sick",
        series,
        values,
        alert,
        eval,
        fires: Some(labels),
    };
    let healthy = |series, values, alert, eval| Case {
        instance: "healthy",
        series,
        values,
        alert,
        eval,
        fires: None,
    };
    // One-minute steps; the test clock starts at 0.
    let cases = [
        sick(
            "ferry_last_deploy_outcome{outcome=\"failed\"}",
            "1x200",
            "FerryDeployFailing",
            "1h",
            "severity: page, outcome: failed",
        ),
        healthy(
            "ferry_last_deploy_outcome{outcome=\"success\"}",
            "1x200",
            "FerryDeployFailing",
            "1h",
        ),
        sick(
            "ferry_last_deploy_outcome{outcome=\"refused\"}",
            "1x200",
            "FerryReleaseRefused",
            "1h",
            "severity: page, outcome: refused",
        ),
        healthy(
            "ferry_last_deploy_outcome{outcome=\"refused\"}",
            "0x200",
            "FerryReleaseRefused",
            "1h",
        ),
        sick(
            "ferry_last_poll_success_timestamp_seconds",
            "600x200",
            "FerryNotPolling",
            "2h",
            "severity: page",
        ),
        healthy(
            "ferry_last_poll_success_timestamp_seconds",
            "0+60x200",
            "FerryNotPolling",
            "2h",
        ),
        sick(
            "ferry_newest_release_expiry_seconds",
            "86400-60x200",
            "FerryReleaseExpiresSoon",
            "1h",
            "severity: page",
        ),
        healthy(
            "ferry_newest_release_expiry_seconds",
            "2592000-60x200",
            "FerryReleaseExpiresSoon",
            "1h",
        ),
        sick(
            "ferry_statuses_queued",
            "3x200",
            "FerryStatusesStuck",
            "3h",
            "severity: ticket",
        ),
        healthy("ferry_statuses_queued", "0x200", "FerryStatusesStuck", "3h"),
        sick(
            "ferry_receipts_queued",
            "2x200",
            "FerryReceiptsStuck",
            "2h",
            "severity: ticket",
        ),
        healthy("ferry_receipts_queued", "0x200", "FerryReceiptsStuck", "2h"),
        sick("ferry_drift", "1x200", "FerryDrift", "3h", "severity: ticket"),
        healthy("ferry_drift", "0x200", "FerryDrift", "3h"),
        sick(
            "ferry_reboot_required",
            "1x11000",
            "FerryRebootPending",
            "170h",
            "severity: ticket",
        ),
        healthy(
            "ferry_reboot_required",
            "1x9000 0x2000",
            "FerryRebootPending",
            "170h",
        ),
    ];
    let rules = rules();
    let alerts: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let tested: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c.fires.is_some())
        .map(|c| c.alert)
        .collect();
    assert_eq!(alerts, tested, "every alert of {DOC} has a case that fires it");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), without_annotations(&rules)).unwrap();
    let mut test = String::from("rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n");
    for c in &cases {
        let series = match c.series.split_once('{') {
            Some((name, labels)) => format!("{name}{{instance=\"{}\",{labels}", c.instance),
            None => format!("{}{{instance=\"{}\"}}", c.series, c.instance),
        };
        let expected = match c.fires {
            Some(labels) => format!("[{{exp_labels: {{instance: {}, {labels}}}}}]", c.instance),
            None => "[]".into(),
        };
        test.push_str(&format!(
            "  - interval: 1m\n    input_series:\n      - series: '{series}'\n        values: '{}'\n    \
             alert_rule_test:\n      - eval_time: {}\n        alertname: {}\n        exp_alerts: {expected}\n",
            c.values, c.eval, c.alert
        ));
    }
    let file = dir.path().join("test.yml");
    std::fs::write(&file, &test).unwrap();
    let out = std::process::Command::new(prometheus::promtool())
        .args(["test", "rules"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
