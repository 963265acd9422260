//! The figures' results and the markdown table they print as, plus the
//! statistics and the machine description that go with them.

use std::collections::BTreeMap;
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

/// A timing as the table shows it: the median of its runs, with the
/// fastest and slowest beside it when there were several.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// The median, fastest and slowest of `samples` (which must not be empty).
pub fn spread(samples: &[Duration]) -> Spread {
    Spread {
        median: median(samples),
        min: *samples.iter().min().expect("at least one sample"),
        max: *samples.iter().max().expect("at least one sample"),
    }
}

impl From<Duration> for Spread {
    /// One figure with no runs to spread over (a sum, or a single run).
    fn from(d: Duration) -> Self {
        Spread {
            median: d,
            min: d,
            max: d,
        }
    }
}

impl std::fmt::Display for Spread {
    /// `4.72 ms (4.10–5.30 ms)`; the median alone when every run took the same.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", fmt_duration(self.median))?;
        if self.min != self.max {
            write!(f, " ({}–{})", fmt_duration(self.min), fmt_duration(self.max))?;
        }
        Ok(())
    }
}

impl Row {
    /// A figure compared with a baseline: met when the medians'
    /// measured/baseline ≤ `max_ratio`. Each shows its runs' min–max.
    pub fn ratio(
        id: &'static str,
        figure: &str,
        measured: impl Into<Spread>,
        baseline: impl Into<Spread>,
        what: &str,
        max_ratio: f64,
    ) -> Self {
        let (measured, baseline) = (measured.into(), baseline.into());
        let ratio = measured.median.as_secs_f64() / baseline.median.as_secs_f64();
        Row {
            id,
            figure: figure.into(),
            measured: measured.to_string(),
            baseline: format!("{baseline} ({what})"),
            ratio: Some(ratio),
            target: format!("≤ {max_ratio:.2}×"),
            met: Some(ratio <= max_ratio),
        }
    }

    /// A ratio shown for reference only: it explains another figure.
    pub fn reference(
        id: &'static str,
        figure: &str,
        measured: impl Into<Spread>,
        baseline: impl Into<Spread>,
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

/// The markdown table. `before` is the published table (docs/performance.md)
/// whose figure each row prints beside today's, so a regression shows in
/// the output itself.
pub fn table(rows: &[Row], before: &Previous) -> String {
    let mut s = String::new();
    s.push_str(
        "| # | figure | measured | baseline (same run) | ratio | target | met | before (performance.md) |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for r in rows {
        let nth = seen.entry(r.id).or_default();
        let earlier = before.get(r.id, *nth).unwrap_or("—");
        *nth += 1;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {earlier} |",
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

/// The figures of a published table: for each row id (the nth row with
/// that id, as some figures take several), its ratio, or its measured
/// value when it has none.
#[derive(Debug, Default)]
pub struct Previous(BTreeMap<String, Vec<String>>);

impl Previous {
    /// Reads every table row (`| B4 | figure | measured | baseline | ratio
    /// | …`) of `doc`; anything else is skipped.
    pub fn parse(doc: &str) -> Self {
        let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in doc.lines() {
            let Some(rest) = line.strip_prefix("| B") else {
                continue;
            };
            let cells: Vec<&str> = rest.split(" | ").map(str::trim).collect();
            if cells.len() < 5 {
                continue;
            }
            let id = format!("B{}", cells[0]);
            let figure = match cells[4] {
                "—" | "" => cells[2],
                ratio => ratio,
            };
            rows.entry(id).or_default().push(figure.to_owned());
        }
        Previous(rows)
    }

    fn get(&self, id: &str, nth: usize) -> Option<&str> {
        self.0.get(id)?.get(nth).map(String::as_str)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timing_shows_its_median_with_the_fastest_and_slowest_run() {
        let ms = Duration::from_millis;
        let s = spread(&[ms(5), ms(3), ms(9), ms(4)]);
        assert_eq!(
            (s.median, s.min, s.max),
            (ms(4) + Duration::from_micros(500), ms(3), ms(9))
        );
        assert_eq!(s.to_string(), "4.50 ms (3.00 ms–9.00 ms)");
        assert_eq!(Spread::from(ms(7)).to_string(), "7.00 ms");
        let row = Row::ratio("B4", "closure", s, ms(3), "nix", 1.1);
        assert_eq!(row.measured, "4.50 ms (3.00 ms–9.00 ms)");
        assert_eq!(row.baseline, "3.00 ms (nix)");
        let ratio = row.ratio.unwrap();
        assert!((ratio - 1.5).abs() < 1e-9, "the ratio is of the medians: {ratio}");
        assert_eq!(row.met, Some(false));
    }

    #[test]
    fn each_row_prints_the_published_figure_beside_todays() {
        let doc = "text\n| # | figure | measured | baseline | ratio | target | met |\n\
                   | B4 | closure | 3.69 s | 3.49 s (nix) | 1.79× | ≤ 1.10× | **no** |\n\
                   | B16 | writes, 10 hosts | 2 | — | — | ≤ 10 | yes |\n\
                   | B16 | writes, 1000 hosts | 3 | — | — | ≤ 10 | yes |\n";
        let before = Previous::parse(doc);
        let rows = [
            Row::ratio(
                "B4",
                "closure",
                Duration::from_secs(2),
                Duration::from_secs(2),
                "nix",
                1.1,
            ),
            Row::report("B16", "writes, 10 hosts", "2".into()),
            Row::report("B16", "writes, 1000 hosts", "2".into()),
            Row::report("B99", "new", "1".into()),
        ];
        let table = table(&rows, &before);
        let last = |id: &str, nth: usize| {
            let line = table
                .lines()
                .filter(|l| l.starts_with(&format!("| {id} ")))
                .nth(nth)
                .unwrap();
            line.trim_end_matches(" |")
                .rsplit(" | ")
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(last("B4", 0), "1.79×");
        assert_eq!(last("B16", 0), "2");
        assert_eq!(last("B16", 1), "3");
        assert_eq!(last("B99", 0), "—");
    }
}
