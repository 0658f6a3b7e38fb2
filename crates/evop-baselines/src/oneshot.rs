//! One-shot perplexity ranking: remove each block alone, keep the `n` removals that hurt least.
//!
//! Kim, Kim, Kim, Song, Kim, Kim and Song, "Shortened LLaMA: Depth Pruning for Large Language
//! Models with Comparison of Retraining Methods", 2024 (arXiv 2402.02834), the PPL criterion:
//! the importance of block `i` is the calibration perplexity of the dense model without block
//! `i`; the `n` blocks whose removal gives the lowest perplexity are removed together, in one shot.
//! Reference code: Nota-NetsPresso/shortened-llm.
//!
//! Choices, stated: perplexity is `exp` of the mean over windows of the window's mean token NLL
//! (windows have one length, so this is the token-weighted mean); ranking by it is ranking by the
//! SLEB loss (the sum of those means), which the trace also records. Ties go to the lower index.
//! `protected` blocks are never candidates (none by default).
use crate::common::{check_eligible, check_n, check_windows, eligible_blocks, loss_order};
use crate::error::Result;
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// One-shot perplexity settings. Defaults: no protected block, the evaluator's defaults.
#[derive(Clone, Debug, Default)]
pub struct OneShotPpl {
    /// Blocks never removed.
    pub protected: Vec<usize>,
    pub evaluator: EvaluatorOptions,
}

/// One block removed alone from the dense model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SingleRemoval {
    pub block: usize,
    /// Sum over windows of the window's mean token NLL.
    pub loss: f64,
    /// Calibration perplexity, `exp(loss / windows)`.
    pub perplexity: f64,
}

/// How one-shot ranking decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneShotTrace {
    /// Every eligible block removed alone, ascending block order.
    pub removals: Vec<SingleRemoval>,
    /// Eligible blocks by ascending perplexity: the first `n` are removed.
    pub ranking: Vec<usize>,
    pub dense_perplexity: f64,
    pub protected: Vec<usize>,
}

impl OneShotPpl {
    /// Runs the ranking on an existing evaluator.
    pub fn run(&self, evaluator: &CalibrationEvaluator, n: usize) -> Result<(BlockMask, OneShotTrace)> {
        let l = evaluator.model().num_blocks();
        check_n(n, l)?;
        let eligible = eligible_blocks(l, &self.protected)?;
        check_eligible("ppl", n, eligible.len(), l, format!("protected blocks {:?}", self.protected))?;
        let windows = evaluator.num_windows() as f64;
        let mut masks = vec![BlockMask::dense(l)];
        for &b in &eligible {
            masks.push(BlockMask::from_removed(l, &[b])?);
        }
        let losses: Vec<f64> = evaluator.window_losses_many(&masks)?.iter().map(|w| w.iter().sum()).collect();
        let removals: Vec<SingleRemoval> = eligible
            .iter()
            .zip(&losses[1..])
            .map(|(&block, &loss)| SingleRemoval { block, loss, perplexity: (loss / windows).exp() })
            .collect();
        let mut order: Vec<usize> = (0..removals.len()).collect();
        order.sort_by(|&a, &b| loss_order(removals[a].loss, removals[b].loss).then(a.cmp(&b)));
        let ranking: Vec<usize> = order.iter().map(|&k| removals[k].block).collect();
        let mask = BlockMask::from_removed(l, &ranking[..n])?;
        tracing::info!(%mask, "ppl: one-shot ranking");
        let trace = OneShotTrace { removals, ranking, dense_perplexity: (losses[0] / windows).exp(), protected: self.protected.clone() };
        Ok((mask, trace))
    }
}

impl Pruner for OneShotPpl {
    fn name(&self) -> &'static str {
        "ppl"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        check_n(n, lm.num_blocks())?;
        check_windows(calibration, 2)?;
        let evaluator = CalibrationEvaluator::new(lm.clone(), calibration, self.evaluator.clone())?;
        let (mask, trace) = self.run(&evaluator, n)?;
        Ok(PruneResult::new(self.name(), n, mask, Trace::OneShotPpl(trace), evaluator.counts(), start.elapsed()))
    }
}
