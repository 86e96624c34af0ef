//! The orchestrator's log output, with every field escaped.
//!
//! Function names, job ids, queue names and error messages come from
//! producers and handlers. Written raw, a `\n` in one of them starts a line
//! that looks like the orchestrator's own, and an ANSI or bidi control
//! sequence rewrites what a terminal shows. [`EscapingFields`] formats every
//! field of every event and span, the message included, and escapes control
//! characters in it, so no call site can forget. The timestamp, level and
//! target around the fields come from the orchestrator itself.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// True for a character that must not reach a log line or a terminal as
/// is: C0 controls (newline, carriage return, escape, ...), DEL, C1 controls,
/// the line and paragraph separators, and the bidi embedding, override and
/// isolate controls (which reorder what a reader sees).
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// `s` with every [`is_unsafe`] character written as an escape (`\n`, `\r`,
/// `\t`, `\u{1b}`, `\u{202e}`); a backslash stays as it is. Borrowed when
/// nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_except(s, None)
}

/// [`escape`], but keeps `\n`: for multi-line command output (`rrq dlq
/// inspect` prints a traceback) that must still not carry terminal controls.
pub fn escape_keep_newlines(s: &str) -> Cow<'_, str> {
    escape_except(s, Some('\n'))
}

fn escape_except(s: &str, keep: Option<char>) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe(c) && Some(c) != keep;
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// Formats fields as `tracing_subscriber`'s default does (`message k=v`,
/// strings quoted), with every value passed through [`escape`].
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapingFields;

impl<'writer> FormatFields<'writer> for EscapingFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = Visitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_, '_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let text = escape(text);
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{text}")
        } else {
            write!(self.writer, "{sep}{}={text}", field.name())
        };
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// Installs the global subscriber: `RUST_LOG` (default `info`), fields
/// escaped by [`EscapingFields`], written through [`crate::output::LogWriter`]:
/// lossy and non-blocking, since stderr may be a pipe nobody reads and a
/// blocked write must never stop the runtime.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(EscapingFields)
        .with_writer(crate::output::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain name"), "plain name");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("x\n2026-01-01T00:00:00Z  INFO forged\x1b[31m"),
            "x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m"
        );
        assert_eq!(escape("a\rb\tc\0d\x7f"), "a\\rb\\tc\\u{0}d\\u{7f}");
        assert_eq!(escape("c1\u{85}\u{9b}"), "c1\\u{85}\\u{9b}");
        assert_eq!(
            escape("bidi\u{202e}\u{2066}\u{2069}\u{2028}"),
            "bidi\\u{202e}\\u{2066}\\u{2069}\\u{2028}"
        );
        // Printable non-ASCII text is kept.
        assert_eq!(escape("café ☕ 日本"), "café ☕ 日本");
        assert_eq!(escape_keep_newlines("a\nb\x1b"), "a\nb\\u{1b}");
    }

    #[test]
    fn every_field_and_the_message_are_escaped() {
        use tracing_subscriber::layer::SubscriberExt as _;

        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(EscapingFields)
                .with_ansi(false)
                .without_time()
                .with_writer(move || writer.clone()),
        );
        let evil = "x\nINFO forged\x1b[31m\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", function = evil);
            let _g = span.enter();
            tracing::warn!(job_id = %evil, name = evil, dbg = ?evil, "unknown {evil}");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\u{202e}'), "{out}");
        assert!(
            out.contains("unknown x\\nINFO forged\\u{1b}[31m\\u{202e}"),
            "{out}"
        );
        assert!(out.contains("job_id=x\\nINFO"), "{out}");
    }
}
