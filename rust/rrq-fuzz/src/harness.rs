//! Running targets: one input under guard ([`replay`]) or a stream of
//! generated and mutated inputs for a while ([`fuzz`]).
//!
//! Guards, per input: a panic anywhere on the input's thread (including in a
//! tokio task, which tokio would swallow) is recorded by a panic hook and
//! caught with `catch_unwind`; the counting allocator bounds its live bytes;
//! a watchdog on another thread bounds its wall time.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use fastrand::Rng;

use crate::mutate::Mutator;
use crate::{Target, alloc, fnv1a};

/// Per-input wall-time limit of fault row F30 (docs/guarantees.md), for optimized code.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Unoptimized code runs the same input about 10 times slower.
const UNOPTIMIZED_TIMEOUT: Duration = Duration::from_secs(5);

/// True when this binary was built without optimizations (`opt-level = 0`).
pub fn unoptimized() -> bool {
    env!("RRQ_FUZZ_OPT_LEVEL") == "0"
}

/// The per-input limit for this build: [`DEFAULT_TIMEOUT`] when optimized.
pub fn default_timeout() -> Duration {
    if unoptimized() {
        UNOPTIMIZED_TIMEOUT
    } else {
        DEFAULT_TIMEOUT
    }
}
/// Largest input the fuzzer builds.
pub const DEFAULT_MAX_LEN: usize = 64 * 1024;
/// Stack of the thread running inputs: the orchestrator's own stacks are
/// tokio's 2 MiB; unoptimized builds need more for the same depth.
const WORKER_STACK: usize = 8 << 20;

/// How one input went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No failure.
    Pass,
    /// A panic, with its message and location.
    Panic(String),
    /// The target's own check failed.
    Violation(String),
    /// It ran past the timeout.
    Hang,
    /// It held more live bytes than its budget (bytes at the overrun).
    Oom(usize),
}

impl Verdict {
    /// Short name of the failure kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Panic(_) => "panic",
            Verdict::Violation(_) => "violation",
            Verdict::Hang => "hang",
            Verdict::Oom(_) => "unbounded allocation",
        }
    }
}

thread_local! {
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The last panic of an input thread, by thread name, for the watchdog: a
/// panic in a tokio task is swallowed by tokio, and what it leaves behind
/// (a stream nobody closes) can then hang the input.
static STUCK_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// The panic recorded on thread `name` during its current input, if any.
fn panic_of(name: &str) -> Option<String> {
    lock(&STUCK_PANIC)
        .as_ref()
        .filter(|(n, _)| n == name)
        .map(|(_, m)| m.clone())
}

/// What a stuck input thread amounts to: a panic when one was recorded
/// (the hang is its consequence), else `verdict`.
fn stuck_verdict(name: &str, verdict: Verdict) -> Verdict {
    match panic_of(name) {
        Some(m) => Verdict::Panic(format!("{m} (then the input hung)")),
        None => verdict,
    }
}

/// Routes panics of threads running an input to [`LAST_PANIC`] (silently);
/// other threads keep the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TARGET.with(Cell::get) {
                let message = info.to_string();
                LAST_PANIC.with(|p| {
                    let mut p = p.borrow_mut();
                    if p.is_none() {
                        *p = Some(message.clone());
                    }
                });
                // Allocate before locking: an allocation over the budget
                // parks this thread, and the watchdog needs the lock.
                let name = thread_name();
                let mut stuck = lock(&STUCK_PANIC);
                if stuck.as_ref().is_none_or(|(n, _)| *n != name) {
                    *stuck = Some((name, message));
                }
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `data` on the current thread under the panic and allocation guards.
fn execute(target: &Target, data: &[u8]) -> Verdict {
    install_panic_hook();
    IN_TARGET.with(|t| t.set(true));
    LAST_PANIC.with(|p| p.borrow_mut().take());
    {
        let name = thread_name();
        let mut stuck = lock(&STUCK_PANIC);
        if stuck.as_ref().is_some_and(|(n, _)| *n == name) {
            *stuck = None;
        }
    }
    alloc::arm(target.alloc_limit);
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(data)));
    alloc::disarm();
    IN_TARGET.with(|t| t.set(false));
    let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
    match (recorded, result) {
        (Some(message), _) => Verdict::Panic(message),
        (None, Err(_)) => Verdict::Panic("a panic without a message".to_owned()),
        (None, Ok(Err(violation))) => Verdict::Violation(violation),
        (None, Ok(Ok(()))) => Verdict::Pass,
    }
}

/// Runs one input on a fresh thread and waits at most `timeout`. A thread
/// that hangs or overruns its budget is left behind (blocked), so use this
/// in tests and one-off replays only.
pub fn replay(target: &'static Target, data: &[u8], timeout: Duration) -> Verdict {
    static REPLAYS: AtomicU64 = AtomicU64::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = data.to_vec();
    let name = format!(
        "rrq-fuzz-replay-{}-{}",
        target.name,
        REPLAYS.fetch_add(1, Ordering::SeqCst)
    );
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let _ = tx.send(execute(target, &owned));
        });
    if let Err(e) = spawned {
        return Verdict::Violation(format!("cannot start a replay thread: {e}"));
    }
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(v) => return v,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The thread died outside catch_unwind: a stack overflow aborts
                // the process instead, so this is the harness's own bug.
                return Verdict::Panic("the replay thread died".to_owned());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(bytes) = alloc::overrun() {
            alloc::clear_overrun();
            return stuck_verdict(&name, Verdict::Oom(bytes));
        }
        if Instant::now() >= deadline {
            return stuck_verdict(&name, Verdict::Hang);
        }
    }
}

/// Saves a failing input as `<dir>/<fnv1a hex>`; returns its path.
pub fn save(dir: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{:016x}", fnv1a(data)));
    if !path.exists() {
        std::fs::write(&path, data)?;
    }
    Ok(path)
}

/// Settings of one [`fuzz`] run.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// How long to run.
    pub duration: Duration,
    /// RNG seed (the whole input sequence follows from it and the corpus).
    pub seed: u64,
    /// Per-input wall-time limit.
    pub timeout: Duration,
    /// Largest input built.
    pub max_len: usize,
    /// Seed inputs (the corpus, plus saved crashers).
    pub corpus: Vec<Vec<u8>>,
    /// Where failing inputs go.
    pub save_dir: PathBuf,
    /// File the current input is written to before it runs, so a parent
    /// process can save it if this one dies (stack overflow, abort).
    pub state_file: Option<PathBuf>,
}

/// Outcome of one [`fuzz`] run; [`Report::json`] is the row's checker line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Target name.
    pub target: String,
    /// Inputs run.
    pub execs: u64,
    /// Wall time.
    pub seconds: f64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Inputs that ran past the timeout.
    pub hangs: u64,
    /// Inputs that overran the allocation budget.
    pub oom: u64,
    /// Inputs that broke a target invariant.
    pub violations: u64,
    /// Runs that died outright (stack overflow, abort), seen by the parent.
    pub aborts: u64,
    /// The seed.
    pub seed: u64,
    /// Per-input time limit, ms.
    pub timeout_ms: u64,
    /// Whether the build was optimized (the F30 time limit is for optimized code).
    pub optimized: bool,
    /// Failing inputs saved.
    pub saved: Vec<PathBuf>,
    /// First failure message per distinct panic site or violation.
    pub failures: Vec<String>,
    /// True when the input thread is stuck (hang, overrun): the process must exit.
    pub stuck: bool,
}

impl Report {
    /// True when nothing failed.
    pub fn clean(&self) -> bool {
        self.panics + self.hangs + self.oom + self.violations + self.aborts == 0
    }

    /// One JSON line: the checker record of row F30 for this target.
    pub fn json(&self) -> String {
        let saved: Vec<String> = self
            .saved
            .iter()
            .map(|p| {
                p.strip_prefix(crate::crate_dir())
                    .unwrap_or(p)
                    .display()
                    .to_string()
            })
            .collect();
        serde_json::json!({
            "row": "F30",
            "target": self.target,
            "execs": self.execs,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "panics": self.panics,
            "hangs": self.hangs,
            "oom": self.oom,
            "violations": self.violations,
            "aborts": self.aborts,
            "seed": format!("{:#x}", self.seed),
            "timeout_ms": self.timeout_ms,
            "optimized": self.optimized,
            "crashers": saved,
        })
        .to_string()
    }
}

/// Where the next input comes from: seeds first, then a mix of fresh
/// structure-aware inputs, mutated seeds and mutated fresh inputs.
#[derive(Debug)]
struct InputSource {
    target: &'static Target,
    mutator: Mutator,
    pool: Vec<Vec<u8>>,
    recent: VecDeque<Vec<u8>>,
    next_seed: usize,
    max_len: usize,
}

const RECENT: usize = 256;

impl InputSource {
    fn new(target: &'static Target, seed: u64, pool: Vec<Vec<u8>>, max_len: usize) -> Self {
        Self {
            target,
            mutator: Mutator::new(Rng::with_seed(seed), max_len),
            pool,
            recent: VecDeque::new(),
            next_seed: 0,
            max_len,
        }
    }

    fn generated(&mut self) -> Vec<u8> {
        let n = self.mutator.rng().usize(16..=4096);
        let raw: Vec<u8> = std::iter::repeat_with(|| self.mutator.rng().u8(..))
            .take(n)
            .collect();
        let mut u = arbitrary::Unstructured::new(&raw);
        let mut data = (self.target.generate)(&mut u).unwrap_or_default();
        data.truncate(self.max_len);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(data.clone());
        data
    }

    fn next(&mut self) -> Vec<u8> {
        if self.next_seed < self.pool.len() {
            self.next_seed += 1;
            return self.pool[self.next_seed - 1].clone();
        }
        let roll = self.mutator.rng().u32(0..100);
        if self.pool.is_empty() || roll < 15 {
            return self.generated();
        }
        let pick = |rng: &mut Rng, v: &[Vec<u8>]| v[rng.usize(0..v.len())].clone();
        if roll < 18 {
            return pick(self.mutator.rng(), &self.pool);
        }
        let mut data = if !self.recent.is_empty() && roll < 50 {
            let i = self.mutator.rng().usize(0..self.recent.len());
            self.recent[i].clone()
        } else {
            pick(self.mutator.rng(), &self.pool)
        };
        self.mutator
            .mutate(&mut data, &self.pool, self.target.dictionary);
        data
    }
}

#[derive(Debug, Default)]
struct Shared {
    current: Mutex<Vec<u8>>,
    /// Micros since `base` + 1 when the current input started; 0 when idle.
    started: AtomicU64,
    execs: AtomicU64,
    stop: AtomicBool,
    report: Mutex<Report>,
    sites: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The state file: `[execs u64 LE][len u32 LE][input]`, rewritten in place.
fn write_state(file: &std::fs::File, execs: u64, data: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&execs.to_le_bytes());
    buf.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(data);
    let _ = file.write_all_at(buf, 0);
}

/// Reads a state file: exec count and the input that was running.
pub fn read_state(path: &Path) -> Option<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path).ok()?;
    let execs = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    Some((execs, bytes.get(12..12 + len)?.to_vec()))
}

/// First line of a panic message: "panicked at file:line:col:" — the site.
fn site(message: &str) -> String {
    message.lines().next().unwrap_or("").to_owned()
}

fn record_failure(shared: &Shared, save_dir: &Path, verdict: &Verdict, data: &[u8]) {
    let mut report = lock(&shared.report);
    let (text, key) = match verdict {
        Verdict::Pass => return,
        Verdict::Panic(m) => {
            report.panics += 1;
            (m.clone(), site(m))
        }
        Verdict::Violation(m) => {
            report.violations += 1;
            (m.clone(), format!("violation: {}", site(m)))
        }
        Verdict::Hang => {
            report.hangs += 1;
            (
                "hang: the input ran past the timeout".to_owned(),
                "hang".to_owned(),
            )
        }
        Verdict::Oom(bytes) => {
            report.oom += 1;
            (
                format!("unbounded allocation: {bytes} live bytes, over the budget"),
                "oom".to_owned(),
            )
        }
    };
    if !lock(&shared.sites).insert(key) {
        return; // this site already has a saved input
    }
    match save(save_dir, data) {
        Ok(path) => {
            eprintln!(
                "rrq-fuzz: {} {}: {} (saved {})",
                report.target,
                verdict.kind(),
                text.replace('\n', " "),
                path.display()
            );
            report.saved.push(path);
        }
        Err(e) => eprintln!("rrq-fuzz: cannot save a failing input: {e}"),
    }
    report.failures.push(text);
}

/// Fuzzes `target` for `opts.duration`. When the returned report is
/// [`Report::stuck`], the input thread cannot be recovered: print the report
/// and exit the process.
pub fn fuzz(target: &'static Target, opts: FuzzOptions) -> Report {
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    {
        let mut r = lock(&shared.report);
        r.target = target.name.to_owned();
        r.seed = opts.seed;
        r.timeout_ms = u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX);
        r.optimized = !unoptimized();
    }
    let state = opts
        .state_file
        .as_ref()
        .and_then(|p| std::fs::File::create(p).ok());
    let worker_name = format!("rrq-fuzz-{}", target.name);
    let worker = {
        let shared = shared.clone();
        let save_dir = opts.save_dir.clone();
        let mut source = InputSource::new(target, opts.seed, opts.corpus.clone(), opts.max_len);
        std::thread::Builder::new()
            .name(worker_name.clone())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let mut buf = Vec::new();
                while !shared.stop.load(Ordering::SeqCst) {
                    let input = source.next();
                    {
                        let mut current = lock(&shared.current);
                        current.clear();
                        current.extend_from_slice(&input);
                    }
                    if let Some(f) = &state {
                        write_state(f, shared.execs.load(Ordering::SeqCst), &input, &mut buf);
                    }
                    let t = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    shared.started.store(t + 1, Ordering::SeqCst);
                    let verdict = execute(target, &input);
                    shared.started.store(0, Ordering::SeqCst);
                    shared.execs.fetch_add(1, Ordering::SeqCst);
                    if verdict != Verdict::Pass {
                        record_failure(&shared, &save_dir, &verdict, &input);
                    }
                }
            })
    };
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            let mut r = lock(&shared.report).clone();
            r.failures
                .push(format!("cannot start the fuzz thread: {e}"));
            r.violations += 1;
            return r;
        }
    };
    let mut stuck = None;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        if let Some(bytes) = alloc::overrun() {
            stuck = Some(stuck_verdict(&worker_name, Verdict::Oom(bytes)));
            break;
        }
        let s = shared.started.load(Ordering::SeqCst);
        let now = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if s != 0 && now.saturating_sub(s - 1) > opts.timeout.as_micros() as u64 {
            stuck = Some(stuck_verdict(&worker_name, Verdict::Hang));
            break;
        }
        if started.elapsed() >= opts.duration {
            shared.stop.store(true, Ordering::SeqCst);
        }
        if worker.is_finished() {
            let _ = worker.join();
            break;
        }
    }
    if let Some(verdict) = &stuck {
        let data = lock(&shared.current).clone();
        record_failure(&shared, &opts.save_dir, verdict, &data);
    }
    let mut report = lock(&shared.report).clone();
    report.execs = shared.execs.load(Ordering::SeqCst);
    report.seconds = started.elapsed().as_secs_f64();
    report.stuck = stuck.is_some();
    let _ = std::io::stderr().flush();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn gen_empty(_: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn no_seeds() -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
    #[allow(clippy::panic)]
    fn panics_on_x(data: &[u8]) -> Result<(), String> {
        if data.first() == Some(&b'x') {
            panic!("found x");
        }
        Ok(())
    }
    fn sleeps(_: &[u8]) -> Result<(), String> {
        std::thread::sleep(Duration::from_secs(5));
        Ok(())
    }
    fn hogs(_: &[u8]) -> Result<(), String> {
        let v: Vec<u8> = Vec::with_capacity(200 << 20);
        Err(format!("allocated {}", v.capacity()))
    }

    const fn t(run: fn(&[u8]) -> Result<(), String>) -> Target {
        Target {
            name: "test",
            about: "",
            run,
            generate: gen_empty,
            dictionary: &[],
            alloc_limit: alloc::DEFAULT_LIMIT,
            seeds: no_seeds,
        }
    }
    static OK: Target = t(ok);
    static PANICS: Target = t(panics_on_x);
    static SLEEPS: Target = t(sleeps);
    static HOGS: Target = t(hogs);

    #[test]
    fn replay_tells_each_failure_apart() {
        let d = Duration::from_millis(300);
        assert_eq!(replay(&OK, b"", d), Verdict::Pass);
        assert_eq!(replay(&PANICS, b"y", d), Verdict::Pass);
        match replay(&PANICS, b"x", d) {
            Verdict::Panic(m) => assert!(m.contains("found x"), "{m}"),
            other => panic!("expected a panic, got {other:?}"),
        }
        assert_eq!(replay(&SLEEPS, b"", d), Verdict::Hang);
        assert!(matches!(replay(&HOGS, b"", d), Verdict::Oom(_)));
    }

    #[test]
    fn state_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("rrq-fuzz-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let f = std::fs::File::create(&path).unwrap();
        let mut buf = Vec::new();
        write_state(&f, 7, b"long input", &mut buf);
        write_state(&f, 8, b"short", &mut buf);
        assert_eq!(read_state(&path), Some((8, b"short".to_vec())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
