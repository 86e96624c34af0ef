//! `rrq-fuzz`: runs the F30 fuzz targets for a while and prints one JSON
//! line per target; see the crate documentation of `rrq_fuzz`.
//!
//! ```text
//! rrq-fuzz --target all --seconds 60          # every target, 60 s each
//! rrq-fuzz --target cron --seconds 5 --seed 0x2a
//! rrq-fuzz --target stream --replay crashers/stream/0123456789abcdef
//! rrq-fuzz --write-seeds                      # (re)write the generated seed files
//! ```
//!
//! Each target runs in a child process (this binary with `--child`), which
//! writes the input it is running to a state file first; when the child dies
//! outright (a stack overflow or an abort cannot be caught in process), the
//! parent saves that input as a crasher and counts an abort.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rrq_fuzz::harness::{self, FuzzOptions, Report, Verdict};
use rrq_fuzz::{TARGETS, Target, corpus_dir, crashers_dir, fnv1a, read_inputs};

#[derive(Debug, Parser)]
#[command(
    name = "rrq-fuzz",
    about = "Wire-format fuzzing of RRQ (fault row F30)"
)]
struct Args {
    /// Target name, or `all`.
    #[arg(long, default_value = "all")]
    target: String,
    /// Seconds per target.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// RNG seed (decimal or 0x hex); a fresh one is picked and printed when absent.
    #[arg(long)]
    seed: Option<String>,
    /// Per-input timeout, ms [default: 1000; 5000 in an unoptimized build].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Largest input built, bytes.
    #[arg(long, default_value_t = harness::DEFAULT_MAX_LEN)]
    max_len: usize,
    /// Replay these files (against `--target`, or the target named by each
    /// file's directory) and print each verdict.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Write the built-in seed inputs into corpus/<target>/.
    #[arg(long)]
    write_seeds: bool,
    /// List the targets.
    #[arg(long)]
    list: bool,
    /// Fuzz in this process (no supervising parent): an abort then loses its input.
    #[arg(long)]
    in_process: bool,
    #[arg(long, hide = true)]
    child: bool,
    #[arg(long, hide = true)]
    state_file: Option<PathBuf>,
}

fn timeout_ms(args: &Args) -> u64 {
    args.timeout_ms
        .unwrap_or(harness::default_timeout().as_millis() as u64)
}

fn parse_seed(text: &str) -> Result<u64, String> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    }
    .map_err(|e| format!("bad --seed {text:?}: {e}"))
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    fnv1a(&nanos.to_le_bytes()) ^ u64::from(std::process::id())
}

fn selected(name: &str) -> Result<Vec<&'static Target>, String> {
    if name == "all" {
        return Ok(TARGETS.iter().collect());
    }
    rrq_fuzz::target(name).map(|t| vec![t]).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("no target {name:?}; targets: all, {}", names.join(", "))
    })
}

/// Seed of `target` in a run seeded `seed`: the same whether the target
/// runs alone or in `all`.
fn target_seed(seed: u64, target: &Target) -> u64 {
    seed ^ fnv1a(target.name.as_bytes())
}

fn corpus_of(target: &Target) -> Result<Vec<Vec<u8>>, String> {
    let mut inputs = Vec::new();
    for dir in [corpus_dir(target.name), crashers_dir(target.name)] {
        let found = read_inputs(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        inputs.extend(found.into_iter().map(|(_, d)| d));
    }
    Ok(inputs)
}

fn write_seeds(targets: &[&'static Target]) -> Result<(), String> {
    for t in targets {
        let dir = corpus_dir(t.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let seeds = (t.seeds)();
        for (name, data) in &seeds {
            let path = dir.join(name);
            std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        eprintln!("rrq-fuzz: {} seed inputs in {}", seeds.len(), dir.display());
    }
    Ok(())
}

fn replay(args: &Args, timeout: Duration) -> Result<bool, String> {
    let mut clean = true;
    for path in &args.replay {
        let name = if args.target == "all" {
            path.parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned()
        } else {
            args.target.clone()
        };
        let target = selected(&name)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("no target for {}", path.display()))?;
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let verdict = harness::replay(target, &data, timeout);
        match &verdict {
            Verdict::Pass => println!("{}: {}: pass", target.name, path.display()),
            Verdict::Panic(m) | Verdict::Violation(m) => {
                clean = false;
                println!(
                    "{}: {}: {}: {m}",
                    target.name,
                    path.display(),
                    verdict.kind()
                );
            }
            Verdict::Hang | Verdict::Oom(_) => {
                // The input's thread is stuck: report and stop here.
                println!("{}: {}: {:?}", target.name, path.display(), verdict);
                return Ok(false);
            }
        }
    }
    Ok(clean)
}

/// Fuzzes one target in this process and prints its line.
fn child(
    args: &Args,
    target: &'static Target,
    seed: u64,
    timeout: Duration,
) -> Result<bool, String> {
    let opts = FuzzOptions {
        duration: Duration::from_secs_f64(args.seconds.max(0.0)),
        seed: target_seed(seed, target),
        timeout,
        max_len: args.max_len,
        corpus: corpus_of(target)?,
        save_dir: crashers_dir(target.name),
        state_file: args.state_file.clone(),
    };
    let report = harness::fuzz(target, opts);
    println!("{}", report.json());
    if report.stuck {
        // The input thread is blocked for good (hang or overrun): end here.
        std::process::exit(1);
    }
    Ok(report.clean())
}

/// Runs `target` in a child process; saves the running input if it dies.
fn supervise(args: &Args, target: &'static Target, seed: u64) -> Result<bool, String> {
    let state = std::env::temp_dir().join(format!(
        "rrq-fuzz-{}-{}.state",
        std::process::id(),
        target.name
    ));
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let started = std::time::Instant::now();
    let status = std::process::Command::new(exe)
        .arg("--child")
        .args(["--target", target.name])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--timeout-ms", &timeout_ms(args).to_string()])
        .args(["--max-len", &args.max_len.to_string()])
        .arg("--state-file")
        .arg(&state)
        .status()
        .map_err(|e| format!("cannot start the {} child: {e}", target.name))?;
    let clean = match status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => {
            // Died outright: the state file holds the input it was running.
            let (execs, input) = harness::read_state(&state).unwrap_or_default();
            let saved = harness::save(&crashers_dir(target.name), &input)
                .map_err(|e| format!("cannot save the input: {e}"))?;
            eprintln!(
                "rrq-fuzz: {}: the run died ({status}); its input is {}",
                target.name,
                saved.display()
            );
            let report = Report {
                target: target.name.to_owned(),
                execs,
                seconds: started.elapsed().as_secs_f64(),
                aborts: 1,
                seed: target_seed(seed, target),
                timeout_ms: timeout_ms(args),
                optimized: !harness::unoptimized(),
                saved: vec![saved],
                ..Report::default()
            };
            println!("{}", report.json());
            false
        }
    };
    let _ = std::fs::remove_file(&state);
    Ok(clean)
}

fn main_result() -> Result<bool, String> {
    let args = Args::parse();
    let targets = selected(&args.target)?;
    let timeout = Duration::from_millis(timeout_ms(&args).max(1));
    if args.list {
        for t in &targets {
            println!("{:12} {}", t.name, t.about);
        }
        return Ok(true);
    }
    if args.write_seeds {
        write_seeds(&targets)?;
        return Ok(true);
    }
    if !args.replay.is_empty() {
        return replay(&args, timeout);
    }
    let seed = match &args.seed {
        Some(s) => parse_seed(s)?,
        None => fresh_seed(),
    };
    if args.child {
        let target = targets.first().ok_or("no target")?;
        return child(&args, target, seed, timeout);
    }
    eprintln!(
        "rrq-fuzz: seed {seed:#x} (rerun with --seed {seed:#x}); {} s per target, timeout {} ms",
        args.seconds,
        timeout.as_millis()
    );
    if harness::unoptimized() && args.timeout_ms.is_none() {
        eprintln!(
            "rrq-fuzz: an unoptimized build: inputs run ~10x slower, so the default timeout is 5 s \
             (the F30 limit of 1 s is for optimized builds; see rrq-fuzz/README.md)"
        );
    }
    let mut clean = true;
    for target in targets {
        let ok = if args.in_process {
            child(&args, target, seed, timeout)?
        } else {
            supervise(&args, target, seed)?
        };
        clean &= ok;
    }
    Ok(clean)
}

fn main() -> ExitCode {
    match main_result() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rrq-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}
