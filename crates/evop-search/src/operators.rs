//! Variation and selection operators, as traits with defaults that keep the mask constraint by
//! construction (no repair step):
//!
//! - [`Selection`] / [`Tournament`]: pick parents by cost.
//! - [`Crossover`] / [`SharedRemovedCrossover`]: keep the blocks both parents remove, fill the rest from the
//!   blocks only one parent removes. [`OnePointCrossover`]: the same, with the first parent's choices kept
//!   unchanged before a cut point in block order.
//! - [`Mutation`] / [`SwapMutation`]: restore some removed blocks and remove as many kept ones.
//!   [`ShiftMutation`]: the same, each removal moved to a kept block within a few positions.
//!
//! Block order matters to the cost of evaluating a child: an exact evaluator with a prefix cache
//! (evop-model's `CalibrationEvaluator`) resumes a mask from the state of the longest block prefix
//! it shares with a mask evaluated before, so a child that keeps a parent's choices up to block `c`
//! costs only the blocks from `c` on. The one-point and shift operators keep those prefixes long;
//! whether the search finds masks as good per candidate is measured in docs/search.md.
//!
//! Elitism, random immigrants and duplicate avoidance are population-level and live in [`crate::ga`].
//! Operators receive `&mut dyn RngCore` (the search's seeded RNG) so that they stay object-safe; they must
//! draw all their randomness from it.

use std::fmt::Debug;

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::mask::{Mask, MaskSpace};

/// Picks parents from a population.
pub trait Selection: Debug {
    /// `count` indices into `costs` (lower cost = better; non-finite values were already mapped to
    /// `+inf`). Must return exactly `count` indices when `costs` is not empty.
    fn select(&self, costs: &[f64], count: usize, rng: &mut dyn RngCore) -> Vec<usize>;
}

/// Tournament selection: each pick is the best of `size` uniform draws (with replacement); ties go to the
/// earlier draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tournament {
    size: usize,
}

impl Tournament {
    /// A tournament of `size` (at least 1; 1 is uniform random selection).
    pub fn new(size: usize) -> Result<Self> {
        if size == 0 {
            return Err(SearchError::TournamentSizeZero);
        }
        Ok(Tournament { size })
    }

    /// The tournament size.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// Size 3.
impl Default for Tournament {
    fn default() -> Self {
        Tournament { size: 3 }
    }
}

impl Selection for Tournament {
    fn select(&self, costs: &[f64], count: usize, rng: &mut dyn RngCore) -> Vec<usize> {
        if costs.is_empty() {
            return Vec::new();
        }
        (0..count)
            .map(|_| {
                let mut best = rng.random_range(0..costs.len());
                for _ in 1..self.size {
                    let c = rng.random_range(0..costs.len());
                    if costs[c].total_cmp(&costs[best]).is_lt() {
                        best = c;
                    }
                }
                best
            })
            .collect()
    }
}

/// Combines two parents into one child.
pub trait Crossover: Debug {
    /// A child of the space from two masks of the space.
    fn crossover(&self, space: &MaskSpace, a: &Mask, b: &Mask, rng: &mut dyn RngCore) -> Mask;
}

/// A boxed operator (e.g. one chosen at run time) is an operator.
impl<T: Crossover + ?Sized> Crossover for Box<T> {
    fn crossover(&self, space: &MaskSpace, a: &Mask, b: &Mask, rng: &mut dyn RngCore) -> Mask {
        (**self).crossover(space, a, b, rng)
    }
}

/// The child removes every block both parents remove, plus a uniform choice among the blocks exactly one
/// parent removes until it removes `n`. Both sets are free of protected blocks, and the second has
/// `2 * (n - shared)` members, so the child is always legal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRemovedCrossover;

impl Crossover for SharedRemovedCrossover {
    fn crossover(&self, space: &MaskSpace, a: &Mask, b: &Mask, rng: &mut dyn RngCore) -> Mask {
        assert_eq!(a.len(), b.len(), "crossover of masks of different lengths");
        let shared: Vec<u64> = a.words().iter().zip(b.words()).map(|(x, y)| x & y).collect();
        let mut child = Mask::from_words(a.len(), shared);
        let need = space.n_removed() - child.n_removed();
        let either: Vec<usize> = Mask::from_words(a.len(), a.words().iter().zip(b.words()).map(|(x, y)| x ^ y).collect())
            .removed()
            .collect();
        for k in rand::seq::index::sample(rng, either.len(), need) {
            child.set(either[k]);
        }
        child
    }
}

/// One-point crossover in block order: the child takes the first parent's choices on blocks
/// `0..c` and the second parent's on `c..L`, with `c` uniform in `(d_first, d_last]` where the
/// parents first and last differ (a cut outside that range would copy a parent). The count is then
/// repaired inside `c..L` only, from the parents' genes: excess removals are restored among the
/// blocks only the second parent removes there, missing ones taken from the blocks only the first
/// parent removes there (both sets are always large enough). So, as with
/// [`SharedRemovedCrossover`], the child removes every block both parents remove and nothing
/// neither removes; unlike it, the child agrees with the first parent on every block before `c`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnePointCrossover;

impl Crossover for OnePointCrossover {
    fn crossover(&self, space: &MaskSpace, a: &Mask, b: &Mask, rng: &mut dyn RngCore) -> Mask {
        assert_eq!(a.len(), b.len(), "crossover of masks of different lengths");
        let len = a.len();
        let differ: Vec<usize> = (0..len).filter(|&i| a.is_removed(i) != b.is_removed(i)).collect();
        let (Some(&first), Some(&last)) = (differ.first(), differ.last()) else {
            return a.clone();
        };
        let cut = rng.random_range(first + 1..=last);
        let mut child = a.clone();
        for i in cut..len {
            if b.is_removed(i) {
                child.set(i);
            } else {
                child.clear(i);
            }
        }
        let n = space.n_removed();
        let have = child.n_removed();
        let only_in = |x: &Mask, y: &Mask| -> Vec<usize> { (cut..len).filter(|&i| x.is_removed(i) && !y.is_removed(i)).collect() };
        if have > n {
            let pool = only_in(b, a);
            for k in rand::seq::index::sample(rng, pool.len(), have - n) {
                child.clear(pool[k]);
            }
        } else if have < n {
            let pool = only_in(a, b);
            for k in rand::seq::index::sample(rng, pool.len(), n - have) {
                child.set(pool[k]);
            }
        }
        child
    }
}

/// Perturbs one mask in place.
pub trait Mutation: Debug {
    /// Changes `mask` (a mask of `space`) into another mask of `space`.
    fn mutate(&self, space: &MaskSpace, mask: &mut Mask, rng: &mut dyn RngCore);
}

/// A boxed operator (e.g. one chosen at run time) is an operator.
impl<T: Mutation + ?Sized> Mutation for Box<T> {
    fn mutate(&self, space: &MaskSpace, mask: &mut Mask, rng: &mut dyn RngCore) {
        (**self).mutate(space, mask, rng)
    }
}

/// Swap mutation: draw `k` swaps with probability `weights[k-1] / sum(weights)`, then restore `k` distinct
/// removed blocks and remove `k` distinct kept unprotected blocks (so the child is exactly `k` swaps away;
/// `k` is capped by what the space allows). Keeps length, `n` and protection by construction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwapMutation {
    cumulative: Vec<f64>,
}

impl SwapMutation {
    /// Weights of 1, 2, 3, ... swaps (finite, non-negative, not all zero).
    pub fn new(weights: &[f64]) -> Result<Self> {
        if weights.is_empty() || weights.iter().any(|w| !w.is_finite() || *w < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
            return Err(SearchError::InvalidSwapWeights);
        }
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights.iter().map(|w| {
            acc += w / total;
            acc
        });
        Ok(SwapMutation { cumulative: cumulative.collect() })
    }

    /// The normalised weights of 1, 2, 3, ... swaps.
    pub fn weights(&self) -> Vec<f64> {
        let mut prev = 0.0;
        self.cumulative
            .iter()
            .map(|c| {
                let w = c - prev;
                prev = *c;
                w
            })
            .collect()
    }

    fn draw_swaps(&self, rng: &mut dyn RngCore) -> usize {
        let u: f64 = rng.random();
        self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1) + 1
    }
}

/// Weights 0.6 / 0.3 / 0.1 for 1 / 2 / 3 swaps.
impl Default for SwapMutation {
    fn default() -> Self {
        SwapMutation::new(&[0.6, 0.3, 0.1]).expect("default weights are valid")
    }
}

impl Mutation for SwapMutation {
    fn mutate(&self, space: &MaskSpace, mask: &mut Mask, rng: &mut dyn RngCore) {
        let k = self.draw_swaps(rng);
        let removed: Vec<usize> = mask.removed().collect();
        let kept: Vec<usize> = space.free().iter().copied().filter(|&i| !mask.is_removed(i)).collect();
        let k = k.min(removed.len()).min(kept.len());
        let out = rand::seq::index::sample(rng, removed.len(), k);
        let inn = rand::seq::index::sample(rng, kept.len(), k);
        for (o, i) in out.iter().zip(inn.iter()) {
            mask.clear(removed[o]);
            mask.set(kept[i]);
        }
    }
}

/// Shift mutation: like [`SwapMutation`] (the same law for the number of swaps `k`), but each of
/// the `k` restored blocks hands its removal to a kept unprotected block at most `reach` positions
/// away (uniform among those; any kept unprotected block when none is that close). A child then
/// first differs from its parent near the restored block rather than at the smaller of two uniform
/// positions, and adjacent blocks, which tend to play similar roles, are exchanged most often.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShiftMutation {
    swaps: SwapMutation,
    reach: usize,
}

impl ShiftMutation {
    /// Swap-count weights as for [`SwapMutation::new`], and a reach of at least 1.
    pub fn new(weights: &[f64], reach: usize) -> Result<Self> {
        if reach == 0 {
            return Err(SearchError::InvalidShiftReach);
        }
        Ok(ShiftMutation { swaps: SwapMutation::new(weights)?, reach })
    }

    /// How far a removal may move.
    pub fn reach(&self) -> usize {
        self.reach
    }
}

/// [`SwapMutation`]'s default weights, reach 3.
impl Default for ShiftMutation {
    fn default() -> Self {
        ShiftMutation { swaps: SwapMutation::default(), reach: 3 }
    }
}

impl Mutation for ShiftMutation {
    fn mutate(&self, space: &MaskSpace, mask: &mut Mask, rng: &mut dyn RngCore) {
        let k = self.swaps.draw_swaps(rng);
        let removed: Vec<usize> = mask.removed().collect();
        let mut kept: Vec<usize> = space.free().iter().copied().filter(|&i| !mask.is_removed(i)).collect();
        let k = k.min(removed.len()).min(kept.len());
        for o in rand::seq::index::sample(rng, removed.len(), k) {
            let from = removed[o];
            let near: Vec<usize> = (0..kept.len()).filter(|&j| kept[j].abs_diff(from) <= self.reach).collect();
            let j = if near.is_empty() { rng.random_range(0..kept.len()) } else { near[rng.random_range(0..near.len())] };
            mask.clear(from);
            mask.set(kept.swap_remove(j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn tournament_size_zero_is_rejected() {
        assert!(matches!(Tournament::new(0), Err(SearchError::TournamentSizeZero)));
    }

    #[test]
    fn swap_weights_are_validated() {
        for w in [&[][..], &[0.0, 0.0], &[1.0, -0.1], &[f64::NAN]] {
            assert!(matches!(SwapMutation::new(w), Err(SearchError::InvalidSwapWeights)));
        }
        let w = SwapMutation::default().weights();
        assert!((w[0] - 0.6).abs() < 1e-12 && (w[1] - 0.3).abs() < 1e-12 && (w[2] - 0.1).abs() < 1e-12);
    }

    #[test]
    fn tournament_prefers_low_costs() {
        let costs: Vec<f64> = (0..10).map(|i| i as f64).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let picks = Tournament::new(3).unwrap().select(&costs, 10_000, &mut rng);
        let mean = picks.iter().sum::<usize>() as f64 / picks.len() as f64;
        // E[min of 3 uniform draws from 0..10] = 2.025; uniform would be 4.5.
        assert!((mean - 2.025).abs() < 0.1, "mean pick {mean}");
        let infinite = [f64::INFINITY, 0.0];
        let picks = Tournament::new(8).unwrap().select(&infinite, 1000, &mut rng);
        assert!(picks.iter().filter(|&&p| p == 0).count() < 20);
    }

    #[test]
    fn swap_counts_follow_the_weights() {
        let s = MaskSpace::new(40, 10, []).unwrap();
        let m = SwapMutation::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let parent = s.sample(&mut rng);
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            let mut c = parent.clone();
            m.mutate(&s, &mut c, &mut rng);
            counts[c.hamming(&parent) / 2] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!((counts[1] as f64 / 10_000.0 - 0.6).abs() < 0.03, "{counts:?}");
        assert!((counts[3] as f64 / 10_000.0 - 0.1).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn crossover_keeps_shared_blocks_and_draws_from_parents() {
        let s = MaskSpace::new(20, 5, [0]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..200 {
            let (a, b) = (s.sample(&mut rng), s.sample(&mut rng));
            let c = SharedRemovedCrossover.crossover(&s, &a, &b, &mut rng);
            s.check(&c).unwrap();
            for i in 0..20 {
                if a.is_removed(i) && b.is_removed(i) {
                    assert!(c.is_removed(i));
                }
                if c.is_removed(i) {
                    assert!(a.is_removed(i) || b.is_removed(i));
                }
            }
        }
    }
}
