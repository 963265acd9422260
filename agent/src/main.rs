//! `ferry-agent`: follow a signed deploy branch and switch this NixOS host to
//! it. Parses arguments, sets up logging and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_agent::app::lock::{self, AgentLock, LockError};
use ferry_agent::app::{daemon, logging, status};
use ferry_agent::config::{Config, DEFAULT_PATH};

#[derive(Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Follow a signed deploy branch and switch this NixOS host to it"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon: poll, deploy, report, forever.
    Run,
    /// Reconcile once; exit 0 when deployed or up to date, 1 when refused or failed,
    /// 75 when another ferry-agent runs on the same state directory, 143 when stopped
    /// (SIGTERM, SIGINT) before it ended (the next run resumes).
    Once,
    /// Show the running system, the last release and outcome, waiting statuses.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration and allowed_signers file, and exit.
    CheckConfig,
    /// (internal) Run by the switch unit's ExecStopPost: record its result.
    #[command(hide = true)]
    RecordSwitchResult { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::RecordSwitchResult { file } = &cli.command {
        return match ferry_agent::io::systemd::switch::record_switch_result(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let interactive = matches!(cli.command, Command::Status { .. } | Command::CheckConfig);
    if !interactive {
        logging::init();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    // Not waiting for git work still on a blocking thread (bounded by its
    // own deadline, but a stop must not wait for it): the process ends.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{}", ferry_agent::app::logging::error_chain(err.as_ref()));
            eprintln!(
                "ferry-agent: {}",
                ferry_agent::app::logging::error_chain(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::CheckConfig => {
            let config = Config::load(&cli.config)?;
            let signers = ferry_signer::AllowedSigners::load(&config.source.allowed_signers)?;
            if let Some(approvers) = &config.approvals.allowed_signers {
                ferry_signer::AllowedSigners::load(approvers).context("approvals.allowed_signers")?;
            }
            println!(
                "{}: ok: host {}, {} branch {}, {} allowed signer(s), {} substituter(s), forge {:?}",
                cli.config.display(),
                config.host,
                config.source.url,
                config.source.branch,
                signers.entries().len(),
                config.cache.substituters.len(),
                config
                    .report
                    .forge
                    .as_ref()
                    .map_or("None".into(), |t| format!("{:?}", t.forge))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = Config::load(&cli.config)?;
            let report = status::gather(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Once => {
            let config = Config::load(&cli.config)?;
            let _lock = match AgentLock::acquire(&config.state_dir) {
                Ok(lock) => lock,
                Err(e @ LockError::Held { .. }) => {
                    eprintln!("ferry-agent: {e}");
                    return Ok(ExitCode::from(lock::EXIT_LOCKED));
                }
                Err(e) => return Err(e.into()),
            };
            ferry_agent::io::git::source::set_libgit2_options(
                Duration::from_secs(10),
                Duration::from_secs(60),
            )?;
            let mut agent = ferry_agent::app::live::agent(config).context("cannot start")?;
            // Stopped (SIGTERM, SIGINT) in the middle, it ends at once: the
            // deploy's phase is on disk and the next run resumes it.
            let reconciled = tokio::select! {
                biased;
                _ = daemon::shutdown_signal() => {
                    eprintln!("ferry-agent: stopped; a deploy in flight resumes at the next run");
                    return Ok(ExitCode::from(EXIT_STOPPED));
                }
                reconciled = agent.reconcile() => reconciled,
            };
            status::note_pass(
                &agent.config.state_dir,
                reconciled
                    .as_ref()
                    .map_err(|e| ferry_agent::app::logging::error_chain(e)),
                chrono::Utc::now(),
            );
            let outcome = reconciled?;
            println!("{outcome}");
            Ok(if outcome.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Run => {
            ferry_agent::io::git::source::set_libgit2_options(
                Duration::from_secs(10),
                Duration::from_secs(60),
            )?;
            match daemon::run(cli.config, daemon::shutdown_signal()).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => match e.downcast_ref::<LockError>() {
                    Some(held @ LockError::Held { .. }) => {
                        tracing::error!("{held}");
                        eprintln!("ferry-agent: {held}");
                        Ok(ExitCode::from(lock::EXIT_LOCKED))
                    }
                    _ => Err(e),
                },
            }
        }
        Command::RecordSwitchResult { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// `once`'s exit code when stopped by a signal (128 + SIGTERM, as a shell reports it).
const EXIT_STOPPED: u8 = 143;
