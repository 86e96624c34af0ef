//! Command line: `rrq worker run [--config PATH] [--queue NAME]... [--burst]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::orchestrator::RunOptions;

/// RRQ: a distributed job queue. This binary is the orchestrator.
#[derive(Debug, Parser)]
#[command(name = "rrq", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Worker (orchestrator) commands.
    Worker {
        /// Worker subcommand.
        #[command(subcommand)]
        command: WorkerCommand,
    },
}

/// `rrq worker ...`.
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Run the orchestrator: claim jobs and dispatch them to runners.
    Run(RunArgs),
}

/// `rrq worker run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file [default: $RRQ_CONFIG, else ./rrq.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Serve only this queue (repeatable); default: every known queue.
    #[arg(long = "queue", value_name = "NAME")]
    pub queues: Vec<String>,
    /// Exit 0 once no job is due or running in the served queues.
    #[arg(long)]
    pub burst: bool,
}

impl RunArgs {
    /// `--config`, else `RRQ_CONFIG`, else `./rrq.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| {
                std::env::var_os("RRQ_CONFIG")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("rrq.toml"))
    }

    /// Loads the configuration and applies `RRQ_REDIS_DSN`.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut cfg = Config::load(&self.config_path())?;
        if let Some(dsn) = std::env::var("RRQ_REDIS_DSN")
            .ok()
            .filter(|d| !d.is_empty())
        {
            cfg.redis_dsn = dsn;
        }
        Ok(cfg)
    }

    /// Options of the run.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            queues: self.queues.clone(),
            burst: self.burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_worker_run() {
        let cli = Cli::try_parse_from([
            "rrq", "worker", "run", "--config", "x.toml", "--queue", "a", "--queue", "b", "--burst",
        ])
        .unwrap();
        let Command::Worker {
            command: WorkerCommand::Run(args),
        } = cli.command;
        assert_eq!(args.config_path(), PathBuf::from("x.toml"));
        assert_eq!(args.queues, vec!["a", "b"]);
        assert!(args.burst);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
