//! Binomial confidence intervals for accuracies.
//!
//! The Wilson score interval (Wilson 1927) is used instead of the normal ("Wald") approximation that
//! lm-evaluation-harness reports as a standard error: on the 100-250-item subsets evop evaluates, the
//! Wald interval is too narrow near 0 and 1 and can leave `[0, 1]`; Wilson's cannot.
use serde::{Deserialize, Serialize};

/// The 97.5% quantile of the standard normal distribution (two-sided 95%).
pub const Z95: f64 = 1.959_963_984_540_054;

/// A closed interval `[lo, hi]` within `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

/// The Wilson score interval for `successes` out of `n` trials at normal quantile `z`.
/// `n = 0` gives the uninformative `[0, 1]`; `successes > n` is clamped to `n`.
pub fn wilson_interval(successes: usize, n: usize, z: f64) -> Interval {
    if n == 0 {
        return Interval { lo: 0.0, hi: 1.0 };
    }
    let n_f = n as f64;
    let p = successes.min(n) as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let center = (p + z2 / (2.0 * n_f)) / denom;
    let half = z / denom * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    Interval { lo: (center - half).max(0.0), hi: (center + half).min(1.0) }
}

/// The 95% Wilson interval.
pub fn wilson95(successes: usize, n: usize) -> Interval {
    wilson_interval(successes, n, Z95)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_values() {
        // Reference values: the closed form evaluated independently in Python (double precision).
        let i = wilson95(50, 100);
        assert!((i.lo - 0.403_831_5).abs() < 1e-6 && (i.hi - 0.596_168_5).abs() < 1e-6, "{i:?}");
        let i = wilson95(0, 10);
        assert!(i.lo.abs() < 1e-12 && (i.hi - 0.277_532_8).abs() < 1e-6, "{i:?}");
        let i = wilson95(10, 10);
        assert!((i.lo - 0.722_467_2).abs() < 1e-6 && (i.hi - 1.0).abs() < 1e-12, "{i:?}");
    }

    #[test]
    fn contains_the_estimate_and_narrows_with_n() {
        for (k, n) in [(1, 3), (7, 20), (120, 200), (199, 200)] {
            let i = wilson95(k, n);
            let p = k as f64 / n as f64;
            assert!(i.lo <= p && p <= i.hi && i.lo >= 0.0 && i.hi <= 1.0);
        }
        let wide = wilson95(50, 100);
        let narrow = wilson95(500, 1000);
        assert!(narrow.hi - narrow.lo < wide.hi - wide.lo);
        assert_eq!(wilson95(0, 0), Interval { lo: 0.0, hi: 1.0 });
    }
}
