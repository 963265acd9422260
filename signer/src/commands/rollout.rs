//! `ferry-signer rollout`: roll a hosts file out wave by wave, as the plan
//! says. Each pass reads the deploy branch and the forge, asks
//! [`ferry_signer::rollout::next_step`] what to do, and does it: release a
//! wave (an ordinary signed release of that wave's hosts), wait, soak, stop.
//! Nothing is kept anywhere else, so a re-run resumes where a run stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use ferry_signer::fleet::HostOutcome;
use ferry_signer::forge::{ForgeClient, ForgeError, NewStatus, ReadCost, StatusState};
use ferry_signer::pace::{self, Told};
use ferry_signer::plan::{Plan, Wave, MAX_PLAN_BYTES};
use ferry_signer::publish::{self, ReleaseChanges};
use ferry_signer::rollout::{next_step, wave_entries, Step};
use ferry_signer::{git, hosts_file, CommitId, HostName};

use super::release::{expires_in, parse_source, push_branch};
use super::status::ReadError;
use super::{open_repo, FleetStatus, ForgeArgs, KeyArgs, Outcome, ReceiptArgs, ReceiptSource};

/// The context of the rollout's own status on the source commit.
pub const ROLLOUT_CONTEXT: &str = "ferry/rollout";

#[derive(clap::Args, Debug)]
#[command(after_help = super::EXIT_CODES)]
pub struct Args {
    /// The deploy repository (bare or not); its work tree is never touched.
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The deploy branch.
    #[arg(long, default_value = "deploy")]
    branch: String,
    /// The rollout plan (TOML, kept in the source repository): [[wave]] tables
    /// with name, hosts (or rest = true), max_failures, timeout, soak.
    #[arg(long, value_name = "FILE")]
    plan: PathBuf,
    /// Every host and the toplevel it should end up running, as for `release --hosts-file`.
    #[arg(long, value_name = "FILE.json")]
    hosts_file: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    /// The main-branch commit the systems were built from: recorded in each
    /// wave's release, and where the `ferry/rollout` status goes.
    #[arg(long, value_name = "SHA")]
    source: Option<String>,
    /// Agents refuse each wave's release after this long, e.g. 30d.
    #[arg(long, value_name = "DURATION")]
    expires_in: Option<humantime::Duration>,
    /// Fetch the branch from this remote first (a resumed run sees what
    /// earlier runs released), and push each wave's release to it.
    #[arg(long, value_name = "REMOTE")]
    push: Option<String>,
    /// Advance at most one wave and exit (for scheduled CI jobs): release the
    /// next wave if the previous one is healthy, else report and exit 0.
    #[arg(long)]
    once: bool,
    /// Time between reads of the forge while a wave deploys (longer when the token has few requests left).
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    interval: humantime::Duration,
    #[command(flatten)]
    forge: ForgeArgs,
    #[command(flatten)]
    receipts: ReceiptArgs,
}

fn read_plan(path: &Path) -> Result<Plan> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read --plan {}", path.display()))?
        .len();
    if len > MAX_PLAN_BYTES as u64 {
        bail!("--plan {} is larger than {MAX_PLAN_BYTES} bytes", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read --plan {}", path.display()))?;
    Plan::parse(&bytes).with_context(|| format!("--plan {}", path.display()))
}

pub fn run(args: Args) -> Result<Outcome> {
    let plan = read_plan(&args.plan)?;
    let target = hosts_file::read(&args.hosts_file).context("--hosts-file")?;
    let waves = plan
        .resolve(&target)
        .with_context(|| format!("--plan {}", args.plan.display()))?;
    let source = parse_source(args.source.as_deref())?;
    let expires_in = expires_in(args.expires_in)?;
    let interval: Duration = *args.interval;
    let client = args.forge.client()?;
    let receipts = args.receipts.source(&args.forge)?;
    let signer = args.key.signer()?;
    if let Some(remote) = &args.push {
        fetch_branch(&args.repo, remote, &args.branch)?;
    }
    let repository = open_repo(&args.repo)?;
    let mut rollout = Rollout {
        client: &client,
        receipts: receipts.as_ref(),
        fleet_status: FleetStatus::default(),
        source: source.as_ref(),
        waves: &waves,
        shown: None,
        unreachable_since: None,
        limited_since: None,
        told: Told::default(),
    };
    let mut released_this_run = false;
    loop {
        // Hosts report on the release, not on approvals above it.
        let tip_oid = git::branch_tip(&repository, &args.branch)?
            .map(|t| ferry_signer::approvals::chain(&repository, t).map(|c| c.release))
            .transpose()?;
        let tip = tip_oid.map(|o| git::read_release(&repository, o)).transpose()?;
        let mut every = interval;
        let outcomes = match tip_oid {
            None => HashMap::new(),
            Some(oid) => match rollout.outcomes(&oid.to_string().parse()?, &target) {
                Ok((o, cost)) => {
                    every = rollout.pace(interval, &cost);
                    o
                }
                // Asked to wait: the forge is there, so this is no outage;
                // the waves' own timeouts still apply once it answers.
                Err(ReadError::Forge(e @ ForgeError::RateLimited { until, .. })) => {
                    if rollout.limited_for() > longest_timeout(&waves) {
                        println!(
                            "timed out: the forge kept limiting the rate of requests for longer than the \
                             longest wave's timeout: {e}"
                        );
                        return Ok(Outcome::TimedOut);
                    }
                    println!("{e}");
                    std::thread::sleep(super::rate_limit_pause(until).max(interval));
                    continue;
                }
                Err(e) if e.is_transient() => {
                    if rollout.unreachable_for() > longest_timeout(&waves) {
                        println!("stopped: the forge stayed unreachable: {e}");
                        return Ok(Outcome::Unreachable);
                    }
                    println!("{e}; trying again");
                    std::thread::sleep(interval);
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        let step = next_step(&waves, &target, tip.as_ref(), &outcomes, Utc::now());
        rollout.tell(&step)?;
        if let (Some(oid), Some(tip)) = (tip_oid, &tip) {
            rollout.tell_fleet(&oid.to_string().parse()?, tip, &target, &outcomes, &step)?;
        }
        match step {
            // --once: one wave released this run is enough.
            Step::Release { .. } if released_this_run => return Ok(Outcome::Done),
            Step::Release { wave } => {
                let w = &waves[wave];
                let changes = ReleaseChanges {
                    hosts: wave_entries(w, &target),
                    replace_hosts: false,
                    source: source.clone(),
                    expires_in,
                };
                let message = format!(
                    "rollout wave {} of {} ({}): {} host(s)",
                    wave + 1,
                    waves.len(),
                    w.name,
                    changes.hosts.len()
                );
                let published = publish::publish(
                    &repository,
                    &args.branch,
                    signer.as_ref(),
                    &changes,
                    Some(&message),
                    Utc::now(),
                )?;
                if let Some(remote) = &args.push {
                    push_branch(&args.repo, remote, &args.branch, published.commit)?;
                }
                println!("released {message}: {}", published.commit);
                // One more pass tells the forge where the new wave stands.
                released_this_run = args.once;
            }
            Step::Wait { .. } | Step::Soak { .. } if args.once => return Ok(Outcome::Done),
            Step::Wait { deadline: until, .. } | Step::Soak { until, .. } => {
                // Wake at the deadline or the soak's end, if sooner.
                let left = (until - Utc::now()).to_std().unwrap_or_default();
                std::thread::sleep(every.min(left).max(Duration::from_millis(50)));
            }
            Step::Done { .. } => return Ok(Outcome::Done),
            Step::Failed { wave, failed, .. } => {
                println!(
                    "stopped: wave {} ({}) failed on {}; later waves were not released. \
                     Fix and roll out a new build, or roll back with a release naming the previous toplevels",
                    wave + 1,
                    waves[wave].name,
                    join(&failed)
                );
                return Ok(Outcome::Failed);
            }
            Step::TimedOut { wave, waiting, .. } => {
                println!(
                    "stopped: wave {} ({}) did not finish within {}: still waiting for {}; later waves were not released",
                    wave + 1,
                    waves[wave].name,
                    humantime::format_duration(waves[wave].timeout),
                    join(&waiting)
                );
                return Ok(Outcome::TimedOut);
            }
        }
    }
}

fn join(hosts: &[HostName]) -> String {
    let mut s: Vec<&str> = hosts.iter().take(20).map(HostName::as_str).collect();
    if hosts.len() > 20 {
        s.push("…");
    }
    s.join(" ")
}

/// The effects of a rollout pass: reading statuses, telling people.
/// How long the forge may stay unusable (unreachable, or rate-limiting
/// every read) before a rollout gives up: the longest wave's timeout.
fn longest_timeout(waves: &[Wave]) -> Duration {
    waves.iter().map(|w| w.timeout).max().unwrap_or_default()
}

struct Rollout<'a> {
    client: &'a ForgeClient,
    /// The hosts' receipts, when they write them.
    receipts: Option<&'a ReceiptSource>,
    /// The fleet's aggregated status, with receipts.
    fleet_status: FleetStatus,
    source: Option<&'a CommitId>,
    waves: &'a [Wave],
    /// The last summary shown and posted.
    shown: Option<(StatusState, String)>,
    unreachable_since: Option<Instant>,
    /// Since when the forge has been rate-limiting every read.
    limited_since: Option<Instant>,
    /// The pace last told.
    told: Told,
}

impl Rollout<'_> {
    /// What every host of the rollout reported on `commit`.
    fn outcomes(
        &mut self,
        commit: &CommitId,
        target: &std::collections::BTreeMap<HostName, ferry_signer::HostEntry>,
    ) -> Result<(HashMap<HostName, HostOutcome>, ReadCost), ReadError> {
        let read = self
            .client
            .statuses(commit)
            .map_err(ReadError::from)
            .and_then(|statuses| {
                let found = match self.receipts {
                    Some(source) => Some(source.reader.read(commit, &source.keys)?),
                    None => None,
                };
                Ok((statuses, found))
            });
        let (statuses, found) = match read {
            Ok(s) => {
                self.unreachable_since = None;
                self.limited_since = None;
                s
            }
            Err(e) => {
                match e.rate_limited_until() {
                    Some(_) => self.limited_since.get_or_insert_with(Instant::now),
                    None => self.unreachable_since.get_or_insert_with(Instant::now),
                };
                return Err(e);
            }
        };
        let verdicts = found.as_ref().map(|f| &f.by_host);
        if let Some(f) = &found {
            let outside: Vec<&str> = f
                .by_host
                .keys()
                .filter(|h| !target.contains_key(*h))
                .map(HostName::as_str)
                .collect();
            if !outside.is_empty() {
                println!(
                    "warning: receipts of host(s) not in the rollout, not counted: {}",
                    outside.join(" ")
                );
            }
        }
        let settings = self.client.settings();
        let outcomes = target
            .keys()
            .map(|h| {
                let on_receipts = self.receipts.is_some_and(|r| !r.keys.of(h).is_empty());
                let outcome = ferry_signer::fleet::outcome(
                    statuses.by_context.get(&settings.context_for(h)),
                    verdicts.and_then(|v| v.get(h)),
                    on_receipts,
                );
                (h.clone(), outcome)
            })
            .collect();
        Ok((outcomes, statuses.cost))
    }

    /// With receipts, posts the fleet's aggregated status (`ferry/fleet`)
    /// on the tip release and its source when its state changes: the hosts
    /// the tip names, judged as `step` judged them.
    fn tell_fleet(
        &mut self,
        commit: &CommitId,
        tip: &ferry_signer::Release,
        target: &std::collections::BTreeMap<HostName, ferry_signer::HostEntry>,
        outcomes: &HashMap<HostName, HostOutcome>,
        step: &Step,
    ) -> Result<()> {
        if self.receipts.is_none() {
            return Ok(());
        }
        let views: Vec<ferry_signer::fleet::HostView> = tip
            .hosts
            .iter()
            .filter(|(h, _)| target.contains_key(*h))
            .map(|(h, entry)| ferry_signer::fleet::HostView {
                host: h.clone(),
                entry: entry.clone(),
                outcome: outcomes.get(h).cloned().unwrap_or(HostOutcome::NotReported),
            })
            .collect();
        let (_, text) = ferry_signer::fleet::aggregate(&views, tip.serial, usize::MAX);
        self.fleet_status.post(
            self.client,
            commit,
            tip.source.as_ref(),
            (step.fleet_state(), text),
        )
    }

    /// The time until the next read after one that cost `cost`: `asked`,
    /// or slower to fit the token's budget, said when that changes.
    fn pace(&mut self, asked: Duration, cost: &ReadCost) -> Duration {
        let pace = pace::pace(asked, cost, Utc::now());
        if let Some(news) = self.told.news(&pace) {
            println!("{news}");
        }
        pace.interval()
    }

    fn unreachable_for(&self) -> Duration {
        self.unreachable_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn limited_for(&self) -> Duration {
        self.limited_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Prints the step and posts it as `ferry/rollout` on the source commit,
    /// when it changed.
    fn tell(&mut self, step: &Step) -> Result<()> {
        let summary = step.summary(self.waves);
        if self.shown.as_ref() == Some(&summary) {
            return Ok(());
        }
        println!("[{}] {}", Utc::now().format("%H:%M:%S"), summary.1);
        if let Some(source) = self.source {
            let status = NewStatus::new(source.clone(), summary.0, ROLLOUT_CONTEXT, &summary.1);
            match self.client.post(&status) {
                Ok(()) => {}
                // The rollout goes on; the status is posted with the next change.
                Err(e) if e.is_transient() => println!("cannot post {ROLLOUT_CONTEXT}: {e}"),
                Err(e) => return Err(e).context(format!("posting {ROLLOUT_CONTEXT} on {source}")),
            }
        }
        self.shown = Some(summary);
        Ok(())
    }
}

/// Makes the local branch the remote's, so a resumed run starts from what
/// the agents see (a release made locally but never pushed was never seen).
fn fetch_branch(repo: &Path, remote: &str, branch: &str) -> Result<()> {
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["fetch", "--quiet", "--update-head-ok", remote, &refspec])
        .output()
        .context("cannot run git to fetch")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A remote without the branch yet: the first wave creates it.
        if stderr.contains("couldn't find remote ref") {
            return Ok(());
        }
        bail!("`git fetch {remote} {refspec}` failed: {}", stderr.trim());
    }
    Ok(())
}
