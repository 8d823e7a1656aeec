//! Exponential backoff with jitter, sans-IO: the caller supplies the random number, so tests
//! get exact delays.

use std::time::Duration;

/// Doubles from `base` up to `cap`; each delay is drawn from the upper half of the current
/// step, so reconnecting nodes spread out but never retry faster than half the step.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// The delay before the next attempt after one more failure. `jitter` is in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let jitter = jitter.clamp(0.0, 1.0);
        step.mul_f64(0.5 + jitter / 2.0)
    }

    /// A success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A uniform random number in `[0, 1)` for [`Backoff::next_delay`].
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
        let top: Vec<_> = (0..10).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(top[0], Duration::from_millis(100));
        assert_eq!(top[1], Duration::from_millis(200));
        assert_eq!(top[4], Duration::from_millis(1600));
        assert_eq!(top[8], Duration::from_secs(15), "capped");
        assert_eq!(top[9], Duration::from_secs(15));
        b.reset();
        assert_eq!(
            b.next_delay(0.0),
            Duration::from_millis(50),
            "lowest jitter is half a step"
        );
    }

    #[test]
    fn jitter_stays_within_the_step() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(150));
        for _ in 0..30 {
            let d = b.next_delay(jitter());
            assert!(
                d <= Duration::from_secs(150) && d >= Duration::from_millis(500),
                "{d:?}"
            );
        }
    }
}
