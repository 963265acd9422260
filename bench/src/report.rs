//! The figures' results and the markdown table they print as, plus the
//! statistics and the machine description that go with them.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: &'static str,
    pub figure: String,
    pub measured: String,
    /// What the figure is compared against, measured in the same run.
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// Whether the target is met; `None` for figures that only report.
    pub met: Option<bool>,
}

impl Row {
    /// A figure compared with a baseline: met when measured/baseline ≤ `max_ratio`.
    pub fn ratio(
        id: &'static str,
        figure: &str,
        measured: Duration,
        baseline: Duration,
        what: &str,
        max_ratio: f64,
    ) -> Self {
        let ratio = measured.as_secs_f64() / baseline.as_secs_f64();
        Row {
            id,
            figure: figure.into(),
            measured: fmt_duration(measured),
            baseline: format!("{} ({what})", fmt_duration(baseline)),
            ratio: Some(ratio),
            target: format!("≤ {max_ratio:.2}×"),
            met: Some(ratio <= max_ratio),
        }
    }

    /// A ratio shown for reference only: it explains another figure.
    pub fn reference(
        id: &'static str,
        figure: &str,
        measured: Duration,
        baseline: Duration,
        what: &str,
    ) -> Self {
        let mut r = Self::ratio(id, figure, measured, baseline, what, f64::INFINITY);
        r.target = "(reference)".into();
        r.met = None;
        r
    }

    /// An absolute figure with an upper bound.
    pub fn absolute(id: &'static str, figure: &str, value: f64, unit: &str, max: f64) -> Self {
        Row {
            id,
            figure: figure.into(),
            measured: format!("{value:.2} {unit}"),
            baseline: "—".into(),
            ratio: None,
            target: format!("≤ {max} {unit}"),
            met: Some(value <= max),
        }
    }

    /// A figure that is only reported.
    pub fn report(id: &'static str, figure: &str, measured: String) -> Self {
        Row {
            id,
            figure: figure.into(),
            measured,
            baseline: "—".into(),
            ratio: None,
            target: "report".into(),
            met: None,
        }
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| # | figure | measured | baseline (same run) | ratio | target | met |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.figure,
            r.measured,
            r.baseline,
            r.ratio.map_or("—".into(), |x| format!("{x:.2}×")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    }
    s
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// The median of `samples` (which must not be empty).
pub fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// One line naming this machine and the versions of what was measured.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".into(), |kib| format!("{:.1}", kib / 1024.0 / 1024.0));
    let first_line = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| format!("{cmd}: not found"))
    };
    format!(
        "{cpu}, {} cores, {ram_gib} GiB RAM, Linux {}; {}, {}, {}",
        crate::fixtures::cores(),
        first_line("uname", &["-r"]),
        first_line("rustc", &["--version"]),
        first_line("git", &["--version"]),
        first_line("nix", &["--version"]),
    )
}
