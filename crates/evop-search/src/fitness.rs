//! What the search optimises: a batch-shaped, fallible [`Fitness`] with a fidelity argument, the
//! optimisation [`Direction`], and two closure adapters.
//!
//! The fitness sees a whole batch so that one implementation can batch masks on a GPU and another can fan
//! them out to threads, devices or machines (see [`crate::evaluator`]). The fidelity says how much of the
//! calibration data to use; the GA always asks for [`Fitness::max_fidelity`], the (1+lambda) EA screens
//! offspring at smaller fidelities first (EvoPress's multi-step selection).

use std::convert::Infallible;

use serde::{Deserialize, Serialize};

use crate::mask::Mask;

/// How much evaluation effort to spend per mask (e.g. calibration tokens). The meaning is the fitness's;
/// the search only needs the order. [`Fidelity::FULL`] means "everything".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fidelity(pub u64);

impl Fidelity {
    /// The largest fidelity: all of the fitness's data.
    pub const FULL: Fidelity = Fidelity(u64::MAX);
}

/// Whether lower or higher fitness values are better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Lower is better (perplexity, loss, KL divergence). The default.
    #[default]
    Minimize,
    /// Higher is better (accuracy).
    Maximize,
}

impl Direction {
    /// The value as a cost to minimise: NaN and infinite values (of either sign) become `+inf`, so they
    /// rank worst whatever the direction.
    pub fn cost(self, value: f64) -> f64 {
        if !value.is_finite() {
            f64::INFINITY
        } else {
            match self {
                Direction::Minimize => value,
                Direction::Maximize => -value,
            }
        }
    }

    /// Whether `a` is strictly better than `b` (non-finite values are never better).
    pub fn is_better(self, a: f64, b: f64) -> bool {
        self.cost(a) < self.cost(b)
    }
}

/// A batch-shaped, fallible objective over masks.
///
/// `evaluate` must return exactly one value per mask, in order. Values may be NaN or infinite (a model that
/// diverged); the search ranks them worst and counts them. The search never passes the same mask twice at
/// the same fidelity (a memo cache sits in front), so implementations need no cache of their own.
pub trait Fitness {
    /// The implementation's own error; the search wraps it in [`crate::SearchError::Fitness`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// One value per mask, evaluated at `fidelity` (at most [`Fitness::max_fidelity`]).
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, Self::Error>;

    /// The fidelity of a full evaluation, which final comparisons use. Defaults to [`Fidelity::FULL`].
    fn max_fidelity(&self) -> Fidelity {
        Fidelity::FULL
    }
}

impl<T: Fitness + ?Sized> Fitness for &T {
    type Error = T::Error;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, Self::Error> {
        (**self).evaluate(masks, fidelity)
    }
    fn max_fidelity(&self) -> Fidelity {
        (**self).max_fidelity()
    }
}

/// A fitness from an infallible per-mask closure, evaluated serially; the fidelity is ignored.
/// For a parallel one see [`crate::evaluator::ParallelFitness`].
#[derive(Clone, Debug)]
pub struct FnFitness<F>(pub F);

impl<F: Fn(&Mask) -> f64> Fitness for FnFitness<F> {
    type Error = Infallible;
    fn evaluate(&self, masks: &[Mask], _: Fidelity) -> Result<Vec<f64>, Infallible> {
        Ok(masks.iter().map(&self.0).collect())
    }
}

/// A fitness from a batch closure `(masks, fidelity) -> Result<Vec<f64>, E>`.
#[derive(Clone, Debug)]
pub struct BatchFitness<F> {
    f: F,
    max_fidelity: Fidelity,
}

impl<F> BatchFitness<F> {
    /// Wraps `f`; its maximum fidelity is [`Fidelity::FULL`] unless set with [`BatchFitness::max_fidelity`].
    pub fn new(f: F) -> Self {
        BatchFitness { f, max_fidelity: Fidelity::FULL }
    }

    /// Sets the fidelity of a full evaluation.
    pub fn max_fidelity(mut self, fidelity: Fidelity) -> Self {
        self.max_fidelity = fidelity;
        self
    }
}

impl<F, E> Fitness for BatchFitness<F>
where
    F: Fn(&[Mask], Fidelity) -> Result<Vec<f64>, E>,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, E> {
        (self.f)(masks, fidelity)
    }
    fn max_fidelity(&self) -> Fidelity {
        self.max_fidelity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_ranks_worst_in_both_directions() {
        for d in [Direction::Minimize, Direction::Maximize] {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(d.is_better(1e300, bad));
                assert!(d.is_better(-1e300, bad));
                assert!(!d.is_better(bad, 0.0));
            }
        }
        assert!(Direction::Minimize.is_better(1.0, 2.0));
        assert!(Direction::Maximize.is_better(2.0, 1.0));
        assert!(!Direction::Minimize.is_better(1.0, 1.0));
    }
}
