//! Retry delays of a job type's policy.
//!
//! The raw delay of attempt n (1-based) is base*2^(n-1) (exponential),
//! base*n (linear) or base (fixed). The cap (max_ms) applies to the raw
//! delay first and the jitter spreads the capped value by +/- jitter*delay,
//! as the .pyi documents: so with jitter a delay may exceed max_ms by at most
//! that fraction, and retries of jobs that failed together still spread out
//! once the cap is reached (capping after jitter would bunch them at max_ms).

use std::str::FromStr;
use std::time::Duration;

use crate::errors::CoreError;

/// Exponent cap so 2^(n-1) stays finite whatever the attempt number.
const MAX_EXPONENT: u32 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    Exponential,
    Linear,
    Fixed,
}

impl FromStr for BackoffKind {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exponential" => Ok(BackoffKind::Exponential),
            "linear" => Ok(BackoffKind::Linear),
            "fixed" => Ok(BackoffKind::Fixed),
            other => Err(CoreError::Invalid(format!(
                "backoff must be exponential, linear or fixed, not {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    kind: BackoffKind,
    base_ms: f64,
    max_ms: Option<f64>,
    jitter: f64,
}

impl Backoff {
    /// Validates here so a bad policy fails at Core creation, not at a retry.
    pub fn new(
        kind: BackoffKind,
        base_ms: f64,
        max_ms: Option<f64>,
        jitter: f64,
    ) -> Result<Self, CoreError> {
        if !base_ms.is_finite() || base_ms < 0.0 {
            return Err(CoreError::Invalid(format!(
                "base_ms must be >= 0, not {base_ms}"
            )));
        }
        if let Some(m) = max_ms {
            if !m.is_finite() || m < 0.0 {
                return Err(CoreError::Invalid(format!("max_ms must be >= 0, not {m}")));
            }
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(CoreError::Invalid(format!(
                "jitter must be in 0.0-1.0, not {jitter}"
            )));
        }
        Ok(Backoff {
            kind,
            base_ms,
            max_ms,
            jitter,
        })
    }

    /// The capped delay before jitter; attempt 0 is treated as 1.
    pub fn raw_ms(&self, attempt: u32) -> f64 {
        let n = attempt.max(1);
        let raw = match self.kind {
            BackoffKind::Exponential => self.base_ms * 2f64.powi((n - 1).min(MAX_EXPONENT) as i32),
            BackoffKind::Linear => self.base_ms * f64::from(n),
            BackoffKind::Fixed => self.base_ms,
        };
        self.max_ms.map_or(raw, |m| raw.min(m))
    }

    /// The delay with jitter, from a uniform sample u in [0, 1).
    pub fn delay_with(&self, attempt: u32, u: f64) -> f64 {
        let d = self.raw_ms(attempt);
        (d * (1.0 + self.jitter * (2.0 * u - 1.0))).max(0.0)
    }

    /// The delay with jitter from the thread's fast RNG.
    pub fn delay_ms(&self, attempt: u32) -> f64 {
        self.delay_with(attempt, fastrand::f64())
    }
}

/// The doubling pause between retries of a failing database operation
/// (claim, report flush, reconnect): 100 ms up to 2 s.
#[derive(Debug, Clone)]
pub struct RetryDelay {
    next: Duration,
}

impl RetryDelay {
    pub const MIN: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(2);

    /// The pause before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        delay
    }

    /// After a success the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay { next: Self::MIN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_to_its_cap_and_resets() {
        let mut r = RetryDelay::default();
        let ms: Vec<u128> = (0..7).map(|_| r.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        r.reset();
        assert_eq!(r.next_delay(), RetryDelay::MIN);
    }

    fn backoff(kind: BackoffKind, max: Option<f64>, jitter: f64) -> Backoff {
        Backoff::new(kind, 1000.0, max, jitter).unwrap()
    }

    #[test]
    fn exponential_doubles_from_base() {
        let b = backoff(BackoffKind::Exponential, None, 0.0);
        let got: Vec<f64> = (1..=5).map(|n| b.delay_ms(n)).collect();
        assert_eq!(got, [1000.0, 2000.0, 4000.0, 8000.0, 16000.0]);
    }

    #[test]
    fn linear_and_fixed_schedules() {
        let l = backoff(BackoffKind::Linear, None, 0.0);
        assert_eq!(
            (1..=4).map(|n| l.raw_ms(n)).collect::<Vec<_>>(),
            [1000.0, 2000.0, 3000.0, 4000.0]
        );
        let f = backoff(BackoffKind::Fixed, None, 0.0);
        assert_eq!(
            (1..=3).map(|n| f.raw_ms(n)).collect::<Vec<_>>(),
            [1000.0; 3]
        );
    }

    #[test]
    fn cap_applies_to_every_kind() {
        for kind in [BackoffKind::Exponential, BackoffKind::Linear] {
            let b = backoff(kind, Some(3000.0), 0.0);
            assert_eq!(b.raw_ms(10), 3000.0);
        }
        assert_eq!(
            backoff(BackoffKind::Fixed, Some(500.0), 0.0).raw_ms(1),
            500.0
        );
    }

    #[test]
    fn huge_attempts_stay_finite() {
        let b = backoff(BackoffKind::Exponential, None, 0.0);
        assert!(b.raw_ms(u32::MAX).is_finite());
        assert_eq!(b.raw_ms(0), 1000.0);
    }

    #[test]
    fn jitter_spreads_the_capped_delay_within_bounds() {
        let b = backoff(BackoffKind::Exponential, Some(4000.0), 0.25);
        assert_eq!(b.delay_with(10, 0.0), 3000.0);
        assert_eq!(b.delay_with(10, 0.5), 4000.0);
        for _ in 0..10_000 {
            let d = b.delay_ms(3);
            assert!((3000.0..=5000.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn full_jitter_never_goes_negative() {
        let b = backoff(BackoffKind::Fixed, None, 1.0);
        assert_eq!(b.delay_with(1, 0.0), 0.0);
        for _ in 0..10_000 {
            let d = b.delay_ms(1);
            assert!((0.0..=2000.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!("cubic".parse::<BackoffKind>().is_err());
        assert!(Backoff::new(BackoffKind::Fixed, -1.0, None, 0.0).is_err());
        assert!(Backoff::new(BackoffKind::Fixed, 1.0, Some(f64::NAN), 0.0).is_err());
        assert!(Backoff::new(BackoffKind::Fixed, 1.0, None, 1.5).is_err());
    }
}
