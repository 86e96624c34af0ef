//! `rrq`: the orchestrator binary.

use std::process::ExitCode;

use clap::Parser as _;
use rrq::cli::{Cli, Command, WorkerCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    rrq::logging::init();
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
                    // The chain can quote job data (a job id in a store error).
                    eprintln!("rrq: {}", rrq::logging::escape(&format!("{e:#}")));
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
