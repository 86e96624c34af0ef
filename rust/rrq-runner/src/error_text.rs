//! Error text a runner sends, bounded like the orchestrator stores it.
//!
//! The orchestrator keeps only so many bytes of a message or traceback and
//! tells the runner its cap (`HelloAck.max_error_bytes`); cutting here keeps
//! megabytes of error text off the stream. The cuts and markers match the
//! orchestrator's own (`rrq::error_text`), so a text cut here is not cut again.
//! A Rust `String` is always valid UTF-8: nothing needs replacing.

/// Bytes a text may exceed its cap by and still be kept whole (the marker's room).
pub(crate) const MARKER_ROOM: usize = 96;

/// Longest error type sent.
pub(crate) const MAX_ERROR_TYPE_BYTES: usize = 256;

/// `text` cut to its first `cap` bytes plus a marker when longer than `cap` +
/// [`MARKER_ROOM`]; `cap == 0` means no cap.
pub(crate) fn cut_head(text: String, cap: usize) -> String {
    if cap == 0 || text.len() <= cap.saturating_add(MARKER_ROOM) {
        return text;
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [truncated by rrq: {} bytes, kept {end}]",
        &text[..end],
        text.len()
    )
}

/// `text` cut to its last `cap` bytes after a marker when longer than `cap` +
/// [`MARKER_ROOM`]; `cap == 0` means no cap.
pub(crate) fn cut_tail(text: String, cap: usize) -> String {
    if cap == 0 || text.len() <= cap.saturating_add(MARKER_ROOM) {
        return text;
    }
    let mut start = text.len() - cap;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[truncated by rrq: {} bytes, kept the last {}] …{}",
        text.len(),
        text.len() - start,
        &text[start..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_match_the_orchestrators() {
        let text = format!("é{}", "x".repeat(5000));
        let head = cut_head(text.clone(), 257);
        assert!(head.ends_with("… [truncated by rrq: 5002 bytes, kept 257]"));
        let tail = cut_tail(format!("{}END", "é".repeat(3000)), 258);
        assert!(tail.starts_with("[truncated by rrq: 6003 bytes, kept the last 257] …"));
        assert!(tail.ends_with("éEND"));
        assert_eq!(cut_head("short".into(), 256), "short");
        assert_eq!(cut_tail(text.clone(), 0), text);
    }
}
