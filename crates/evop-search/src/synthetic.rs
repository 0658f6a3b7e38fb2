//! Synthetic mask problems with a known optimum, for tests, benches and the success-rate example: an
//! additive cost per removed block plus a pairwise interaction per pair of removed blocks (the shape of
//! depth-pruning damage, where removing two neighbouring blocks hurts more or less than the sum of each),
//! and a deceptive variant. [`PairwiseCost::optimum`] finds the true optimum by exhaustive enumeration.

use std::convert::Infallible;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fitness::{Fidelity, Fitness};
use crate::mask::{Mask, MaskSpace};

/// `cost(mask) = sum of additive[i] over removed i + sum of pairwise[i][j] over removed pairs i < j`;
/// lower is better.
#[derive(Clone, Debug)]
pub struct PairwiseCost {
    len: usize,
    additive: Vec<f64>,
    pairwise: Vec<f64>,
    noise: Option<(u64, f64)>,
}

impl PairwiseCost {
    /// A random instance: additive costs uniform in [0, 1), pairwise terms uniform in [-0.25, 0.25).
    pub fn random(len: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let additive = (0..len).map(|_| rng.random::<f64>()).collect();
        let mut p = PairwiseCost { len, additive, pairwise: vec![0.0; len * len], noise: None };
        for i in 0..len {
            for j in i + 1..len {
                p.set_pair(i, j, rng.random_range(-0.25..0.25));
            }
        }
        p
    }

    /// A deceptive instance: `len - 8` background blocks with additive costs in [0.3, 1) and pairwise
    /// noise in [-0.05, 0.05), plus four hidden pairs of blocks, each member costing 1 alone, with a synergy
    /// of -1.6 inside its pair. Removing a whole pair costs 0.4, less than any two background blocks, but
    /// removing one member alone costs 1: from the background optimum every single swap towards a pair is
    /// uphill, so a pure local search (single swaps) is trapped. With n = 8 the optimum removes all four
    /// pairs.
    pub fn deceptive(len: usize, seed: u64) -> Self {
        assert!(len >= 8, "the deceptive problem needs at least 8 blocks");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let hidden: Vec<usize> = rand::seq::index::sample(&mut rng, len, 8).into_vec();
        let pair_of = |i: usize| hidden.iter().position(|&g| g == i).map(|k| k / 2);
        let additive = (0..len).map(|i| if pair_of(i).is_some() { 1.0 } else { rng.random_range(0.3..1.0) }).collect();
        let mut p = PairwiseCost { len, additive, pairwise: vec![0.0; len * len], noise: None };
        for i in 0..len {
            for j in i + 1..len {
                let w = match (pair_of(i), pair_of(j)) {
                    (Some(a), Some(b)) if a == b => -1.6,
                    _ => rng.random_range(-0.05..0.05),
                };
                p.set_pair(i, j, w);
            }
        }
        p
    }

    /// Adds deterministic noise at fidelities below `max`: a pseudo-normal deviate of standard deviation
    /// `sd * sqrt(max / fidelity - 1)`, fixed per (mask, fidelity); full-fidelity values stay exact. This
    /// mimics perplexity measured on part of the calibration data, for multi-step selection.
    pub fn with_fidelity_noise(mut self, max: u64, sd: f64) -> Self {
        self.noise = Some((max, sd));
        self
    }

    fn set_pair(&mut self, i: usize, j: usize, w: f64) {
        self.pairwise[i * self.len + j] = w;
        self.pairwise[j * self.len + i] = w;
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The exact cost of `mask`.
    pub fn cost(&self, mask: &Mask) -> f64 {
        let removed: Vec<usize> = mask.removed().collect();
        let mut c = 0.0;
        for (k, &i) in removed.iter().enumerate() {
            c += self.additive[i];
            for &j in &removed[..k] {
                c += self.pairwise[j * self.len + i];
            }
        }
        c
    }

    /// The best mask of `space` by exhaustive depth-first enumeration (C(32, 8) = 10.5 M masks take about
    /// a second in release), and its cost as [`PairwiseCost::cost`] computes it.
    pub fn optimum(&self, space: &MaskSpace) -> (Mask, f64) {
        assert_eq!(space.len(), self.len, "space and problem lengths differ");
        let mut best = (f64::INFINITY, Vec::new());
        let mut chosen = Vec::with_capacity(space.n_removed());
        self.dfs(space.free(), space.n_removed(), 0, 0.0, &mut chosen, &mut best);
        let m = Mask::from_removed(space, &best.1).expect("enumerated masks are legal");
        let c = self.cost(&m);
        (m, c)
    }

    fn dfs(&self, free: &[usize], n: usize, start: usize, cost: f64, chosen: &mut Vec<usize>, best: &mut (f64, Vec<usize>)) {
        if chosen.len() == n {
            if cost < best.0 {
                *best = (cost, chosen.clone());
            }
            return;
        }
        for k in start..=free.len() - (n - chosen.len()) {
            let j = free[k];
            let add = self.additive[j] + chosen.iter().map(|&c| self.pairwise[c * self.len + j]).sum::<f64>();
            chosen.push(j);
            self.dfs(free, n, k + 1, cost + add, chosen, best);
            chosen.pop();
        }
    }

    fn noise(&self, mask: &Mask, fidelity: Fidelity) -> f64 {
        let Some((max, sd)) = self.noise else { return 0.0 };
        if fidelity.0 >= max {
            return 0.0;
        }
        let mut h = fidelity.0 ^ 0x9e37_79b9_7f4a_7c15;
        for w in mask.words() {
            h = splitmix(h ^ w);
        }
        // Sum of 4 uniforms, centred and scaled to unit variance: close enough to normal here.
        let z: f64 = (0..4).map(|k| (splitmix(h.wrapping_add(k)) >> 11) as f64 / (1u64 << 53) as f64).sum::<f64>() - 2.0;
        z * 3f64.sqrt() * sd * ((max as f64 / fidelity.0.max(1) as f64) - 1.0).sqrt()
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Fitness for PairwiseCost {
    type Error = Infallible;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, Infallible> {
        Ok(masks.iter().map(|m| self.cost(m) + self.noise(m, fidelity)).collect())
    }
    fn max_fidelity(&self) -> Fidelity {
        self.noise.map_or(Fidelity::FULL, |(max, _)| Fidelity(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimum_matches_brute_force_over_the_iterator() {
        let space = MaskSpace::new(12, 4, [0]).unwrap();
        for p in [PairwiseCost::random(12, 1), PairwiseCost::deceptive(12, 2)] {
            let (m, c) = p.optimum(&space);
            let brute = space.iter().min_by(|a, b| p.cost(a).total_cmp(&p.cost(b))).unwrap();
            assert_eq!(m, brute);
            assert_eq!(c, p.cost(&brute));
        }
    }

    #[test]
    fn deceptive_optimum_removes_all_hidden_pairs() {
        let space = MaskSpace::new(16, 8, []).unwrap();
        let p = PairwiseCost::deceptive(16, 3);
        let (m, c) = p.optimum(&space);
        assert!(m.removed().all(|i| p.additive[i] == 1.0), "{m}");
        // 4 pairs at 0.4, plus noise on the 24 cross-pair terms.
        assert!((c - 1.6).abs() < 0.05 * 24.0, "{c}");
    }

    #[test]
    fn noise_vanishes_at_full_fidelity_and_is_deterministic() {
        let space = MaskSpace::new(10, 3, []).unwrap();
        let p = PairwiseCost::random(10, 4).with_fidelity_noise(64, 0.5);
        let ms: Vec<Mask> = space.iter().collect();
        let full = p.evaluate(&ms, Fidelity(64)).unwrap();
        assert!(ms.iter().zip(&full).all(|(m, v)| *v == p.cost(m)));
        let low = p.evaluate(&ms, Fidelity(4)).unwrap();
        assert_eq!(low, p.evaluate(&ms, Fidelity(4)).unwrap());
        let sd = (ms.iter().zip(&low).map(|(m, v)| (v - p.cost(m)).powi(2)).sum::<f64>() / ms.len() as f64).sqrt();
        // Expected sd: 0.5 * sqrt(64 / 4 - 1) = 1.94.
        assert!((sd - 1.94).abs() < 0.3, "{sd}");
    }
}
