//! `rrq`: the orchestrator binary.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use rrq::cli::{Cli, Command, WorkerCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check(args) => rrq::commands::check(&args),
        Command::Dlq { command } => rrq::commands::dlq(&command),
        Command::Worker {
            command: WorkerCommand::Run(args),
        } => {
            // Config errors are the user's to fix: report them plainly, exit 2.
            let cfg = match args.load_config() {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("rrq: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = run(cfg, args.options());
            // Queued log lines reach stderr unless nobody reads it.
            rrq::output::flush(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rrq: {e:#}");
                    let code = e
                        .downcast_ref::<rrq::Error>()
                        .map_or(1, rrq::Error::exit_code);
                    ExitCode::from(code)
                }
            }
        }
    }
}

fn run(cfg: rrq::config::Config, opts: rrq::orchestrator::RunOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(rrq::orchestrator::run(cfg, opts))?;
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Lossy and non-blocking: stderr may be a pipe nobody reads, and a
        // blocked write must never stop the runtime (see `rrq::output`).
        .with_writer(rrq::output::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
