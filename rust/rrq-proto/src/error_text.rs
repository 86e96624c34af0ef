//! Caps on the error text of an attempt.
//!
//! A runner is not trusted to bound what it sends: every failed attempt's
//! message and traceback is appended to the job's `errors_json` (one entry per
//! attempt) and the message is also kept as `last_error`, so an unbounded
//! message grows the record with every attempt and makes each settle a large
//! Redis write. The orchestrator cuts both here, before anything reaches a
//! settle, on a UTF-8 character boundary, and says what it cut.
//!
//! The runners cut the same way before sending (docs/protocol.md), so the
//! Rust runner and the orchestrator share this module. A text at most
//! [`MARKER_ROOM`] bytes over its cap is kept as it is: that is room for a
//! runner's own marker, so a runner-cut text is not cut (and marked) twice.

use std::borrow::Cow;

/// Bytes a text may exceed its cap by and still be kept whole: the longest
/// marker ("… [truncated by rrq: 18446744073709551615 bytes, kept the last
/// 18446744073709551615]") is 87 bytes.
pub const MARKER_ROOM: usize = 96;

/// Longest `error_type` kept; a class name, never legitimately longer.
pub const MAX_ERROR_TYPE_BYTES: usize = 256;

/// `text` cut to its first `cap` bytes (fewer, to end on a character
/// boundary) followed by a marker, when it is longer than `cap` plus
/// [`MARKER_ROOM`]; else `text` unchanged. For messages, whose head says what
/// went wrong.
pub fn cut_head(text: &str, cap: usize) -> Cow<'_, str> {
    if text.len() <= cap.saturating_add(MARKER_ROOM) {
        return Cow::Borrowed(text);
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… [truncated by rrq: {} bytes, kept {end}]",
        &text[..end],
        text.len()
    ))
}

/// `text` cut to its last `cap` bytes (fewer, to start on a character
/// boundary) after a marker, when it is longer than `cap` plus
/// [`MARKER_ROOM`]; else `text` unchanged. For tracebacks, whose tail holds
/// the frame that raised.
pub fn cut_tail(text: &str, cap: usize) -> Cow<'_, str> {
    if text.len() <= cap.saturating_add(MARKER_ROOM) {
        return Cow::Borrowed(text);
    }
    let mut start = text.len() - cap;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Cow::Owned(format!(
        "[truncated by rrq: {} bytes, kept the last {}] …{}",
        text.len(),
        text.len() - start,
        &text[start..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_kept() {
        assert_eq!(cut_head("boom", 256), "boom");
        assert_eq!(cut_tail("boom", 256), "boom");
        // Up to the marker room over the cap: a runner's own cut passes.
        let runner_cut = format!(
            "{}… [truncated by rrq: 5242880 bytes, kept 256]",
            "x".repeat(256)
        );
        assert_eq!(cut_head(&runner_cut, 256), runner_cut);
        let edge = "y".repeat(256 + MARKER_ROOM);
        assert!(matches!(cut_head(&edge, 256), Cow::Borrowed(_)));
    }

    #[test]
    fn long_messages_keep_their_head_and_are_marked() {
        let text = format!("HEAD{}", "z".repeat(5 * 1024 * 1024));
        let cut = cut_head(&text, 8192);
        assert!(cut.starts_with("HEAD"));
        assert!(
            cut.ends_with("… [truncated by rrq: 5242884 bytes, kept 8192]"),
            "{}",
            &cut[8192..]
        );
        assert!(cut.len() <= 8192 + MARKER_ROOM);
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // "é" is two bytes: a cap of 257 would split one.
        let text = "é".repeat(1000);
        let head = cut_head(&text, 257);
        assert!(head.starts_with(&"é".repeat(128)));
        assert!(head.ends_with("… [truncated by rrq: 2000 bytes, kept 256]"));
        let tail = cut_tail(&text, 257);
        assert!(tail.starts_with("[truncated by rrq: 2000 bytes, kept the last 256] …é"));
        assert!(tail.ends_with("é"));
        // Four-byte characters, every offset of the cap.
        let text = "🦀".repeat(500);
        for cap in 256..260 {
            let h = cut_head(&text, cap);
            let t = cut_tail(&text, cap);
            assert!(h.len() <= cap + MARKER_ROOM && t.len() <= cap + MARKER_ROOM);
        }
    }

    #[test]
    fn long_tracebacks_keep_their_tail_and_are_marked() {
        let text = format!("{}raise ValueError", "frame\n".repeat(100_000));
        let cut = cut_tail(&text, 8192);
        assert!(cut.ends_with("raise ValueError"));
        assert!(cut.starts_with(&format!(
            "[truncated by rrq: {} bytes, kept the last 8192] …",
            text.len()
        )));
        assert!(cut.len() <= 8192 + MARKER_ROOM);
    }

    #[test]
    fn the_longest_marker_fits_the_room() {
        let marker = format!(
            "[truncated by rrq: {} bytes, kept the last {}] …",
            u64::MAX,
            u64::MAX
        );
        assert!(marker.len() <= MARKER_ROOM, "{}", marker.len());
    }
}
