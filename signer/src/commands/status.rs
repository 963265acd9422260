//! `ferry-signer status`: one release across the fleet, read back from the
//! statuses the agents posted on the forge and, with receipts, from the
//! signed receipts they wrote to the bucket (each verified; a forged one
//! shown as forged): per host its toplevel, state, description and age,
//! then a summary line; or all of it as JSON.

use anyhow::Result;
use chrono::{DateTime, Utc};
use ferry_signer::fleet::{self, Counts, HostView, Selection};
use ferry_signer::forge::{ForgeClient, ForgeError, ReadCost};
use ferry_signer::receipt_bucket::BucketError;
use ferry_signer::{git, CommitId, HostName, Release};

use super::{open_repo, ForgeArgs, HostArgs, ReceiptArgs, ReceiptSource, RevArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    release: RevArgs,
    #[command(flatten)]
    hosts: HostArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    forge: ForgeArgs,
    #[command(flatten)]
    receipts: ReceiptArgs,
}

/// Why a read of the fleet failed: the forge's or the bucket's fault.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Forge(#[from] ForgeError),
    #[error(transparent)]
    Bucket(#[from] BucketError),
}

impl ReadError {
    /// Whether a later read may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Forge(e) => e.is_transient(),
            Self::Bucket(e) => e.is_transient(),
        }
    }

    /// Until when the forge asked to be left alone, if it did.
    pub fn rate_limited_until(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Forge(e) => e.rate_limited_until(),
            Self::Bucket(_) => None,
        }
    }
}

/// What one read of the bucket found beside the hosts' outcomes.
#[derive(Debug, Clone, Default)]
pub struct ReceiptsRead {
    /// Requests made to the bucket.
    pub requests: u32,
    /// Hosts with a receipt under the release that the release does not
    /// name: never counted.
    pub outside: Vec<HostName>,
    /// Keys under the release that name no host.
    pub strays: Vec<String>,
}

impl ReceiptsRead {
    /// A line for what was found and not counted, if anything was.
    pub fn warning(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.outside.is_empty() {
            let names: Vec<&str> = self.outside.iter().take(20).map(HostName::as_str).collect();
            parts.push(format!(
                "receipts of {} host(s) not in the release, not counted: {}{}",
                self.outside.len(),
                names.join(" "),
                if self.outside.len() > 20 { " …" } else { "" }
            ));
        }
        if !self.strays.is_empty() {
            parts.push(format!(
                "{} key(s) under the release that name no host, ignored (e.g. {})",
                self.strays.len(),
                self.strays[0]
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A release and the hosts a command looks at.
pub struct Target {
    pub commit: CommitId,
    pub release: Release,
    pub selection: Selection,
}

impl Target {
    /// Resolves `rev` in `repo` once: later polls look at the same commit.
    pub fn load(release: &RevArgs, hosts: HostArgs) -> Result<Self> {
        let repository = open_repo(&release.repo)?;
        // Hosts report on the release, not on the approvals above it.
        let tip = git::resolve_commit(&repository, &release.rev)?;
        let oid = ferry_signer::approvals::chain(&repository, tip)?.release;
        let release = git::read_release(&repository, oid)?;
        let selection = Selection::new(hosts.hosts)?;
        selection.check(&release.hosts)?;
        Ok(Self {
            commit: oid.to_string().parse()?,
            release,
            selection,
        })
    }

    /// One read of the forge (and of the bucket, with receipts): every
    /// selected host with what it reported.
    pub fn read(
        &self,
        client: &ForgeClient,
        receipts: Option<&ReceiptSource>,
    ) -> Result<(Vec<HostView>, ReadCost, Option<ReceiptsRead>), ReadError> {
        let statuses = client.statuses(&self.commit)?;
        let (verdicts, read) = match receipts {
            None => (Default::default(), None),
            Some(source) => {
                let found = source.reader.read(&self.commit, &source.keys)?;
                let outside = found
                    .by_host
                    .keys()
                    .filter(|h| !self.release.hosts.contains_key(*h))
                    .cloned()
                    .collect();
                let read = ReceiptsRead {
                    requests: found.requests,
                    outside,
                    strays: found.strays,
                };
                (found.by_host, Some(read))
            }
        };
        let settings = client.settings();
        let on_receipts = |h: &HostName| receipts.is_some_and(|r| !r.keys.of(h).is_empty());
        let hosts = fleet::view(
            &self.release,
            &self.selection,
            |h| settings.context_for(h),
            &statuses.by_context,
            &verdicts,
            &on_receipts,
        );
        Ok((hosts, statuses.cost, read))
    }
}

pub fn run(args: Args) -> Result<()> {
    let target = Target::load(&args.release, args.hosts)?;
    let client = args.forge.client()?;
    let receipts = args.receipts.source(&args.forge)?;
    let (hosts, cost, read) = target.read(&client, receipts.as_ref())?;
    let now = Utc::now();
    let counts = Counts::of(&hosts);
    if args.json {
        let json = StatusJson::new(&target, &hosts, counts, cost.requests, read.as_ref(), now);
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "release {} ({}), {} host(s) selected",
        target.release.serial,
        target.commit,
        hosts.len()
    );
    // The toplevel as `<first 12 of the hash>…-<name>`: enough to tell
    // systems apart on a screen; --json has the full path.
    let short = |h: &HostView| {
        let t = &h.entry.toplevel;
        format!("{}…-{}", &t.hash_part()[..12], t.name())
    };
    let width = hosts
        .iter()
        .map(|h| h.host.as_str().len())
        .max()
        .unwrap_or(4)
        .max(4);
    let top_width = hosts
        .iter()
        .map(|h| short(h).chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "{:width$}  {:12}  {:>5}  {:top_width$}  DESCRIPTION",
        "HOST", "STATE", "AGE", "TOPLEVEL"
    );
    for h in &hosts {
        let status = h.outcome.status();
        println!(
            "{:width$}  {:12}  {:>5}  {:top_width$}  {}",
            h.host.as_str(),
            h.outcome.label(),
            status.and_then(|s| s.at).map_or("-".into(), |at| age(at, now)),
            short(h),
            h.outcome.description().unwrap_or_default(),
        );
    }
    if let Some(warning) = read.as_ref().and_then(ReceiptsRead::warning) {
        println!("warning: {warning}");
    }
    println!("{counts}");
    Ok(())
}

/// A short age: `42s`, `5m`, `3h`, `2d`.
pub fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - at).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `status --json`: a wire format of its own.
#[derive(serde::Serialize)]
struct StatusJson {
    commit: String,
    serial: u64,
    summary: SummaryJson,
    hosts: Vec<HostJson>,
    /// Forge API requests made to read the statuses.
    requests: u32,
    /// With receipts: what the bucket read cost and found uncounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    receipts: Option<ReceiptsJson>,
}

#[derive(serde::Serialize)]
struct ReceiptsJson {
    requests: u32,
    not_in_release: Vec<String>,
    strays: Vec<String>,
}

#[derive(serde::Serialize)]
struct SummaryJson {
    hosts: usize,
    success: usize,
    pending: usize,
    failure: usize,
    not_reported: usize,
    /// Only with forged receipts: the wire format without them is unchanged.
    #[serde(skip_serializing_if = "is_zero")]
    forged: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(serde::Serialize)]
struct HostJson {
    host: String,
    toplevel: String,
    action: &'static str,
    state: &'static str,
    description: Option<String>,
    updated_at: Option<String>,
    age_seconds: Option<i64>,
}

impl StatusJson {
    fn new(
        target: &Target,
        hosts: &[HostView],
        c: Counts,
        requests: u32,
        receipts: Option<&ReceiptsRead>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            commit: target.commit.to_string(),
            serial: target.release.serial,
            summary: SummaryJson {
                hosts: c.total(),
                success: c.success,
                pending: c.pending,
                failure: c.failure,
                not_reported: c.not_reported,
                forged: c.forged,
            },
            hosts: hosts
                .iter()
                .map(|h| {
                    let s = h.outcome.status();
                    HostJson {
                        host: h.host.to_string(),
                        toplevel: h.entry.toplevel.to_string(),
                        action: h.entry.action.as_str(),
                        state: match h.outcome.label() {
                            "not reported" => "not_reported",
                            other => other,
                        },
                        description: h.outcome.description(),
                        updated_at: s.and_then(|s| s.at).map(|t| t.to_rfc3339()),
                        age_seconds: s.and_then(|s| s.at).map(|t| (now - t).num_seconds().max(0)),
                    }
                })
                .collect(),
            requests,
            receipts: receipts.map(|r| ReceiptsJson {
                requests: r.requests,
                not_in_release: r.outside.iter().map(ToString::to_string).collect(),
                strays: r.strays.clone(),
            }),
        }
    }
}
