//! The seam between an algorithm and the loop that drives it (as in argmin): a [`Strategy`] knows how to
//! build a first state and advance it by one generation; [`crate::Search`] owns the loop, the RNG, the memo
//! cache, termination, observers and checkpoints.

use std::fmt::Debug;

use rand_chacha::ChaCha8Rng;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Result;
use crate::fitness::{Direction, Fidelity, Fitness};
use crate::mask::{Mask, MaskSpace};
use crate::memo::Memo;

/// What a strategy may use during one step: the space, the seeded RNG, and cached evaluation.
pub struct Context<'a, F: ?Sized> {
    pub(crate) space: &'a MaskSpace,
    pub(crate) fitness: &'a F,
    pub(crate) memo: &'a mut Memo,
    pub(crate) rng: &'a mut ChaCha8Rng,
    pub(crate) direction: Direction,
}

impl<F: Fitness + ?Sized> Context<'_, F> {
    /// The space of legal masks.
    pub fn space(&self) -> &MaskSpace {
        self.space
    }

    /// The search's seeded RNG; strategies must draw all their randomness from it.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        self.rng
    }

    /// Whether lower or higher values are better.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The fitness's full fidelity.
    pub fn max_fidelity(&self) -> Fidelity {
        self.fitness.max_fidelity()
    }

    /// Values of `masks` at `fidelity`, through the memo cache. Every mask is checked against the space
    /// first, so a faulty operator surfaces as an error instead of a silently illegal evaluation.
    pub fn evaluate(&mut self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>> {
        for m in masks {
            self.space.check(m)?;
        }
        self.memo.evaluate(self.fitness, masks, fidelity)
    }

    /// `value` as a cost to minimise (see [`Direction::cost`]).
    pub fn cost(&self, value: f64) -> f64 {
        self.direction.cost(value)
    }
}

/// One search algorithm, advanced one generation at a time by [`crate::Search`].
pub trait Strategy {
    /// Everything the algorithm carries between generations; checkpoints serialise it.
    type State: Clone + Debug + Serialize + DeserializeOwned;

    /// A short name, stored in checkpoints.
    fn name(&self) -> &'static str;

    /// The parameters that define the trajectory, as `(name, value)` pairs; a checkpoint written with
    /// other values is refused on resume.
    fn params(&self) -> Vec<(&'static str, String)>;

    /// Checks the parameters against the fitness's maximum fidelity (called before the first step).
    fn validate(&self, _max_fidelity: Fidelity) -> Result<()> {
        Ok(())
    }

    /// The first state, built from the caller's seed masks (already checked) and random masks.
    fn init<F: Fitness + ?Sized>(&self, seeds: &[Mask], ctx: &mut Context<'_, F>) -> Result<Self::State>;

    /// Advances `state` by one generation.
    fn step<F: Fitness + ?Sized>(&self, state: &mut Self::State, ctx: &mut Context<'_, F>) -> Result<()>;

    /// The current population and its full-fidelity values (for reports and the best-so-far).
    fn population<'s>(&self, state: &'s Self::State) -> (&'s [Mask], &'s [f64]);
}
