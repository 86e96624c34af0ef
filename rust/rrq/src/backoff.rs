//! Retry delays: exponential with "equal jitter".

use std::time::Duration;

/// Delay before the attempt after `attempt` (1-based) failed.
///
/// `base = min(max, initial * 2^(attempt-1))`, then equal jitter: half of the
/// base is fixed and the other half is scaled by `unit` (uniform in [0, 1)),
/// so retries of many jobs that failed together spread out while none comes
/// back sooner than half the nominal delay.
pub fn retry_delay(attempt: i64, initial: Duration, max: Duration, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).clamp(0, 62) as i32;
    let base = (initial.as_secs_f64() * 2f64.powi(exponent)).min(max.as_secs_f64());
    let half = base / 2.0;
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    let delay = half + half * unit;
    Duration::from_secs_f64(delay.max(0.0))
}

/// [`retry_delay`] with a random jitter, in whole milliseconds.
pub fn retry_delay_ms(attempt: i64, initial: Duration, max: Duration) -> i64 {
    retry_delay(attempt, initial, max, fastrand::f64()).as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_per_attempt() {
        assert_eq!(retry_delay(1, S(1), S(300), 1.0), S(1));
        assert_eq!(retry_delay(2, S(1), S(300), 1.0), S(2));
        assert_eq!(retry_delay(3, S(1), S(300), 1.0), S(4));
    }

    #[test]
    fn capped_by_max() {
        assert_eq!(retry_delay(20, S(1), S(300), 1.0), S(300));
        assert_eq!(retry_delay(i64::MAX, S(1), S(300), 1.0), S(300));
    }

    #[test]
    fn equal_jitter_keeps_half_fixed() {
        assert_eq!(retry_delay(3, S(1), S(300), 0.0), S(2));
        assert_eq!(retry_delay(3, S(1), S(300), 0.5), S(3));
        for _ in 0..100 {
            let ms = retry_delay_ms(3, S(1), S(300));
            assert!((2000..=4000).contains(&ms), "{ms}");
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        assert_eq!(retry_delay(0, S(1), S(300), 1.0), S(1));
        assert_eq!(retry_delay(-5, S(1), S(300), 1.0), S(1));
        assert_eq!(retry_delay(3, S(0), S(300), 1.0), S(0));
        assert_eq!(retry_delay(3, S(1), S(300), f64::NAN), S(2));
    }
}
