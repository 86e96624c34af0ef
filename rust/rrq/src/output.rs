//! The orchestrator's stderr: one lossy, bounded writer shared by its own
//! log and the forwarded output of runner processes.
//!
//! Nothing on the Tokio runtime ever writes to stderr directly: stderr may be
//! a pipe nobody reads, and a blocked `write` on a runtime thread stops
//! scheduling, heartbeats and everything else. Instead each line (a log event
//! or a forwarded runner line) is queued whole to one writer thread. The
//! queue is bounded ([`MAX_QUEUED_BYTES`]); a line that does not fit is
//! dropped and counted ([`counters`]), so a stuck reader costs lines, never
//! progress or memory.
//!
//! Forwarded runner output is read in fixed chunks and cut into lines of at
//! most [`MAX_LINE_BYTES`]; the rest of a longer line is dropped and the cut
//! is marked on the line, so one endless line cannot grow a buffer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Longest forwarded line, in bytes (without the runner prefix); the rest of
/// a longer line is dropped and counted.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most bytes waiting for the writer thread; a line past it is dropped.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// Most lines waiting for the writer thread.
const MAX_QUEUED_LINES: usize = 8192;
/// Size of one read from a runner's pipe.
const READ_CHUNK: usize = 8 * 1024;

/// What was lost on the way to stderr since the start (see the module docs).
#[derive(Debug, Default)]
pub struct Counters {
    /// Lines of the orchestrator's own log dropped because stderr was not keeping up.
    pub log_lines_dropped: AtomicU64,
    /// Runner output lines dropped because stderr was not keeping up.
    pub output_lines_dropped: AtomicU64,
    /// Bytes of runner output dropped: whole dropped lines and cut line tails.
    pub output_bytes_dropped: AtomicU64,
    /// Runner output lines cut at [`MAX_LINE_BYTES`].
    pub output_lines_cut: AtomicU64,
}

/// A copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Counters::log_lines_dropped`].
    pub log_lines_dropped: u64,
    /// See [`Counters::output_lines_dropped`].
    pub output_lines_dropped: u64,
    /// See [`Counters::output_bytes_dropped`].
    pub output_bytes_dropped: u64,
    /// See [`Counters::output_lines_cut`].
    pub output_lines_cut: u64,
}

static COUNTERS: Counters = Counters {
    log_lines_dropped: AtomicU64::new(0),
    output_lines_dropped: AtomicU64::new(0),
    output_bytes_dropped: AtomicU64::new(0),
    output_lines_cut: AtomicU64::new(0),
};

/// The process-wide counters.
pub fn counters() -> Snapshot {
    Snapshot {
        log_lines_dropped: COUNTERS.log_lines_dropped.load(Ordering::Relaxed),
        output_lines_dropped: COUNTERS.output_lines_dropped.load(Ordering::Relaxed),
        output_bytes_dropped: COUNTERS.output_bytes_dropped.load(Ordering::Relaxed),
        output_lines_cut: COUNTERS.output_lines_cut.load(Ordering::Relaxed),
    }
}

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

struct Sink {
    tx: SyncSender<Msg>,
    queued: std::sync::Arc<AtomicUsize>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<Msg>(MAX_QUEUED_LINES);
        let queued = std::sync::Arc::new(AtomicUsize::new(0));
        let done = queued.clone();
        // If the thread cannot start, its receiver is gone and every line is
        // dropped and counted (`try_send` fails at once).
        let _ = std::thread::Builder::new()
            .name("rrq-stderr".to_owned())
            .spawn(move || {
                use std::io::Write as _;
                let stderr = std::io::stderr();
                for msg in rx {
                    match msg {
                        Msg::Line(line) => {
                            // Blocking here is the point: only this thread waits
                            // for a slow reader.
                            let _ = stderr.lock().write_all(&line);
                            done.fetch_sub(line.len(), Ordering::Relaxed);
                        }
                        Msg::Flush(ack) => {
                            let _ = ack.send(());
                        }
                    }
                }
            });
        Sink { tx, queued }
    })
}

/// Queues one whole line (with its newline); false when it was dropped.
fn try_write(line: Vec<u8>) -> bool {
    let s = sink();
    let len = line.len();
    if s.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
        s.queued.fetch_sub(len, Ordering::Relaxed);
        return false;
    }
    match s.tx.try_send(Msg::Line(line)) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            s.queued.fetch_sub(len, Ordering::Relaxed);
            false
        }
    }
}

/// Waits up to `timeout` for the lines queued so far to be written (at exit;
/// a reader that never reads cannot hold the exit longer than that).
pub fn flush(timeout: Duration) {
    let Some(s) = SINK.get() else {
        return;
    };
    let (ack, done) = mpsc::channel();
    // Never a blocking send: with the queue full and nobody reading, the
    // exit would wait forever.
    if s.tx.try_send(Msg::Flush(ack)).is_ok() {
        let _ = done.recv_timeout(timeout);
    }
}

/// `MakeWriter` of the orchestrator's log: each event is buffered and queued
/// as one line when the writer drops (tracing makes one writer per event).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One log event being formatted.
#[derive(Debug, Default)]
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        if !line.is_empty() && !try_write(line) {
            COUNTERS.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine::default()
    }
}

/// Copies a runner's output to our stderr line by line, each line prefixed
/// with the runner label so interleaved output stays attributable. Never
/// waits for stderr: a line that does not fit the queue is dropped and
/// counted, so the runner's pipe is always drained.
pub async fn forward(mut stream: impl AsyncRead + Unpin, prefix: String) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut line = LineCutter::new(prefix);
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                line.finish();
                return;
            }
            Ok(n) => line.push(&chunk[..n]),
        }
    }
}

/// Splits a byte stream into prefixed lines of at most [`MAX_LINE_BYTES`]
/// and queues each one (see [`forward`]).
struct LineCutter {
    prefix: String,
    /// Where a finished line goes; false when it was dropped.
    sink: fn(Vec<u8>) -> bool,
    line: Vec<u8>,
    /// Bytes of the current line dropped past [`MAX_LINE_BYTES`].
    cut: u64,
}

impl LineCutter {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            sink: try_write,
            line: Vec::new(),
            cut: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (part, rest, ends) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_LINE_BYTES - self.line.len();
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.cut += (part.len() - keep) as u64;
            if ends {
                self.emit();
            }
            bytes = rest;
        }
    }

    /// End of stream: emits a last line without a newline, if any.
    fn finish(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let mut out = Vec::with_capacity(self.prefix.len() + self.line.len() + 64);
        out.extend_from_slice(self.prefix.as_bytes());
        // A handler's output is job data: its control characters (an ANSI
        // escape, a bidi override) are escaped as the orchestrator's own
        // fields are, so it can neither forge a line nor drive a terminal.
        out.extend_from_slice(
            crate::logging::escape(&String::from_utf8_lossy(&self.line)).as_bytes(),
        );
        if self.cut > 0 {
            out.extend_from_slice(
                format!(
                    " [rrq: line cut at {MAX_LINE_BYTES} bytes; {} more bytes dropped]",
                    self.cut
                )
                .as_bytes(),
            );
            COUNTERS.output_lines_cut.fetch_add(1, Ordering::Relaxed);
            COUNTERS
                .output_bytes_dropped
                .fetch_add(self.cut, Ordering::Relaxed);
        }
        out.push(b'\n');
        let kept = self.line.len() as u64;
        // Give the line's buffer back when a long line grew it.
        if self.line.capacity() > 2 * READ_CHUNK {
            self.line = Vec::new();
        } else {
            self.line.clear();
        }
        self.cut = 0;
        if !(self.sink)(out) {
            COUNTERS
                .output_lines_dropped
                .fetch_add(1, Ordering::Relaxed);
            COUNTERS
                .output_bytes_dropped
                .fetch_add(kept + 1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_lines_and_keeps_short_ones() {
        let mut c = LineCutter::new("[p] ".to_owned());
        c.sink = |_| true;
        let before = counters();
        c.push(b"short\n");
        assert!(c.line.is_empty());
        c.push(&vec![b'x'; MAX_LINE_BYTES + 100]);
        assert_eq!(c.line.len(), MAX_LINE_BYTES);
        assert_eq!(c.cut, 100);
        c.push(b"yy\nnext");
        assert_eq!(c.line, b"next");
        assert_eq!(c.cut, 0);
        let after = counters();
        assert!(after.output_lines_cut > before.output_lines_cut);
        assert!(after.output_bytes_dropped >= before.output_bytes_dropped + 102);
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        // More than the byte budget in one go: the excess is refused at once.
        let big = vec![b'z'; MAX_QUEUED_BYTES + 1];
        assert!(!try_write(big));
    }
}
