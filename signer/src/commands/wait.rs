//! `ferry-signer wait`: block until the selected hosts report success on a
//! release, for CI. Stops early when more hosts failed than allowed, and at
//! the timeout; prints a line per change (or a live bar on a terminal).

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_signer::fleet::{judge, Counts, HostOutcome, HostView, Progress};
use ferry_signer::forge::{ForgeClient, ForgeError};
use ferry_signer::pace::{pace, Pace, Told};
use ferry_signer::receipt_bucket::BucketError;
use ferry_signer::HostName;

use super::status::{ReadError, Target};
use super::{FleetStatus, ForgeArgs, HostArgs, Outcome, ReceiptArgs, ReceiptSource, RevArgs};

#[derive(clap::Args, Debug)]
#[command(after_help = super::EXIT_CODES)]
pub struct Args {
    // The release, resolved once at the start.
    #[command(flatten)]
    release: RevArgs,
    #[command(flatten)]
    hosts: HostArgs,
    /// How many hosts may fail before the wait fails (exit 3).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_failures: usize,
    /// Give up after this long (exit 4; exit 5 when the forge was unreachable).
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    timeout: humantime::Duration,
    /// Time between reads of the forge (longer when the token has few requests left).
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    interval: humantime::Duration,
    #[command(flatten)]
    forge: ForgeArgs,
    #[command(flatten)]
    receipts: ReceiptArgs,
}

pub fn run(args: Args) -> Result<Outcome> {
    let target = Target::load(&args.release, args.hosts)?;
    let client = args.forge.client()?;
    let receipts = args.receipts.source(&args.forge)?;
    eprintln!(
        "waiting for release {} ({}) on {} host(s), at most {} failure(s), for {}",
        target.release.serial,
        target.commit,
        target
            .release
            .hosts
            .keys()
            .filter(|h| target.selection.selects(h))
            .count(),
        args.max_failures,
        args.timeout
    );
    let mut waiter = Waiter::new(std::io::stdout().is_terminal());
    let deadline = Instant::now() + *args.timeout;
    wait_until(
        &target,
        &client,
        receipts.as_ref(),
        args.max_failures,
        deadline,
        *args.interval,
        &mut waiter,
    )
}

/// Polls until the hosts are done, fail, or the deadline passes: every
/// `interval`, or slower when the forge's budget for the token asks it
/// (see `ferry_signer::pace`). With receipts, each read verifies them, and
/// the hosts' aggregated status (`ferry/fleet`) is posted when it changes.
pub fn wait_until(
    target: &Target,
    client: &ForgeClient,
    receipts: Option<&ReceiptSource>,
    max_failures: usize,
    deadline: Instant,
    interval: Duration,
    waiter: &mut Waiter,
) -> Result<Outcome> {
    let mut fleet_status = FleetStatus::default();
    loop {
        let mut next = interval;
        match target.read(client, receipts) {
            Ok((hosts, cost, read)) => {
                let pace = pace(interval, &cost, chrono::Utc::now());
                waiter.pace(&pace);
                next = pace.interval();
                let progress = judge(&hosts, max_failures);
                if let Some(read) = &read {
                    if let Some(warning) = read.warning() {
                        waiter.warn(&warning);
                    }
                    let aggregate =
                        ferry_signer::fleet::aggregate(&hosts, target.release.serial, max_failures);
                    fleet_status.post(client, &target.commit, target.release.source.as_ref(), aggregate)?;
                }
                waiter.show(&hosts, &progress);
                match progress {
                    Progress::Done(counts) => {
                        waiter.finish();
                        println!("done: {counts}");
                        return Ok(Outcome::Done);
                    }
                    Progress::TooManyFailures { counts, failed } => {
                        waiter.finish();
                        println!(
                            "failed: {} host(s) failed, more than the {max_failures} allowed: {}",
                            failed.len(),
                            names(&failed)
                        );
                        println!("{counts}");
                        return Ok(Outcome::Failed);
                    }
                    Progress::Waiting(counts) if Instant::now() >= deadline => {
                        waiter.finish();
                        let waiting: Vec<HostName> = hosts
                            .iter()
                            .filter(|h| {
                                matches!(h.outcome, HostOutcome::Pending(_) | HostOutcome::NotReported)
                            })
                            .map(|h| h.host.clone())
                            .collect();
                        println!("timed out: still waiting for {}", names(&waiting));
                        println!("{counts}");
                        return Ok(Outcome::TimedOut);
                    }
                    Progress::Waiting(_) => {}
                }
            }
            Err(e) if e.is_transient() => {
                waiter.unreachable(&e);
                if Instant::now() >= deadline {
                    waiter.finish();
                    if e.rate_limited_until().is_some() {
                        // Reachable, and asked to wait: a timeout, not an outage.
                        println!("timed out: {e}");
                        return Ok(Outcome::TimedOut);
                    }
                    let what = match e {
                        ReadError::Forge(_) => "the forge",
                        ReadError::Bucket(_) => "the receipts' bucket",
                    };
                    println!("timed out: {what} is unreachable: {e}");
                    return Ok(Outcome::Unreachable);
                }
                if let Some(until) = e.rate_limited_until() {
                    next = super::rate_limit_pause(until).max(interval);
                }
            }
            Err(e) => {
                waiter.finish();
                return Err(e.into());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(next.min(left).max(Duration::from_millis(50)));
    }
}

/// Up to 20 host names, then a count.
fn names(hosts: &[HostName]) -> String {
    let mut shown: Vec<&str> = hosts.iter().take(20).map(HostName::as_str).collect();
    if hosts.len() > 20 {
        let more = format!("… and {} more", hosts.len() - 20);
        return format!("{} {more}", shown.join(" "));
    }
    if shown.is_empty() {
        shown.push("(none)");
    }
    shown.join(" ")
}

/// Progress output: a plain line per change (CI logs), or a live bar redrawn
/// in place on a terminal. Newly failed hosts always get a line of their own.
#[derive(Debug)]
pub struct Waiter {
    live: bool,
    started: Instant,
    last: Option<Counts>,
    failed: BTreeSet<HostName>,
    unreachable: Option<String>,
    /// The last warning told.
    warned: Option<String>,
    /// The pace last told.
    told: Told,
    drawn: bool,
}

impl Waiter {
    pub fn new(live: bool) -> Self {
        Self {
            live,
            started: Instant::now(),
            last: None,
            failed: BTreeSet::new(),
            unreachable: None,
            warned: None,
            told: Told::default(),
            drawn: false,
        }
    }

    fn elapsed(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("{:02}:{:02}", s / 60, s % 60)
    }

    fn line(&mut self, text: &str) {
        self.clear();
        println!("[{}] {text}", self.elapsed());
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut out = std::io::stdout();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
            self.drawn = false;
        }
    }

    pub fn show(&mut self, hosts: &[HostView], progress: &Progress) {
        if self.unreachable.take().is_some() {
            self.line("the forge answers again");
        }
        for h in hosts {
            if h.outcome.is_failure() && self.failed.insert(h.host.clone()) {
                let why = h.outcome.description().unwrap_or_default();
                self.line(&format!("{} failed: {why}", h.host));
            }
        }
        let counts = match progress {
            Progress::Done(c) | Progress::Waiting(c) => *c,
            Progress::TooManyFailures { counts, .. } => *counts,
        };
        if self.live {
            self.draw(counts);
        } else if self.last != Some(counts) {
            self.line(&counts.to_string());
        }
        self.last = Some(counts);
    }

    fn draw(&mut self, c: Counts) {
        const WIDTH: usize = 30;
        let total = c.total().max(1);
        let done = c.success * WIDTH / total;
        let bad = (c.failure * WIDTH / total).min(WIDTH - done);
        let bar = format!(
            "{}{}{}",
            "#".repeat(done),
            "x".repeat(bad),
            "-".repeat(WIDTH - done - bad)
        );
        let mut out = std::io::stdout();
        let _ = write!(
            out,
            "\r\x1b[2K[{bar}] {}/{} success, {} pending, {} failure, {} not reported  {}",
            c.success,
            c.total(),
            c.pending,
            c.failure,
            c.not_reported,
            self.elapsed()
        );
        let _ = out.flush();
        self.drawn = true;
    }

    pub fn unreachable(&mut self, e: &ReadError) {
        let text = e.to_string();
        if self.unreachable.as_deref() != Some(&text) {
            match e {
                // Says itself that it waits, and until when.
                ReadError::Forge(ForgeError::RateLimited { .. }) => self.line(&text),
                // Says itself that it is tried again.
                ReadError::Bucket(BucketError::Transient { .. }) => self.line(&text),
                _ => self.line(&format!("{text}; trying again")),
            }
            self.unreachable = Some(text);
        }
    }

    /// Tells something found and not counted, once while it stays the same.
    pub fn warn(&mut self, warning: &str) {
        if self.warned.as_deref() != Some(warning) {
            self.line(&format!("warning: {warning}"));
            self.warned = Some(warning.to_owned());
        }
    }

    /// Says when the reads slow down to fit the token's budget, and when
    /// they are back to the asked pace.
    pub fn pace(&mut self, pace: &Pace) {
        if let Some(news) = self.told.news(pace) {
            self.line(&news.to_string());
        }
    }

    pub fn finish(&mut self) {
        if self.drawn {
            println!();
            self.drawn = false;
        }
    }
}
