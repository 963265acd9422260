//! `ferry-signer status`: one release across the fleet, read back from the
//! statuses the agents posted on the forge: per host its toplevel, state,
//! description and age, then a summary line; or all of it as JSON.

use anyhow::Result;
use chrono::{DateTime, Utc};
use ferry_signer::fleet::{self, Counts, HostView, Selection};
use ferry_signer::forge::{ForgeClient, ReadCost};
use ferry_signer::{git, CommitId, Release};

use super::{open_repo, ForgeArgs, HostArgs, RevArgs};

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

    /// One read of the forge: every selected host with what it reported.
    pub fn read(
        &self,
        client: &ForgeClient,
    ) -> Result<(Vec<HostView>, ReadCost), ferry_signer::forge::ForgeError> {
        let statuses = client.statuses(&self.commit)?;
        let settings = client.settings();
        let hosts = fleet::view(
            &self.release,
            &self.selection,
            |h| settings.context_for(h),
            &statuses.by_context,
        );
        Ok((hosts, statuses.cost))
    }
}

pub fn run(args: Args) -> Result<()> {
    let target = Target::load(&args.release, args.hosts)?;
    let client = args.forge.client()?;
    let (hosts, cost) = target.read(&client)?;
    let now = Utc::now();
    let counts = Counts::of(&hosts);
    if args.json {
        let json = StatusJson::new(&target, &hosts, counts, cost.requests, now);
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
            status.map_or("", |s| s.description.as_str()),
        );
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
}

#[derive(serde::Serialize)]
struct SummaryJson {
    hosts: usize,
    success: usize,
    pending: usize,
    failure: usize,
    not_reported: usize,
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
    fn new(target: &Target, hosts: &[HostView], c: Counts, requests: u32, now: DateTime<Utc>) -> Self {
        Self {
            commit: target.commit.to_string(),
            serial: target.release.serial,
            summary: SummaryJson {
                hosts: c.total(),
                success: c.success,
                pending: c.pending,
                failure: c.failure,
                not_reported: c.not_reported,
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
                        description: s.map(|s| s.description.clone()),
                        updated_at: s.and_then(|s| s.at).map(|t| t.to_rfc3339()),
                        age_seconds: s.and_then(|s| s.at).map(|t| (now - t).num_seconds().max(0)),
                    }
                })
                .collect(),
            requests,
        }
    }
}
