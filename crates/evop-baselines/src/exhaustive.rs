//! Exhaustive search: the true optimum of the calibration loss over every mask removing `n`
//! blocks, and the whole distribution of that loss.
//!
//! Not a published method but the yardstick for all of them: SLEB (Song et al., ICML 2024,
//! arXiv 2402.09025) and EvoP (Wu et al. 2025, arXiv 2502.14910) both minimise this same loss
//! (the sum over calibration windows of the window's mean token NLL) heuristically; here every one
//! of the `C(L', n)` masks (`L'` = blocks not protected) is evaluated, in lexicographic order and in
//! chunks of [`Exhaustive::chunk_size`] masks, through
//! [`CalibrationEvaluator::window_losses_many`] (neighbouring masks share long prefixes, so the
//! prefix tree saves most block applications). The search refuses, before running anything, when
//! `C(L', n)` exceeds [`Exhaustive::max_masks`]. Ties go to the lexicographically first mask.
use crate::common::{check_eligible, check_n, check_windows, eligible_blocks, loss_order};
use crate::error::{BaselineError, Result};
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Exhaustive-search settings. Defaults: at most 10,000 masks, chunks of 256 masks, no
/// protected block, the evaluator's defaults.
#[derive(Clone, Debug)]
pub struct Exhaustive {
    /// Refuse when `C(L', n)` is larger than this.
    pub max_masks: u64,
    /// Masks per call of the evaluator.
    pub chunk_size: usize,
    /// Blocks never removed.
    pub protected: Vec<usize>,
    pub evaluator: EvaluatorOptions,
}

impl Default for Exhaustive {
    fn default() -> Self {
        Self { max_masks: 10_000, chunk_size: 256, protected: Vec::new(), evaluator: EvaluatorOptions::default() }
    }
}

/// One evaluated mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskLoss {
    pub removed: Vec<usize>,
    /// Sum over windows of the window's mean token NLL.
    pub loss: f64,
}

/// Every mask's loss, best first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExhaustiveTrace {
    pub num_blocks: usize,
    pub n: usize,
    pub protected: Vec<usize>,
    /// All `C(L', n)` masks, ascending loss (NaN last, ties in lexicographic order).
    pub distribution: Vec<MaskLoss>,
}

impl ExhaustiveTrace {
    /// The optimum.
    pub fn best(&self) -> Option<&MaskLoss> {
        self.distribution.first()
    }

    /// The loss the search recorded for `mask`, if it was in the search space.
    pub fn loss_of(&self, mask: &BlockMask) -> Option<f64> {
        let removed: Vec<usize> = mask.removed().collect();
        self.distribution.iter().find(|m| m.removed == removed).map(|m| m.loss)
    }

    /// Fraction of all masks with a loss strictly below `loss`: 0 for the optimum, close to 1 for
    /// the worst mask. Places another method's result (evaluate its loss on the same calibration
    /// set, or use [`ExhaustiveTrace::loss_of`]).
    pub fn fraction_better(&self, loss: f64) -> f64 {
        if self.distribution.is_empty() {
            return 0.0;
        }
        let better = self.distribution.iter().filter(|m| m.loss < loss).count();
        better as f64 / self.distribution.len() as f64
    }
}

/// `C(m, k)`, or `None` when it does not fit in a u128.
pub fn binomial(m: usize, k: usize) -> Option<u128> {
    if k > m {
        return Some(0);
    }
    let k = k.min(m - k);
    let mut c: u128 = 1;
    for i in 0..k {
        // c * (m - i) is divisible by (i + 1) at every step.
        c = c.checked_mul((m - i) as u128)? / (i as u128 + 1);
    }
    Some(c)
}

/// Lexicographic `k`-subsets of `0..m` (as index vectors), lazily.
struct Combinations {
    idx: Vec<usize>,
    m: usize,
    done: bool,
}

impl Combinations {
    fn new(m: usize, k: usize) -> Self {
        Self { idx: (0..k).collect(), m, done: k > m }
    }
}

impl Iterator for Combinations {
    type Item = Vec<usize>;
    fn next(&mut self) -> Option<Vec<usize>> {
        if self.done {
            return None;
        }
        let out = self.idx.clone();
        let k = self.idx.len();
        let mut i = k;
        loop {
            if i == 0 {
                self.done = true;
                break;
            }
            i -= 1;
            if self.idx[i] < self.m - k + i {
                self.idx[i] += 1;
                for j in i + 1..k {
                    self.idx[j] = self.idx[j - 1] + 1;
                }
                break;
            }
        }
        Some(out)
    }
}

impl Exhaustive {
    /// `C(eligible, n)`, or [`BaselineError::TooManyMasks`] when it exceeds `max_masks`.
    pub fn check_count(&self, eligible: usize, n: usize) -> Result<u64> {
        match binomial(eligible, n) {
            Some(c) if c <= self.max_masks as u128 => Ok(c as u64),
            count => Err(BaselineError::TooManyMasks {
                eligible,
                n,
                count: count.map_or_else(|| "more than 2^128".to_string(), |c| c.to_string()),
                limit: self.max_masks,
            }),
        }
    }

    /// Runs the search on an existing evaluator.
    pub fn run(&self, evaluator: &CalibrationEvaluator, n: usize) -> Result<(BlockMask, ExhaustiveTrace)> {
        let l = evaluator.model().num_blocks();
        check_n(n, l)?;
        if self.chunk_size == 0 {
            return Err(BaselineError::InvalidSetting { method: "exhaustive", setting: "chunk_size", why: "must be at least 1".into() });
        }
        let eligible = eligible_blocks(l, &self.protected)?;
        check_eligible("exhaustive", n, eligible.len(), l, format!("protected blocks {:?}", self.protected))?;
        let total = self.check_count(eligible.len(), n)? as usize;
        tracing::info!(masks = total, "exhaustive: evaluating every mask");
        let mut distribution = Vec::with_capacity(total);
        let mut combos = Combinations::new(eligible.len(), n).map(|c| c.iter().map(|&k| eligible[k]).collect::<Vec<_>>());
        loop {
            let chunk: Vec<Vec<usize>> = combos.by_ref().take(self.chunk_size).collect();
            if chunk.is_empty() {
                break;
            }
            let masks = chunk.iter().map(|r| BlockMask::from_removed(l, r)).collect::<evop_model::Result<Vec<_>>>()?;
            let losses = evaluator.window_losses_many(&masks)?;
            for (removed, w) in chunk.into_iter().zip(losses) {
                distribution.push(MaskLoss { removed, loss: w.iter().sum() });
            }
            tracing::debug!(done = distribution.len(), of = total, "exhaustive: progress");
        }
        // A stable sort keeps lexicographic order among equal losses.
        distribution.sort_by(|a, b| loss_order(a.loss, b.loss));
        let best = distribution.first().map(|m| m.removed.clone()).unwrap_or_default();
        let mask = BlockMask::from_removed(l, &best)?;
        Ok((mask, ExhaustiveTrace { num_blocks: l, n, protected: self.protected.clone(), distribution }))
    }
}

impl Pruner for Exhaustive {
    fn name(&self) -> &'static str {
        "exhaustive"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        check_n(n, lm.num_blocks())?;
        check_windows(calibration, 2)?;
        // Refuse an oversized search before paying for the evaluator's dense pass.
        self.check_count(eligible_blocks(lm.num_blocks(), &self.protected)?.len(), n)?;
        let evaluator = CalibrationEvaluator::new(lm.clone(), calibration, self.evaluator.clone())?;
        let (mask, trace) = self.run(&evaluator, n)?;
        Ok(PruneResult::new(self.name(), n, mask, Trace::Exhaustive(trace), evaluator.counts(), start.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_lexicographic_and_complete() {
        let all: Vec<Vec<usize>> = Combinations::new(5, 3).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], vec![0, 1, 2]);
        assert_eq!(all[1], vec![0, 1, 3]);
        assert_eq!(all[9], vec![2, 3, 4]);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Combinations::new(3, 0).collect::<Vec<_>>(), vec![Vec::<usize>::new()]);
        assert_eq!(Combinations::new(2, 3).count(), 0);
    }

    #[test]
    fn binomial_is_exact_and_overflow_is_none() {
        assert_eq!(binomial(30, 6), Some(593_775));
        assert_eq!(binomial(4, 2), Some(6));
        assert_eq!(binomial(3, 5), Some(0));
        assert_eq!(binomial(200, 100), None);
    }

    #[test]
    fn fraction_better_places_a_loss() {
        let t = ExhaustiveTrace {
            num_blocks: 4,
            n: 1,
            protected: vec![],
            distribution: [1.0, 2.0, 2.0, 3.0].iter().enumerate().map(|(i, &loss)| MaskLoss { removed: vec![i], loss }).collect(),
        };
        assert_eq!(t.fraction_better(1.0), 0.0);
        assert_eq!(t.fraction_better(2.0), 0.25);
        assert_eq!(t.fraction_better(9.0), 1.0);
        assert_eq!(t.loss_of(&BlockMask::from_removed(4, &[3]).unwrap()), Some(3.0));
        assert_eq!(t.best().unwrap().removed, vec![0]);
    }
}
