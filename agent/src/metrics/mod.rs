//! Prometheus metrics: what the agent knows about this host (the release it
//! runs, how deploys ended, drift, statuses waiting for the forge, when it
//! last polled, when the newest release expires), rendered in Prometheus's
//! text exposition format. [`render`] is a pure function over a typed
//! [`Snapshot`]; [`Metrics::update`] gathers the snapshot after every
//! reconcile and at start, writes it atomically to node_exporter's
//! textfile-collector directory (`metrics.textfile_dir`) and hands it to the
//! loopback endpoint ([`serve`], `metrics.listen`).
//!
//! The deploy counters survive restarts: they are kept in
//! `<state_dir>/metrics.json` (versioned) together with the ending they last
//! counted, and an ending is counted when it first appears as the state's
//! last outcome, so an agent killed between recording an ending and counting
//! it counts it at the next start, and never twice.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_signer::{CommitId, StorePath};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::config::value::Invalid;
use crate::io::durable::atomic_write;
use crate::io::nix;
use crate::state::outbox::Outbox;
use crate::state::{OutcomeKind, State, StateDir};

/// The file written into the textfile-collector directory.
pub const TEXTFILE: &str = "ferry_agent.prom";
/// Where the deploy counters are kept, in the state directory.
const TALLY_FILE: &str = "metrics.json";
const TALLY_VERSION: u32 = 1;
/// A request head longer than this is refused (a scraper sends a few hundred bytes).
const MAX_HEAD_BYTES: usize = 8 << 10;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[metrics]` section, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// node_exporter's textfile-collector directory; `ferry_agent.prom` is
    /// written there.
    pub textfile_dir: Option<PathBuf>,
    /// A loopback address to serve `/metrics` on (`ferry-agent run` only).
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Whether metrics are kept at all.
    pub fn enabled(&self) -> bool {
        self.textfile_dir.is_some() || self.listen.is_some()
    }
}

/// `[metrics]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsFile {
    pub(crate) textfile_dir: Option<PathBuf>,
    pub(crate) listen: Option<String>,
}

/// Validates the `[metrics]` section: an absolute directory, and a loopback
/// address with a port. Metrics name the release commits and the state of
/// the host and are served without authentication, so they are never
/// offered beyond this machine; a scraper elsewhere reads them through
/// node_exporter (or a proxy the operator secures).
pub(crate) fn validate(f: MetricsFile) -> Result<MetricsConfig, Invalid> {
    let textfile_dir = f
        .textfile_dir
        .map(|d| crate::config::value::absolute(d, "metrics.textfile_dir"))
        .transpose()
        .map_err(|p| Invalid::new("metrics.textfile_dir", p))?;
    let listen = f
        .listen
        .map(|l| listen_address(&l))
        .transpose()
        .map_err(|p| Invalid::new("metrics.listen", p))?;
    Ok(MetricsConfig { textfile_dir, listen })
}

fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!("`{text}` is not an address and port: expected e.g. \"127.0.0.1:9101\" or \"[::1]:9101\"")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "`{text}` is not a loopback address: metrics are served without authentication, so only on \
             127.0.0.1 or [::1]; to scrape from elsewhere, use metrics.textfile_dir with node_exporter"
        ));
    }
    if addr.port() == 0 {
        return Err(format!(
            "`{text}` has no port: choose a fixed port for the scraper, e.g. \"127.0.0.1:9101\""
        ));
    }
    Ok(addr)
}

// ---- the snapshot and its rendering (pure) ---------------------------------

/// Everything the metrics say, at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The agent's version (`build_info`).
    pub version: String,
    /// The release this host should be running: the last that succeeded.
    pub running: Option<RunningRelease>,
    /// How the last deploy attempt ended, and when.
    pub last_deploy: Option<LastDeploy>,
    /// Deploy endings counted so far, by kind.
    pub deploys: Counts,
    /// The last release deployed waits for a reboot to be fully active.
    pub reboot_required: bool,
    /// The system differs from what Ferry deployed.
    pub drift: bool,
    /// Commit statuses waiting to be delivered to the forge.
    pub statuses_queued: usize,
    /// With `report.receipts`: receipts waiting to be written to the bucket.
    pub receipts_queued: Option<usize>,
    /// Until when the forge rate-limits the agent's statuses, while it does.
    pub rate_limited_until: Option<DateTime<Utc>>,
    /// When a poll last completed without a transient failure.
    pub last_poll_success: Option<DateTime<Utc>>,
    /// The newest release this agent verified.
    pub newest_release: Option<NewestRelease>,
    /// When the snapshot was taken (for the seconds left until expiry).
    pub now: DateTime<Utc>,
}

/// The release a host runs, per Ferry's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRelease {
    pub serial: u64,
    pub commit: CommitId,
    pub toplevel: Option<StorePath>,
}

/// The last deploy attempt's ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDeploy {
    pub outcome: OutcomeKind,
    pub serial: u64,
    pub at: DateTime<Utc>,
}

/// The newest verified release: its serial and when it expires, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestRelease {
    pub serial: u64,
    pub expires: Option<DateTime<Utc>>,
}

/// Deploy endings by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts([u64; OUTCOMES.len()]);

/// Every kind of ending, in the order the metrics list them.
pub const OUTCOMES: [OutcomeKind; 6] = [
    OutcomeKind::Success,
    OutcomeKind::SuccessRebootRequired,
    OutcomeKind::Installed,
    OutcomeKind::Refused,
    OutcomeKind::Failed,
    OutcomeKind::Error,
];

fn index(kind: OutcomeKind) -> usize {
    match kind {
        OutcomeKind::Success => 0,
        OutcomeKind::SuccessRebootRequired => 1,
        OutcomeKind::Installed => 2,
        OutcomeKind::Refused => 3,
        OutcomeKind::Failed => 4,
        OutcomeKind::Error => 5,
    }
}

impl Counts {
    pub fn get(&self, kind: OutcomeKind) -> u64 {
        self.0[index(kind)]
    }

    pub fn add(&mut self, kind: OutcomeKind) {
        self.0[index(kind)] += 1;
    }
}

/// A metric family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    Counter,
}

impl MetricType {
    /// As the `# TYPE` line writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
        }
    }
}

/// What the agent says about one metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyInfo {
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> FamilyInfo {
    FamilyInfo {
        name,
        kind: MetricType::Gauge,
        help,
    }
}

/// Writes the samples of one family after its HELP and TYPE lines.
struct Family<'o> {
    out: &'o mut String,
}

impl Family<'_> {
    fn head<'o>(out: &'o mut String, info: &FamilyInfo) -> Family<'o> {
        let _ = writeln!(out, "# HELP {} {}", info.name, info.help);
        let _ = writeln!(out, "# TYPE {} {}", info.name, info.kind.as_str());
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// A label value as the exposition format quotes it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Every metric family [`render`] writes: name, type and meaning. Families
/// with nothing to say yet (no release deployed, no expiry) have no sample.
pub const FAMILIES: &[FamilyInfo] = &[
    gauge("ferry_build_info", "The agent's version (always 1)."),
    gauge("ferry_release_info", "The release this host runs per Ferry: the last that deployed successfully (always 1)."),
    gauge("ferry_release_serial", "Serial of the release this host runs per Ferry."),
    gauge("ferry_last_deploy_outcome", "How the last deploy attempt ended: 1 for its outcome, 0 for the others."),
    gauge("ferry_last_deploy_timestamp_seconds", "When the last deploy attempt ended."),
    gauge("ferry_last_deploy_serial", "Serial of the release the last deploy attempt was for (0 when it was refused before its serial was known)."),
    FamilyInfo {
        name: "ferry_deploys_total",
        kind: MetricType::Counter,
        help: "Deploy attempts by how they ended (kept across restarts).",
    },
    gauge("ferry_reboot_required", "1 when the last release deployed needs a reboot to be fully active (new kernel or initrd, or a boot release) and the host has not booted into it."),
    gauge("ferry_drift", "1 when the running system or the system profile differs from what Ferry deployed."),
    gauge("ferry_statuses_queued", "Commit statuses waiting to be delivered to the forge."),
    gauge("ferry_receipts_queued", "Signed receipts waiting to be written to the bucket (only with report.receipts)."),
    gauge("ferry_forge_rate_limited_until_timestamp_seconds", "Until when the forge rate-limits the agent's commit statuses (absent when it does not)."),
    gauge("ferry_last_poll_success_timestamp_seconds", "When a poll of the deploy branch last completed without a transient failure."),
    gauge("ferry_newest_release_serial", "Serial of the newest release this agent verified."),
    gauge("ferry_newest_release_expiry_timestamp_seconds", "When the newest verified release expires (absent when it does not)."),
    gauge("ferry_newest_release_expiry_seconds", "Seconds left, when the metrics were written, until the newest verified release expires; negative once expired."),
];

fn family<'o>(out: &'o mut String, name: &str) -> Family<'o> {
    let info = FAMILIES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} is not in FAMILIES"));
    Family::head(out, info)
}

/// The snapshot in Prometheus's text exposition format (version 0.0.4).
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    family(&mut out, "ferry_build_info").sample("ferry_build_info", &[("version", &s.version)], 1.0);
    if let Some(r) = &s.running {
        let serial = r.serial.to_string();
        let commit = r.commit.to_string();
        let toplevel = r.toplevel.as_ref().map(|t| t.to_string()).unwrap_or_default();
        family(&mut out, "ferry_release_info").sample(
            "ferry_release_info",
            &[("serial", &serial), ("commit", &commit), ("toplevel", &toplevel)],
            1.0,
        );
        family(&mut out, "ferry_release_serial").sample("ferry_release_serial", &[], r.serial as f64);
    }
    if let Some(d) = &s.last_deploy {
        let mut f = family(&mut out, "ferry_last_deploy_outcome");
        for kind in OUTCOMES {
            f.sample(
                "ferry_last_deploy_outcome",
                &[("outcome", kind.as_str())],
                flag(kind == d.outcome),
            );
        }
        family(&mut out, "ferry_last_deploy_timestamp_seconds").sample(
            "ferry_last_deploy_timestamp_seconds",
            &[],
            seconds(d.at),
        );
        family(&mut out, "ferry_last_deploy_serial").sample("ferry_last_deploy_serial", &[], d.serial as f64);
    }
    let mut f = family(&mut out, "ferry_deploys_total");
    for kind in OUTCOMES {
        f.sample(
            "ferry_deploys_total",
            &[("outcome", kind.as_str())],
            s.deploys.get(kind) as f64,
        );
    }
    family(&mut out, "ferry_reboot_required").sample("ferry_reboot_required", &[], flag(s.reboot_required));
    family(&mut out, "ferry_drift").sample("ferry_drift", &[], flag(s.drift));
    family(&mut out, "ferry_statuses_queued").sample("ferry_statuses_queued", &[], s.statuses_queued as f64);
    if let Some(n) = s.receipts_queued {
        family(&mut out, "ferry_receipts_queued").sample("ferry_receipts_queued", &[], n as f64);
    }
    if let Some(t) = s.rate_limited_until {
        family(&mut out, "ferry_forge_rate_limited_until_timestamp_seconds").sample(
            "ferry_forge_rate_limited_until_timestamp_seconds",
            &[],
            seconds(t),
        );
    }
    if let Some(t) = s.last_poll_success {
        family(&mut out, "ferry_last_poll_success_timestamp_seconds").sample(
            "ferry_last_poll_success_timestamp_seconds",
            &[],
            seconds(t),
        );
    }
    if let Some(n) = &s.newest_release {
        family(&mut out, "ferry_newest_release_serial").sample(
            "ferry_newest_release_serial",
            &[],
            n.serial as f64,
        );
        if let Some(expires) = n.expires {
            family(&mut out, "ferry_newest_release_expiry_timestamp_seconds").sample(
                "ferry_newest_release_expiry_timestamp_seconds",
                &[],
                seconds(expires),
            );
            family(&mut out, "ferry_newest_release_expiry_seconds").sample(
                "ferry_newest_release_expiry_seconds",
                &[],
                (expires - s.now).num_seconds() as f64,
            );
        }
    }
    out
}

/// Whether the host still has to reboot into the last release it deployed:
/// a switch that asked for a reboot (new kernel or initrd) or a `boot`
/// release, as long as the booted system is not that release's. A deploy
/// waiting for (or going through) its reboot under a reboot policy counts
/// too, for its own release.
pub fn reboot_required(state: &State, booted: Option<&StorePath>) -> bool {
    if let Some(flight) = &state.in_flight {
        use crate::state::Phase;
        if matches!(
            flight.phase,
            Phase::AwaitingReboot { .. } | Phase::Rebooting { .. }
        ) {
            return booted != Some(&flight.target.toplevel);
        }
    }
    let Some(success) = &state.last_success else {
        return false;
    };
    let waits = matches!(
        success.result,
        OutcomeKind::SuccessRebootRequired | OutcomeKind::Installed
    );
    waits && (booted.is_none() || booted != success.toplevel.as_ref())
}

// ---- the counters kept across restarts --------------------------------------

/// What the metrics keep in the state directory: the deploy counters, the
/// ending last counted, the last successful poll and the newest release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub deploys: Counts,
    /// The ending last counted (its release commit and time).
    counted: Option<(CommitId, DateTime<Utc>)>,
    pub last_poll_success: Option<DateTime<Utc>>,
    pub newest_release: Option<NewestRelease>,
}

impl Tally {
    /// Counts the state's last outcome unless it was already counted.
    /// Returns whether it was new.
    pub fn count(&mut self, state: &State) -> bool {
        let Some(last) = &state.last_outcome else {
            return false;
        };
        let key = (last.commit.clone(), last.at);
        if self.counted.as_ref() == Some(&key) {
            return false;
        }
        self.deploys.add(last.result);
        self.counted = Some(key);
        true
    }

    /// Remembers a verified release as the newest, if it is newer than the
    /// one remembered.
    pub fn saw_release(&mut self, release: NewestRelease) {
        if self
            .newest_release
            .as_ref()
            .is_none_or(|n| release.serial >= n.serial)
        {
            self.newest_release = Some(release);
        }
    }
}

/// Why `metrics.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is corrupt ({detail})")]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TallyFile {
    version: u32,
    /// Outcome name → count.
    deploys: BTreeMap<String, u64>,
    counted: Option<CountedFile>,
    last_poll_success: Option<DateTime<Utc>>,
    newest_release: Option<NewestReleaseFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountedFile {
    commit: String,
    at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewestReleaseFile {
    serial: u64,
    expires: Option<DateTime<Utc>>,
}

impl Tally {
    fn path(dir: &Path) -> PathBuf {
        dir.join(TALLY_FILE)
    }

    /// The tally in `dir`; empty when none was written yet.
    pub fn load(dir: &Path) -> Result<Self, TallyError> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(TallyError::Read { path, source }),
        };
        let corrupt = |detail: String| TallyError::Corrupt {
            path: path.clone(),
            detail,
        };
        let file: TallyFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != TALLY_VERSION {
            return Err(corrupt(format!(
                "version {} is not {TALLY_VERSION}, the one this agent writes",
                file.version
            )));
        }
        let mut deploys = Counts::default();
        for (name, n) in file.deploys {
            let kind = OUTCOMES
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| corrupt(format!("unknown outcome `{name}`")))?;
            deploys.0[index(kind)] = n;
        }
        let counted = file
            .counted
            .map(|c| Ok::<_, TallyError>((c.commit.parse().map_err(|e| corrupt(format!("{e}")))?, c.at)))
            .transpose()?;
        Ok(Self {
            deploys,
            counted,
            last_poll_success: file.last_poll_success,
            newest_release: file.newest_release.map(|n| NewestRelease {
                serial: n.serial,
                expires: n.expires,
            }),
        })
    }

    /// Replaces the tally in `dir` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let file = TallyFile {
            version: TALLY_VERSION,
            deploys: OUTCOMES
                .into_iter()
                .map(|k| (k.as_str().to_owned(), self.deploys.get(k)))
                .collect(),
            counted: self.counted.as_ref().map(|(commit, at)| CountedFile {
                commit: commit.to_string(),
                at: *at,
            }),
            last_poll_success: self.last_poll_success,
            newest_release: self.newest_release.as_ref().map(|n| NewestReleaseFile {
                serial: n.serial,
                expires: n.expires,
            }),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("tally serialises");
        atomic_write(&Self::path(dir), &bytes)
    }
}

// ---- effects: gathering, writing, serving -----------------------------------

/// The page the loopback endpoint serves: the last rendering.
pub type Page = Arc<Mutex<String>>;

/// The systems the store names at an update, for the drift gauge.
#[derive(Debug, Clone, Default)]
pub struct Systems {
    /// `/run/current-system`.
    pub running: Option<StorePath>,
    /// The system profile.
    pub profile: Option<StorePath>,
}

/// The agent's metrics: configuration, the counters as last loaded, and the
/// page shared with the endpoint.
#[derive(Debug)]
pub struct Metrics {
    config: MetricsConfig,
    /// Where the booted system is linked (`/run/booted-system`).
    booted_system: PathBuf,
    tally: Option<Tally>,
    /// A release verified since the last update.
    seen: Option<NewestRelease>,
    page: Page,
    /// Whether the host writes receipts (`report.receipts`).
    receipts: bool,
}

impl Metrics {
    pub fn new(config: MetricsConfig) -> Self {
        Self {
            config,
            booted_system: PathBuf::from(nix::BOOTED_SYSTEM),
            tally: None,
            seen: None,
            page: Page::default(),
            receipts: false,
        }
    }

    /// Counts the receipts waiting too, when the host writes them.
    pub fn with_receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
    }

    /// Reads the booted system from `link` instead (tests).
    pub fn with_booted_system(mut self, link: &Path) -> Self {
        self.booted_system = link.to_owned();
        self
    }

    /// The page the endpoint serves.
    pub fn page(&self) -> Page {
        self.page.clone()
    }

    /// Serves into `other`'s page from now on (a reloaded configuration
    /// keeps the endpoint that is already listening).
    pub fn share_page(&mut self, other: &Metrics) {
        self.page = other.page.clone();
    }

    /// Notes a verified release (the next update records it).
    pub fn saw_release(&mut self, serial: u64, expires: Option<DateTime<Utc>>) {
        self.seen = Some(NewestRelease { serial, expires });
    }

    /// Brings the metrics up to date with the state in `state_dir`:
    /// counts a new ending, notes a completed poll (`polled`), and writes
    /// the textfile and the endpoint's page. Does nothing when metrics are
    /// off. Failures are logged: metrics never stop a deploy.
    /// `running` and `profile` are the systems the store names now, `now`
    /// the reconcile clock's time.
    pub fn update(&mut self, state_dir: &StateDir, systems: Systems, polled: bool, now: DateTime<Utc>) {
        if !self.config.enabled() {
            return;
        }
        if let Err(e) = self.try_update(state_dir, systems, polled, now) {
            warn!("cannot update the metrics: {e:#}");
        }
    }

    fn try_update(
        &mut self,
        state_dir: &StateDir,
        systems: Systems,
        polled: bool,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let dir = state_dir.dir();
        let state = state_dir.load()?;
        let mut tally = match self.tally.take() {
            Some(t) => t,
            None => Tally::load(dir).unwrap_or_else(|e| {
                warn!("{e}; the deploy counters start again from zero");
                Tally::default()
            }),
        };
        tally.count(&state);
        if let Some(seen) = self.seen.take() {
            tally.saw_release(seen);
        }
        if polled {
            tally.last_poll_success = Some(now);
        }
        let saved = tally.save(dir);
        // Keep counting in memory even if the disk is full.
        self.tally = Some(tally.clone());
        saved.map_err(|e| anyhow::anyhow!("cannot write {}: {e}", Tally::path(dir).display()))?;

        let outbox = Outbox::open(dir)?;
        let queued = outbox.len()? + state.unsent.len();
        let rate_limited_until = outbox.limited_until().filter(|until| *until > now);
        let receipts_queued = match self.receipts {
            true => Some(crate::state::receipts::ReceiptQueue::open(dir)?.len()?),
            false => None,
        };
        let Systems { running, profile } = systems;
        let booted = nix::resolve_system(&self.booted_system);
        let snapshot = Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            running: state.last_success.as_ref().map(|o| RunningRelease {
                serial: o.serial,
                commit: o.commit.clone(),
                toplevel: o.toplevel.clone(),
            }),
            last_deploy: state.last_outcome.as_ref().map(|o| LastDeploy {
                outcome: o.result,
                serial: o.serial,
                at: o.at,
            }),
            deploys: tally.deploys.clone(),
            reboot_required: reboot_required(&state, booted.as_ref()),
            drift: crate::policy::drift::drift(&state, running.as_ref(), profile.as_ref()).is_some(),
            statuses_queued: queued,
            receipts_queued,
            rate_limited_until,
            last_poll_success: tally.last_poll_success,
            newest_release: tally.newest_release.clone(),
            now,
        };
        let text = render(&snapshot);
        *self.page.lock().unwrap_or_else(|p| p.into_inner()) = text.clone();
        if let Some(textfile_dir) = &self.config.textfile_dir {
            write_textfile(textfile_dir, &text)?;
        }
        Ok(())
    }
}

/// Writes `ferry_agent.prom` atomically, readable by node_exporter's user.
fn write_textfile(dir: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = dir.join(TEXTFILE);
    atomic_write_readable(&path, text.as_bytes()).with_context(|| {
        format!(
            "cannot write {} (metrics.textfile_dir must be an existing directory the agent may write)",
            path.display()
        )
    })
}

fn atomic_write_readable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::io::durable::atomic_write_mode(path, bytes, 0o644)
}

// ---- the loopback endpoint ---------------------------------------------------

/// What a scraper's request line asks for: the page, or only its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Get,
    Head,
}

/// Reads a request line (`GET /metrics HTTP/1.1`); the HTTP status to
/// answer otherwise. Pure, so it is tested (and fuzzed) without sockets.
pub fn request(line: &str) -> Result<Request, u16> {
    let line = crate::io::http_line::parse(line)?;
    if line.path != "/metrics" {
        return Err(404);
    }
    Ok(if line.head { Request::Head } else { Request::Get })
}

/// A listening endpoint; stops when dropped.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `page` at `http://<addr>/metrics` until the endpoint is dropped.
pub async fn serve(addr: SocketAddr, page: Page) -> anyhow::Result<Endpoint> {
    use anyhow::Context;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on metrics.listen = {addr}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    // A handful of scrapers at most; more wait for the kernel's backlog.
                    while connections.len() >= 16 {
                        connections.join_next().await;
                    }
                    let page = page.clone();
                    connections.spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &page)).await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(Endpoint { addr, task })
}

async fn answer(mut stream: TcpStream, page: &Page) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD_BYTES {
            return respond(&mut stream, 431, "text/plain", b"request head too large\n", false).await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim_end_matches('\r');
    match request(line) {
        Ok(req) => {
            let body = page.lock().unwrap_or_else(|p| p.into_inner()).clone();
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
                req == Request::Head,
            )
            .await
        }
        Err(code) => {
            respond(
                &mut stream,
                code,
                "text/plain",
                b"only GET /metrics is served\n",
                false,
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests;
