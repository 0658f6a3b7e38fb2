//! The (1+lambda) evolutionary algorithm with multi-step selection of EvoPress (Sieberling et al. 2024,
//! "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search", arXiv 2410.14649).
//!
//! One generation ([`Strategy::step`]):
//! 1. `lambda` distinct offspring, each a mutation of the parent (never equal to it);
//! 2. for each [`Screen`] step in order, evaluate the remaining offspring at that step's (small) fidelity
//!    and keep the `survivors` best;
//! 3. evaluate the last survivors at the fitness's full fidelity; the best replaces the parent only if it is
//!    strictly better than the parent at full fidelity.
//!
//! With no screening steps this is the plain (1+lambda) EA. The initial parent is the best of the seed
//! masks and `initial` random masks in all.

use std::collections::HashSet;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::fitness::{Fidelity, Fitness};
use crate::ga::{avoid_duplicate, fresh_sample, rank};
use crate::mask::Mask;
use crate::operators::{Mutation, SwapMutation};
use crate::strategy::{Context, Strategy};

/// One step of multi-step selection: evaluate at `fidelity`, keep the `survivors` best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screen {
    pub fidelity: Fidelity,
    pub survivors: usize,
}

/// Unchecked (1+lambda) parameters; [`OnePlusLambdaParams::check`] turns them into a [`OnePlusLambda`].
#[derive(Clone, Debug)]
pub struct OnePlusLambdaParams<M = SwapMutation> {
    lambda: usize,
    initial: usize,
    screening: Vec<Screen>,
    duplicate_retries: usize,
    mutation: M,
}

impl OnePlusLambdaParams {
    /// The defaults:
    ///
    /// | parameter | default |
    /// |---|---|
    /// | `lambda` (offspring per generation) | 16 |
    /// | `initial` (candidates for the first parent, seeds included) | 16 |
    /// | `screening` | none (every offspring at full fidelity) |
    /// | `duplicate_retries` | 8 |
    /// | `mutation` | [`SwapMutation`] with 1 / 2 / 3 swaps at 0.6 / 0.3 / 0.1 |
    pub fn new() -> Self {
        OnePlusLambdaParams { lambda: 16, initial: 16, screening: Vec::new(), duplicate_retries: 8, mutation: SwapMutation::default() }
    }
}

impl Default for OnePlusLambdaParams {
    fn default() -> Self {
        OnePlusLambdaParams::new()
    }
}

impl<M: Mutation> OnePlusLambdaParams<M> {
    /// Offspring per generation.
    pub fn lambda(mut self, n: usize) -> Self {
        self.lambda = n;
        self
    }
    /// Candidates evaluated for the first parent (seed masks first, then random ones).
    pub fn initial(mut self, n: usize) -> Self {
        self.initial = n;
        self
    }
    /// Multi-step selection: fidelities strictly increasing and below the fitness's maximum, survivors
    /// strictly decreasing, the first at most `lambda`.
    pub fn screening(mut self, steps: impl IntoIterator<Item = Screen>) -> Self {
        self.screening = steps.into_iter().collect();
        self
    }
    /// Extra mutations tried on an offspring equal to the parent or a sibling.
    pub fn duplicate_retries(mut self, n: usize) -> Self {
        self.duplicate_retries = n;
        self
    }
    /// Replaces the mutation operator.
    pub fn mutation<M2: Mutation>(self, mutation: M2) -> OnePlusLambdaParams<M2> {
        let OnePlusLambdaParams { lambda, initial, screening, duplicate_retries, .. } = self;
        OnePlusLambdaParams { lambda, initial, screening, duplicate_retries, mutation }
    }

    /// Validates the parameters (fidelities against the fitness are checked when the search starts).
    pub fn check(self) -> Result<OnePlusLambda<M>> {
        if self.lambda == 0 {
            return Err(SearchError::LambdaZero);
        }
        if self.initial == 0 {
            return Err(SearchError::InitialZero);
        }
        let mut prev = self.lambda + 1;
        for (step, s) in self.screening.iter().enumerate() {
            if s.survivors == 0 || s.survivors >= prev || s.survivors > self.lambda {
                return Err(SearchError::ScheduleSurvivors { step, survivors: s.survivors });
            }
            prev = s.survivors;
        }
        Ok(OnePlusLambda { p: self })
    }
}

/// Checked (1+lambda) parameters: a [`Strategy`] for [`crate::Search`].
#[derive(Clone, Debug)]
pub struct OnePlusLambda<M = SwapMutation> {
    p: OnePlusLambdaParams<M>,
}

/// The (1+lambda) state: the parent first, then the last generation's full-fidelity survivors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OnePlusLambdaState {
    population: Vec<Mask>,
    #[serde(with = "crate::checkpoint::f64_bits")]
    values: Vec<f64>,
}

impl OnePlusLambdaState {
    /// The current parent.
    pub fn parent(&self) -> (&Mask, f64) {
        (&self.population[0], self.values[0])
    }
}

impl<M: Mutation> Strategy for OnePlusLambda<M> {
    type State = OnePlusLambdaState;

    fn name(&self) -> &'static str {
        "one_plus_lambda"
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("lambda", self.p.lambda.to_string()),
            ("initial", self.p.initial.to_string()),
            ("screening", format!("{:?}", self.p.screening)),
            ("duplicate_retries", self.p.duplicate_retries.to_string()),
            ("mutation", format!("{:?}", self.p.mutation)),
        ]
    }

    fn validate(&self, max: Fidelity) -> Result<()> {
        let mut prev: Option<Fidelity> = None;
        for (step, s) in self.p.screening.iter().enumerate() {
            if s.fidelity >= max || prev.is_some_and(|p| s.fidelity <= p) {
                return Err(SearchError::ScheduleFidelity { step, fidelity: s.fidelity.0, max: max.0 });
            }
            prev = Some(s.fidelity);
        }
        Ok(())
    }

    fn init<F: Fitness + ?Sized>(&self, seeds: &[Mask], ctx: &mut Context<'_, F>) -> Result<OnePlusLambdaState> {
        let space = ctx.space;
        let mut seen = HashSet::new();
        let mut cands: Vec<Mask> = seeds.iter().filter(|m| seen.insert((*m).clone())).cloned().collect();
        while cands.len() < self.p.initial {
            let m = fresh_sample(space, &seen, 100, &mut *ctx.rng);
            seen.insert(m.clone());
            cands.push(m);
        }
        let values = ctx.evaluate(&cands, ctx.max_fidelity())?;
        let order = rank(&values, ctx);
        Ok(OnePlusLambdaState {
            population: order.iter().map(|&i| cands[i].clone()).collect(),
            values: order.iter().map(|&i| values[i]).collect(),
        })
    }

    fn step<F: Fitness + ?Sized>(&self, state: &mut OnePlusLambdaState, ctx: &mut Context<'_, F>) -> Result<()> {
        let space = ctx.space;
        let (parent, parent_value) = (state.population[0].clone(), state.values[0]);
        let rng: &mut dyn RngCore = &mut *ctx.rng;
        let mut seen = HashSet::from([parent.clone()]);
        let mut cands = Vec::with_capacity(self.p.lambda);
        for _ in 0..self.p.lambda {
            let mut child = parent.clone();
            self.p.mutation.mutate(space, &mut child, rng);
            avoid_duplicate(&self.p.mutation, space, &mut child, &seen, self.p.duplicate_retries, rng);
            seen.insert(child.clone());
            cands.push(child);
        }
        for s in &self.p.screening {
            let values = ctx.evaluate(&cands, s.fidelity)?;
            let order = rank(&values, ctx);
            cands = order[..s.survivors.min(order.len())].iter().map(|&i| cands[i].clone()).collect();
        }
        let values = ctx.evaluate(&cands, ctx.max_fidelity())?;
        let order = rank(&values, ctx);
        let best = order[0];
        let (parent, parent_value) =
            if ctx.cost(values[best]) < ctx.cost(parent_value) { (cands[best].clone(), values[best]) } else { (parent, parent_value) };
        state.population = std::iter::once(parent).chain(order.iter().map(|&i| cands[i].clone())).collect();
        state.values = std::iter::once(parent_value).chain(order.iter().map(|&i| values[i])).collect();
        Ok(())
    }

    fn population<'s>(&self, state: &'s OnePlusLambdaState) -> (&'s [Mask], &'s [f64]) {
        (&state.population, &state.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(f: u64, s: usize) -> Screen {
        Screen { fidelity: Fidelity(f), survivors: s }
    }

    #[test]
    fn lambda_and_initial_must_be_positive() {
        assert!(matches!(OnePlusLambdaParams::new().lambda(0).check(), Err(SearchError::LambdaZero)));
        assert!(matches!(OnePlusLambdaParams::new().initial(0).check(), Err(SearchError::InitialZero)));
    }

    #[test]
    fn survivors_must_shrink() {
        let p = || OnePlusLambdaParams::new().lambda(8);
        assert!(p().screening([screen(1, 4), screen(2, 2)]).check().is_ok());
        assert!(matches!(p().screening([screen(1, 9)]).check(), Err(SearchError::ScheduleSurvivors { step: 0, survivors: 9 })));
        assert!(matches!(p().screening([screen(1, 4), screen(2, 4)]).check(), Err(SearchError::ScheduleSurvivors { step: 1, .. })));
        assert!(matches!(p().screening([screen(1, 0)]).check(), Err(SearchError::ScheduleSurvivors { step: 0, .. })));
    }

    #[test]
    fn fidelities_must_grow_below_the_maximum() {
        let p = |s: Vec<Screen>| OnePlusLambdaParams::new().lambda(8).screening(s).check().unwrap();
        assert!(p(vec![screen(1, 4), screen(2, 2)]).validate(Fidelity(3)).is_ok());
        assert!(matches!(p(vec![screen(2, 4), screen(2, 2)]).validate(Fidelity(3)), Err(SearchError::ScheduleFidelity { step: 1, .. })));
        assert!(matches!(p(vec![screen(1, 4), screen(3, 2)]).validate(Fidelity(3)), Err(SearchError::ScheduleFidelity { step: 1, .. })));
    }
}
