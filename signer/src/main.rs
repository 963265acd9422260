//! `ferry-signer`: make, verify and inspect Ferry releases, and follow them
//! across the fleet. A thin dispatcher: parse arguments, run the command's
//! module (`commands/`), map its outcome to an exit code.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::Outcome;

#[derive(Parser)]
#[command(
    name = "ferry-signer",
    version,
    about = "Make, verify and inspect signed Ferry releases, and follow them across the fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a release signing key (ed25519), encrypted with age.
    Keygen(commands::keygen::Args),
    /// Create, sign and record the next release on the deploy branch.
    Release(commands::release::Args),
    /// Approve the release at the deploy branch's tip (the two-person rule): show it, ask, sign, push.
    Approve(commands::approve::Args),
    /// Verify a release: signature, signer in allowed_signers, release.toml, expiry, approvals.
    Verify(commands::verify::Args),
    /// Print a release (without verifying it).
    Show(commands::show::Args),
    /// Show a release across the fleet: what each host reported to the forge.
    Status(commands::status::Args),
    /// Wait until the hosts of a release report success (for CI).
    Wait(commands::wait::Args),
    /// Roll a hosts file out in waves, as a plan says: release, wait, soak, next.
    Rollout(commands::rollout::Args),
    /// Write the deploy branch as a static mirror for web servers, buckets and CDNs (agents poll it cheaply).
    Mirror(commands::mirror::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = |r: anyhow::Result<()>| r.map(|()| Outcome::Done);
    let result = match cli.command {
        Command::Keygen(args) => done(commands::keygen::run(args)),
        Command::Release(args) => done(commands::release::run(args)),
        Command::Approve(args) => done(commands::approve::run(args)),
        Command::Verify(args) => done(commands::verify::run(args)),
        Command::Show(args) => done(commands::show::run(args)),
        Command::Status(args) => done(commands::status::run(args)),
        Command::Wait(args) => commands::wait::run(args),
        Command::Rollout(args) => commands::rollout::run(args),
        Command::Mirror(args) => done(commands::mirror::run(args)),
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => {
            commands::report_error(&err);
            ExitCode::FAILURE
        }
    }
}
