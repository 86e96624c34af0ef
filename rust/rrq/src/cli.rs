//! Command line:
//!
//! ```text
//! rrq worker run [--config PATH] [--queue NAME]... [--burst]
//! rrq check [--config PATH] [--json]
//! rrq dlq list [--config PATH] [--queue Q]... [--limit N] [--json]
//! rrq dlq inspect [--config PATH] JOB_ID [--json]
//! rrq dlq requeue [--config PATH] [--queue Q]... (JOB_ID... | --all)
//! rrq dlq purge [--config PATH] [--queue Q]... (JOB_ID... | --all)
//! ```

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
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
    /// Health check: exit 0 when at least one orchestrator is alive and
    /// serving, 1 when none is, 2 on a configuration error, 3 when Redis is
    /// unreachable.
    Check(CheckArgs),
    /// Dead-letter queue commands.
    Dlq {
        /// DLQ subcommand.
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// `rrq worker ...`.
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Run the orchestrator: claim jobs and dispatch them to runners.
    Run(RunArgs),
}

/// `--config` of every command.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Configuration file [default: $RRQ_CONFIG, else ./rrq.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
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

/// `rrq check` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `rrq dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered jobs (oldest first).
    List(DlqListArgs),
    /// Show one job's full record, with params and error history.
    Inspect(DlqInspectArgs),
    /// Move dead-lettered jobs back to their queue with a fresh attempt budget.
    Requeue(DlqTargetArgs),
    /// Delete dead-lettered jobs.
    Purge(DlqTargetArgs),
}

/// `rrq dlq list` arguments.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this queue (repeatable); default: every queue in rrq:queues.
    #[arg(long = "queue", value_name = "Q")]
    pub queues: Vec<String>,
    /// Most jobs listed.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `rrq dlq inspect` arguments.
#[derive(Debug, Args)]
pub struct DlqInspectArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Job id.
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `rrq dlq requeue|purge` arguments: some ids, or `--all`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["job_ids", "all"])))]
pub struct DlqTargetArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this queue (repeatable); default: every queue in rrq:queues.
    #[arg(long = "queue", value_name = "Q")]
    pub queues: Vec<String>,
    /// Job ids.
    #[arg(value_name = "JOB_ID")]
    pub job_ids: Vec<String>,
    /// Every dead-lettered job (in batches of 100).
    #[arg(long, conflicts_with = "job_ids")]
    pub all: bool,
}

/// `explicit`, else `RRQ_CONFIG`, else `./rrq.toml`; and whether it was named.
fn config_path(explicit: Option<&PathBuf>) -> (PathBuf, bool) {
    if let Some(p) = explicit {
        return (p.clone(), true);
    }
    match std::env::var_os("RRQ_CONFIG").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from("rrq.toml"), false),
    }
}

fn apply_env(mut cfg: Config) -> Config {
    if let Some(dsn) = std::env::var("RRQ_REDIS_DSN")
        .ok()
        .filter(|d| !d.is_empty())
    {
        cfg.redis_dsn = dsn;
    }
    cfg
}

impl ConfigArg {
    /// Loads the configuration and applies `RRQ_REDIS_DSN`. Unlike `worker
    /// run`, a missing `./rrq.toml` that nobody named means the defaults.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (path, named) = config_path(self.config.as_ref());
        if !named && !path.exists() {
            return Ok(apply_env(Config::default()));
        }
        Config::load(&path).map(apply_env)
    }
}

impl RunArgs {
    /// `--config`, else `RRQ_CONFIG`, else `./rrq.toml`.
    pub fn config_path(&self) -> PathBuf {
        config_path(self.config.as_ref()).0
    }

    /// Loads the configuration and applies `RRQ_REDIS_DSN`.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config_path()).map(apply_env)
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
        } = cli.command
        else {
            panic!("expected worker run");
        };
        assert_eq!(args.config_path(), PathBuf::from("x.toml"));
        assert_eq!(args.queues, vec!["a", "b"]);
        assert!(args.burst);
    }

    #[test]
    fn parses_check_and_dlq() {
        let cli = Cli::try_parse_from(["rrq", "check", "--json", "--config", "c.toml"]).unwrap();
        assert!(
            matches!(cli.command, Command::Check(CheckArgs { json: true, ref config }) if config.config.as_deref() == Some(std::path::Path::new("c.toml")))
        );
        let cli = Cli::try_parse_from(["rrq", "dlq", "requeue", "--queue", "q", "a", "b"]).unwrap();
        match cli.command {
            Command::Dlq {
                command: DlqCommand::Requeue(t),
            } => {
                assert_eq!(t.job_ids, vec!["a", "b"]);
                assert_eq!(t.queues, vec!["q"]);
                assert!(!t.all);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["rrq", "dlq", "purge", "--all"]).is_ok());
        // Neither ids nor --all, or both: usage errors (exit 2).
        let e = Cli::try_parse_from(["rrq", "dlq", "purge"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["rrq", "dlq", "requeue", "--all", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let cli =
            Cli::try_parse_from(["rrq", "dlq", "list", "--limit", "5", "--queue", "a"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq {
                command: DlqCommand::List(DlqListArgs { limit: 5, .. })
            }
        ));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
