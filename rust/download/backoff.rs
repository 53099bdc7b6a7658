//! How long to wait before the next try: exponential, capped, with a little jitter so that many
//! clients retrying the same dead host do not hammer it in step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wait before try number `attempt + 1` (`attempt` >= 1 failed tries so far).
/// A server's `Retry-After` (seconds) is honoured when it is within `cap`.
pub fn delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(wanted) = retry_after {
        if wanted <= cap {
            return wanted;
        }
    }
    let exponent = attempt.saturating_sub(1).min(20);
    let plain = base.saturating_mul(1u32 << exponent).min(cap);
    // Jitter in [0.75, 1.25) from the clock's nanoseconds: enough to spread clients apart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    plain.mul_f64(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let first = delay(1, base, cap, None);
        assert!(
            first >= Duration::from_millis(75) && first < Duration::from_millis(125),
            "{first:?}"
        );
        let third = delay(3, base, cap, None);
        assert!(
            third >= Duration::from_millis(300) && third < Duration::from_millis(500),
            "{third:?}"
        );
        assert!(delay(30, base, cap, None) <= cap);
    }

    #[test]
    fn retry_after_within_cap_is_used() {
        let cap = Duration::from_secs(5);
        assert_eq!(
            delay(1, Duration::from_secs(1), cap, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(
            delay(
                1,
                Duration::from_secs(1),
                cap,
                Some(Duration::from_secs(60))
            ) < cap
        );
    }
}
