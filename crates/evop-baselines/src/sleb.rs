//! SLEB: iterative greedy block removal by calibration loss.
//!
//! Song, Oh, Kim, Kim, Kim and Kim, "SLEB: Streamlining LLMs through Redundancy Verification and
//! Elimination of Transformer Blocks", ICML 2024 (arXiv 2402.09025). Reference code:
//! jiwonsong-dev/SLEB, `sleb.py`.
//!
//! At each of `n` steps, every alive block except the first `early_barrier` and the last
//! `latter_barrier` *alive* ones is switched off in turn (it returns its input); the calibration
//! loss of that candidate model is computed, and the candidate with the lowest loss is removed for
//! good. As in the reference: barriers count positions in the list of alive blocks (so they hold
//! the first and last alive blocks, not fixed indices; both default to 1), candidates are tried in
//! ascending block order and a tie keeps the first (a strict `<` scan).
//!
//! Loss: the sum over calibration windows of the window's mean token NLL. The reference's
//! `nlls()` sums `CrossEntropy * seqlen` per window (batch size 1), which is this value times the
//! window length: the same ranking, so the same choices.
//!
//! Difference from the reference, not in what is computed but how: each step's candidate set is
//! evaluated in one call of [`CalibrationEvaluator::window_losses_many`], which reuses the dense
//! model's boundary states and shares block applications between candidates (exact reuse).
use crate::common::{argmin, check_eligible, check_n, check_windows};
use crate::error::{BaselineError, Result};
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// SLEB settings. Defaults: `early_barrier = 1`, `latter_barrier = 1` (as `sleb.py`), the
/// evaluator's defaults (batches of 8 windows, dense cache and prefix sharing on).
#[derive(Clone, Debug)]
pub struct Sleb {
    /// How many of the first alive blocks are never candidates.
    pub early_barrier: usize,
    /// How many of the last alive blocks are never candidates.
    pub latter_barrier: usize,
    /// How candidates are evaluated (results do not depend on it beyond float reassociation).
    pub evaluator: EvaluatorOptions,
}

impl Default for Sleb {
    fn default() -> Self {
        Self { early_barrier: 1, latter_barrier: 1, evaluator: EvaluatorOptions::default() }
    }
}

/// One candidate of a step: the block switched off and the resulting calibration loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateLoss {
    pub block: usize,
    /// Sum over windows of the window's mean token NLL.
    pub loss: f64,
}

/// One greedy step: every candidate's loss (ascending block order) and the block removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlebStep {
    /// Blocks already removed before this step, in removal order.
    pub removed_before: Vec<usize>,
    pub candidates: Vec<CandidateLoss>,
    /// The block removed by this step (lowest loss, first on ties).
    pub removed: usize,
    /// Its loss.
    pub loss: f64,
}

/// How SLEB decided: one table per step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlebTrace {
    pub early_barrier: usize,
    pub latter_barrier: usize,
    /// Loss of the dense model, for reference.
    pub dense_loss: f64,
    pub steps: Vec<SlebStep>,
    /// Blocks in the order they were removed.
    pub removal_order: Vec<usize>,
}

impl Sleb {
    /// Runs SLEB on an existing evaluator (so several methods can share its dense cache).
    pub fn run(&self, evaluator: &CalibrationEvaluator, n: usize) -> Result<(BlockMask, SlebTrace)> {
        let num_blocks = evaluator.model().num_blocks();
        check_n(n, num_blocks)?;
        let barriers = self.early_barrier + self.latter_barrier;
        let eligible = num_blocks.saturating_sub(barriers);
        check_eligible(
            "sleb",
            n,
            eligible,
            num_blocks,
            format!("barriers keep the first {} and last {} alive blocks", self.early_barrier, self.latter_barrier),
        )?;
        let mut mask = BlockMask::dense(num_blocks);
        let dense_loss: f64 = evaluator.window_losses(&mask)?.iter().sum();
        let mut alive: Vec<usize> = (0..num_blocks).collect();
        let mut trace = SlebTrace {
            early_barrier: self.early_barrier,
            latter_barrier: self.latter_barrier,
            dense_loss,
            steps: Vec::with_capacity(n),
            removal_order: Vec::with_capacity(n),
        };
        for step in 0..n {
            let candidates: Vec<usize> = alive[self.early_barrier..alive.len() - self.latter_barrier].to_vec();
            let masks = candidates.iter().map(|&b| mask.with_removed(b)).collect::<evop_model::Result<Vec<_>>>()?;
            let losses: Vec<f64> = evaluator.window_losses_many(&masks)?.iter().map(|w| w.iter().sum()).collect();
            let best = argmin(&losses).ok_or_else(|| BaselineError::InvalidSetting {
                method: "sleb",
                setting: "barriers",
                why: "no candidate block left".into(),
            })?;
            let block = candidates[best];
            tracing::info!(step = step + 1, of = n, block, loss = losses[best], "sleb: removing block");
            trace.steps.push(SlebStep {
                removed_before: trace.removal_order.clone(),
                candidates: candidates.iter().zip(&losses).map(|(&block, &loss)| CandidateLoss { block, loss }).collect(),
                removed: block,
                loss: losses[best],
            });
            trace.removal_order.push(block);
            mask = masks[best].clone();
            alive.retain(|&b| b != block);
        }
        Ok((mask, trace))
    }
}

impl Pruner for Sleb {
    fn name(&self) -> &'static str {
        "sleb"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        check_n(n, lm.num_blocks())?;
        check_windows(calibration, 2)?;
        let evaluator = CalibrationEvaluator::new(lm.clone(), calibration, self.evaluator.clone())?;
        let (mask, trace) = self.run(&evaluator, n)?;
        Ok(PruneResult::new(self.name(), n, mask, Trace::Sleb(trace), evaluator.counts(), start.elapsed()))
    }
}
