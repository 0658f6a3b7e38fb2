//! EPPS, the evolutionary pruning-pattern search of EvoP (Wu et al. 2025, arXiv 2502.14910): a
//! generational genetic algorithm over masks with elitism, tournament selection, shared-removed crossover,
//! swap mutation, random immigrants and duplicate avoidance.
//!
//! One generation ([`Strategy::step`]):
//! 1. the `elites` best distinct masks pass unchanged (their values are carried, not re-looked-up);
//! 2. offspring fill the population up to `population - immigrants`: two parents by selection, crossover
//!    with probability `crossover_prob` (otherwise a copy of the first parent), mutation with probability
//!    `mutation_prob`; a child equal to one already in the new population is mutated again (up to
//!    `duplicate_retries` times) so that slots are not wasted on clones;
//! 3. `immigrants` uniformly random masks (also kept distinct when possible) keep diversity up;
//! 4. the new masks are evaluated in one batch at full fidelity and the population is sorted best-first
//!    (stable, so ties keep their order and the trajectory is deterministic).

use std::collections::HashSet;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::fitness::Fitness;
use crate::mask::Mask;
use crate::operators::{Crossover, Mutation, Selection, SharedRemovedCrossover, SwapMutation, Tournament};
use crate::strategy::{Context, Strategy};

/// Unchecked GA parameters (a builder); [`GaParams::check`] turns them into a [`Ga`].
#[derive(Clone, Debug)]
pub struct GaParams<S = Tournament, C = SharedRemovedCrossover, M = SwapMutation> {
    population: usize,
    elites: usize,
    immigrants: f64,
    crossover_prob: f64,
    mutation_prob: f64,
    duplicate_retries: usize,
    near_seeds: bool,
    selection: S,
    crossover: C,
    mutation: M,
}

impl GaParams {
    /// The defaults:
    ///
    /// | parameter | default |
    /// |---|---|
    /// | `population` | 32 |
    /// | `elites` | 2 |
    /// | `immigrants` (fraction of the population, rounded) | 0.1 (3 of 32) |
    /// | `crossover_prob` | 0.9 |
    /// | `mutation_prob` | 0.5 |
    /// | `duplicate_retries` | 8 |
    /// | `selection` | [`Tournament`] of size 3 |
    /// | `crossover` | [`SharedRemovedCrossover`] |
    /// | `mutation` | [`SwapMutation`] with 1 / 2 / 3 swaps at 0.6 / 0.3 / 0.1 |
    pub fn new() -> Self {
        GaParams {
            population: 32,
            elites: 2,
            immigrants: 0.1,
            crossover_prob: 0.9,
            mutation_prob: 0.5,
            duplicate_retries: 8,
            near_seeds: false,
            selection: Tournament::default(),
            crossover: SharedRemovedCrossover,
            mutation: SwapMutation::default(),
        }
    }
}

impl Default for GaParams {
    fn default() -> Self {
        GaParams::new()
    }
}

impl<S: Selection, C: Crossover, M: Mutation> GaParams<S, C, M> {
    /// Number of masks per generation (at least 2).
    pub fn population(mut self, n: usize) -> Self {
        self.population = n;
        self
    }
    /// Best masks copied unchanged into the next generation.
    pub fn elites(mut self, n: usize) -> Self {
        self.elites = n;
        self
    }
    /// Fraction of each generation replaced by uniformly random masks, in `[0, 1]`.
    pub fn immigrants(mut self, fraction: f64) -> Self {
        self.immigrants = fraction;
        self
    }
    /// Probability that a child comes from crossover rather than a copy of one parent.
    pub fn crossover_prob(mut self, p: f64) -> Self {
        self.crossover_prob = p;
        self
    }
    /// Probability that a child is mutated.
    pub fn mutation_prob(mut self, p: f64) -> Self {
        self.mutation_prob = p;
        self
    }
    /// Extra mutations tried on a child that duplicates a mask already in the next generation.
    pub fn duplicate_retries(mut self, n: usize) -> Self {
        self.duplicate_retries = n;
        self
    }
    /// Fills the initial population with mutants of the seed masks (each a seed, in turn, after one
    /// mutation) instead of uniformly random masks: a search that starts in the seeds'
    /// neighbourhood (at high sparsity a random mask is so much worse than a baseline's answer
    /// that it only ever loses the first selections). Without seed masks the population is random
    /// as usual. Default `false`.
    pub fn init_near_seeds(mut self, yes: bool) -> Self {
        self.near_seeds = yes;
        self
    }
    /// Replaces the selection operator.
    pub fn selection<S2: Selection>(self, selection: S2) -> GaParams<S2, C, M> {
        let GaParams { population, elites, immigrants, crossover_prob, mutation_prob, duplicate_retries, crossover, mutation, near_seeds, .. } = self;
        GaParams { population, elites, immigrants, crossover_prob, mutation_prob, duplicate_retries, near_seeds, selection, crossover, mutation }
    }
    /// Replaces the crossover operator.
    pub fn crossover<C2: Crossover>(self, crossover: C2) -> GaParams<S, C2, M> {
        let GaParams { population, elites, immigrants, crossover_prob, mutation_prob, duplicate_retries, selection, mutation, near_seeds, .. } = self;
        GaParams { population, elites, immigrants, crossover_prob, mutation_prob, duplicate_retries, near_seeds, selection, crossover, mutation }
    }
    /// Replaces the mutation operator.
    pub fn mutation<M2: Mutation>(self, mutation: M2) -> GaParams<S, C, M2> {
        let GaParams { population, elites, immigrants, crossover_prob, mutation_prob, duplicate_retries, selection, crossover, near_seeds, .. } = self;
        GaParams { population, elites, immigrants, crossover_prob, mutation_prob, duplicate_retries, near_seeds, selection, crossover, mutation }
    }

    /// Validates the parameters.
    pub fn check(self) -> Result<Ga<S, C, M>> {
        for (name, value) in [("immigrants", self.immigrants), ("crossover_prob", self.crossover_prob), ("mutation_prob", self.mutation_prob)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(SearchError::InvalidProbability { name, value });
            }
        }
        if self.population < 2 {
            return Err(SearchError::PopulationTooSmall { min: 2, found: self.population });
        }
        let immigrants = (self.immigrants * self.population as f64).round() as usize;
        if self.elites + immigrants >= self.population {
            return Err(SearchError::NoRoomForOffspring { elites: self.elites, immigrants, population: self.population });
        }
        Ok(Ga { p: self, immigrants })
    }
}

/// Checked GA parameters: a [`Strategy`] for [`crate::Search`].
#[derive(Clone, Debug)]
pub struct Ga<S = Tournament, C = SharedRemovedCrossover, M = SwapMutation> {
    p: GaParams<S, C, M>,
    immigrants: usize,
}

impl<S, C, M> Ga<S, C, M> {
    /// Masks per generation.
    pub fn population(&self) -> usize {
        self.p.population
    }
    /// Elites per generation.
    pub fn elites(&self) -> usize {
        self.p.elites
    }
    /// Random immigrants per generation (the fraction, rounded).
    pub fn immigrants(&self) -> usize {
        self.immigrants
    }
}

/// The GA's state between generations: the population, best first, and its full-fidelity values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GaState {
    population: Vec<Mask>,
    #[serde(with = "crate::checkpoint::f64_bits")]
    values: Vec<f64>,
}

impl GaState {
    /// The population, best first.
    pub fn population(&self) -> &[Mask] {
        &self.population
    }
    /// Its values, in the same order.
    pub fn values(&self) -> &[f64] {
        &self.values
    }
}

/// Mutates `child` until it is not in `seen` (at most `retries` times).
pub(crate) fn avoid_duplicate<M: Mutation + ?Sized>(
    mutation: &M,
    space: &crate::MaskSpace,
    child: &mut Mask,
    seen: &HashSet<Mask>,
    retries: usize,
    rng: &mut dyn RngCore,
) {
    let mut tries = 0;
    while tries < retries && seen.contains(child) {
        mutation.mutate(space, child, rng);
        tries += 1;
    }
}

/// A random mask not in `seen`, if one is found in a few draws (otherwise the last draw).
pub(crate) fn fresh_sample(space: &crate::MaskSpace, seen: &HashSet<Mask>, retries: usize, rng: &mut dyn RngCore) -> Mask {
    let mut m = space.sample(rng);
    for _ in 0..retries {
        if !seen.contains(&m) {
            break;
        }
        m = space.sample(rng);
    }
    m
}

/// Indices of `values` sorted by cost, best first; stable.
pub(crate) fn rank<F: Fitness + ?Sized>(values: &[f64], ctx: &Context<'_, F>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| ctx.cost(values[a]).total_cmp(&ctx.cost(values[b])));
    idx
}

impl<S: Selection, C: Crossover, M: Mutation> Strategy for Ga<S, C, M> {
    type State = GaState;

    fn name(&self) -> &'static str {
        "ga"
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        let p = &self.p;
        let mut params = vec![
            ("population", p.population.to_string()),
            ("elites", p.elites.to_string()),
            ("immigrants", self.immigrants.to_string()),
            ("crossover_prob", format!("{:?}", p.crossover_prob)),
            ("mutation_prob", format!("{:?}", p.mutation_prob)),
            ("duplicate_retries", p.duplicate_retries.to_string()),
            ("selection", format!("{:?}", p.selection)),
            ("crossover", format!("{:?}", p.crossover)),
            ("mutation", format!("{:?}", p.mutation)),
        ];
        // Listed only when on, so checkpoints written before the option existed still resume.
        if p.near_seeds {
            params.push(("init_near_seeds", "true".to_string()));
        }
        params
    }

    fn init<F: Fitness + ?Sized>(&self, seeds: &[Mask], ctx: &mut Context<'_, F>) -> Result<GaState> {
        let space = ctx.space;
        let mut seen = HashSet::new();
        let mut population = Vec::with_capacity(self.p.population);
        for m in seeds {
            if population.len() < self.p.population && seen.insert(m.clone()) {
                population.push(m.clone());
            }
        }
        let placed = population.len();
        let mut turn = 0;
        while self.p.near_seeds && placed > 0 && population.len() < self.p.population {
            let mut m = population[turn % placed].clone();
            turn += 1;
            self.p.mutation.mutate(space, &mut m, &mut *ctx.rng);
            avoid_duplicate(&self.p.mutation, space, &mut m, &seen, self.p.duplicate_retries, &mut *ctx.rng);
            if !seen.insert(m.clone()) {
                // The neighbourhood is exhausted for now: random masks fill the rest.
                break;
            }
            population.push(m);
        }
        while population.len() < self.p.population {
            let m = fresh_sample(space, &seen, 100, &mut *ctx.rng);
            seen.insert(m.clone());
            population.push(m);
        }
        let values = ctx.evaluate(&population, ctx.max_fidelity())?;
        Ok(sorted(population, values, ctx))
    }

    fn step<F: Fitness + ?Sized>(&self, state: &mut GaState, ctx: &mut Context<'_, F>) -> Result<()> {
        let p = &self.p;
        let space = ctx.space;
        let costs: Vec<f64> = state.values.iter().map(|&v| ctx.cost(v)).collect();
        let mut seen: HashSet<Mask> = HashSet::with_capacity(2 * p.population);
        let mut next = Vec::with_capacity(p.population);
        let mut next_values = Vec::with_capacity(p.elites);
        for (m, &v) in state.population.iter().zip(&state.values) {
            if next.len() == p.elites {
                break;
            }
            if seen.insert(m.clone()) {
                next.push(m.clone());
                next_values.push(v);
            }
        }
        let n_elites = next.len();
        let n_offspring = p.population - n_elites - self.immigrants;
        let rng: &mut dyn RngCore = &mut *ctx.rng;
        for _ in 0..n_offspring {
            let parents = p.selection.select(&costs, 2, rng);
            let (a, b) = (&state.population[parents[0]], &state.population[parents[1]]);
            let mut child = if rng.random_bool(p.crossover_prob) { p.crossover.crossover(space, a, b, rng) } else { a.clone() };
            if rng.random_bool(p.mutation_prob) {
                p.mutation.mutate(space, &mut child, rng);
            }
            avoid_duplicate(&p.mutation, space, &mut child, &seen, p.duplicate_retries, rng);
            seen.insert(child.clone());
            next.push(child);
        }
        for _ in 0..self.immigrants {
            let m = fresh_sample(space, &seen, p.duplicate_retries, rng);
            seen.insert(m.clone());
            next.push(m);
        }
        let fresh = ctx.evaluate(&next[n_elites..], ctx.max_fidelity())?;
        next_values.extend(fresh);
        *state = sorted(next, next_values, ctx);
        Ok(())
    }

    fn population<'s>(&self, state: &'s GaState) -> (&'s [Mask], &'s [f64]) {
        (&state.population, &state.values)
    }
}

fn sorted<F: Fitness + ?Sized>(population: Vec<Mask>, values: Vec<f64>, ctx: &Context<'_, F>) -> GaState {
    let order = rank(&values, ctx);
    GaState { population: order.iter().map(|&i| population[i].clone()).collect(), values: order.iter().map(|&i| values[i]).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let ga = GaParams::new().check().unwrap();
        assert_eq!((ga.population(), ga.elites(), ga.immigrants()), (32, 2, 3));
    }

    #[test]
    fn probabilities_are_validated() {
        assert!(matches!(GaParams::new().crossover_prob(1.1).check(), Err(SearchError::InvalidProbability { name: "crossover_prob", .. })));
        assert!(matches!(GaParams::new().mutation_prob(f64::NAN).check(), Err(SearchError::InvalidProbability { name: "mutation_prob", .. })));
        assert!(matches!(GaParams::new().immigrants(-0.1).check(), Err(SearchError::InvalidProbability { name: "immigrants", .. })));
    }

    #[test]
    fn population_is_validated() {
        assert!(matches!(GaParams::new().population(1).elites(0).immigrants(0.0).check(), Err(SearchError::PopulationTooSmall { min: 2, found: 1 })));
    }

    #[test]
    fn offspring_must_have_room() {
        assert!(matches!(
            GaParams::new().population(10).elites(9).immigrants(0.1).check(),
            Err(SearchError::NoRoomForOffspring { elites: 9, immigrants: 1, population: 10 })
        ));
        assert!(GaParams::new().population(10).elites(8).immigrants(0.1).check().is_ok());
    }
}
