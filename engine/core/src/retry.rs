//! Retry policy: how many attempts a step gets and how long to wait between them.

use std::time::Duration;

use steward_schemas::{Attempt, Backoff, RetrySpec};

/// A checked retry policy.
///
/// Invariants (checked by [`RetryPolicy::try_from_spec`]): at least one attempt and at most
/// [`RetryPolicy::MAX_ATTEMPTS`]; `initial ≤ max_delay`; `multiplier ≥ 1`; `0 ≤ jitter ≤ 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
    initial: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::try_from_spec(&RetrySpec::default()).expect("the default retry spec is valid")
    }
}

impl RetryPolicy {
    /// The most attempts a step may have.
    pub const MAX_ATTEMPTS: u32 = 100;

    /// Checks a spec. The error says which field is wrong and what to write.
    pub fn try_from_spec(spec: &RetrySpec) -> Result<Self, (&'static str, String)> {
        if spec.attempts == 0 || spec.attempts > Self::MAX_ATTEMPTS {
            return Err((
                "attempts",
                format!(
                    "{} attempts; write a number from 1 (no retry) to {}",
                    spec.attempts,
                    Self::MAX_ATTEMPTS
                ),
            ));
        }
        if spec.initial > spec.max_delay {
            return Err((
                "initial",
                format!(
                    "the first delay ({}) is longer than max_delay ({}); lower initial or raise max_delay",
                    spec.initial, spec.max_delay
                ),
            ));
        }
        if !(spec.multiplier.is_finite() && spec.multiplier >= 1.0 && spec.multiplier <= 100.0) {
            return Err((
                "multiplier",
                format!(
                    "{}; write a number from 1 to 100 (2 doubles each delay)",
                    spec.multiplier
                ),
            ));
        }
        if !(spec.jitter.is_finite() && (0.0..=1.0).contains(&spec.jitter)) {
            return Err((
                "jitter",
                format!("{}; write a fraction from 0 (none) to 1", spec.jitter),
            ));
        }
        Ok(Self {
            max_attempts: spec.attempts,
            backoff: spec.backoff,
            initial: spec.initial.get(),
            max_delay: spec.max_delay.get(),
            multiplier: spec.multiplier,
            jitter: spec.jitter,
        })
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the attempt after `failed`, or `None` when `failed` was the last one.
    /// `sample` in `[0, 1)` picks the jitter; passing it in keeps this pure and replayable.
    pub fn next_delay(&self, failed: Attempt, sample: f64) -> Option<Duration> {
        if failed.get() >= self.max_attempts {
            return None;
        }
        let base = match self.backoff {
            Backoff::Fixed => self.initial,
            Backoff::Exponential => {
                let exp = i32::try_from(failed.get() - 1).unwrap_or(i32::MAX);
                let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
                if secs.is_finite() && secs < self.max_delay.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    self.max_delay
                }
            }
        }
        .min(self.max_delay);
        let sample = sample.clamp(0.0, 1.0);
        Some(base.mul_f64(1.0 - self.jitter * sample))
    }
}

/// A number in `[0, 1)` derived from `parts`, the same every time: retries of different runs
/// spread out, and replaying a run's events gives the same delays.
pub fn jitter_sample(parts: &[&str]) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // The top 53 bits fill an f64's mantissa exactly.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schemas::Dur;

    fn spec(attempts: u32) -> RetrySpec {
        RetrySpec {
            attempts,
            backoff: Backoff::Exponential,
            initial: Dur::secs(1),
            max_delay: Dur::secs(10),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    #[test]
    fn exponential_backoff_is_capped_and_bounded() {
        let p = RetryPolicy::try_from_spec(&spec(6)).unwrap();
        let delays: Vec<_> = (1..=6)
            .map(|n| {
                p.next_delay(Attempt::new(n).unwrap(), 0.5)
                    .map(|d| d.as_secs())
            })
            .collect();
        assert_eq!(delays, [Some(1), Some(2), Some(4), Some(8), Some(10), None]);
        let jittery = RetryPolicy::try_from_spec(&RetrySpec {
            jitter: 0.5,
            ..spec(3)
        })
        .unwrap();
        let d = jittery.next_delay(Attempt::FIRST, 1.0).unwrap();
        assert_eq!(d, Duration::from_millis(500));
        let fixed = RetryPolicy::try_from_spec(&RetrySpec {
            backoff: Backoff::Fixed,
            ..spec(3)
        })
        .unwrap();
        assert_eq!(
            fixed.next_delay(Attempt::new(2).unwrap(), 0.0),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        assert_eq!(
            RetryPolicy::try_from_spec(&spec(0)).unwrap_err().0,
            "attempts"
        );
        let slow = RetrySpec {
            initial: Dur::secs(60),
            ..spec(3)
        };
        assert_eq!(RetryPolicy::try_from_spec(&slow).unwrap_err().0, "initial");
        let shrink = RetrySpec {
            multiplier: 0.5,
            ..spec(3)
        };
        assert_eq!(
            RetryPolicy::try_from_spec(&shrink).unwrap_err().0,
            "multiplier"
        );
        let wild = RetrySpec {
            jitter: 2.0,
            ..spec(3)
        };
        assert_eq!(RetryPolicy::try_from_spec(&wild).unwrap_err().0, "jitter");
    }

    #[test]
    fn jitter_samples_are_stable_and_spread() {
        let a = jitter_sample(&["run_a", "step", "1"]);
        assert_eq!(a, jitter_sample(&["run_a", "step", "1"]));
        assert!((0.0..1.0).contains(&a));
        assert_ne!(a, jitter_sample(&["run_b", "step", "1"]));
        assert_ne!(jitter_sample(&["ab", "c"]), jitter_sample(&["a", "bc"]));
    }
}
