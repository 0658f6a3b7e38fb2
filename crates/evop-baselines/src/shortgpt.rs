//! ShortGPT's Block Influence: remove the blocks that change their input least.
//!
//! Men, Xu, Zhang, Wang, Lin, Lu, Han and Chen, "ShortGPT: Layers in Large Language Models are
//! More Redundant Than You Expect", 2024 (arXiv 2403.03853), section 3.2:
//! `BI_i = 1 - E_{X,t} [ X_{i,t} . X_{i+1,t} / (|X_{i,t}| |X_{i+1,t}|) ]`,
//! where `X_i` is block `i`'s input and `X_{i+1}` its output on the residual stream. The authors
//! released no code; this follows the paper's formula.
//!
//! Choices, stated: the expectation is the mean over every token position of every calibration
//! window (windows have one length, so this equals the mean of per-window means); the states are
//! the raw residual stream (the last block's output is taken before the final norm, unlike the
//! last entry of Hugging Face's `output_hidden_states`); one dense pass, no block removed before
//! scoring; the `n` lowest scores are removed, ties to the lower index. `protected` blocks are
//! never removed (none by default: the paper ranks every block).
use crate::common::{check_eligible, check_n, check_windows, eligible_blocks, for_each_dense_batch, loss_order, rows, token_cosine};
use crate::error::Result;
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, ForwardCounts};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// ShortGPT settings. Defaults: no protected block, batches of 8 windows.
#[derive(Clone, Debug)]
pub struct ShortGpt {
    /// Blocks never removed.
    pub protected: Vec<usize>,
    /// Windows per dense forward.
    pub batch_size: usize,
}

impl Default for ShortGpt {
    fn default() -> Self {
        Self { protected: Vec::new(), batch_size: 8 }
    }
}

/// How ShortGPT decided: every block's influence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShortGptTrace {
    /// `scores[i]` = 1 - mean cosine(input of block i, output of block i).
    pub scores: Vec<f64>,
    /// Blocks ordered by ascending score (protected ones left out): the removal order.
    pub ranking: Vec<usize>,
    pub protected: Vec<usize>,
}

/// Block Influence of every block: `1 - mean_token cos(X_i, X_{i+1})`. Returns the scores and the
/// number of block forwards run.
pub fn block_influence(lm: &dyn BlockLm, calibration: &[Vec<u32>], batch_size: usize) -> Result<(Vec<f64>, u64)> {
    check_windows(calibration, 1)?;
    let l = lm.num_blocks();
    let mut sums = vec![0f64; l];
    let mut tokens = 0usize;
    let forwards = for_each_dense_batch(lm, calibration, batch_size, |states| {
        for (i, sum) in sums.iter_mut().enumerate() {
            let cos = rows(&token_cosine(&states[i], &states[i + 1])?)?;
            *sum += cos.iter().flatten().sum::<f64>();
        }
        tokens += states[0].dims()[0] * states[0].dims()[1];
        Ok(())
    })?;
    Ok((sums.into_iter().map(|s| 1.0 - s / tokens as f64).collect(), forwards))
}

impl Pruner for ShortGpt {
    fn name(&self) -> &'static str {
        "shortgpt"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        let l = lm.num_blocks();
        check_n(n, l)?;
        let eligible = eligible_blocks(l, &self.protected)?;
        check_eligible("shortgpt", n, eligible.len(), l, format!("protected blocks {:?}", self.protected))?;
        let (scores, forwards) = block_influence(lm.as_ref(), calibration, self.batch_size)?;
        let mut ranking = eligible;
        ranking.sort_by(|&a, &b| loss_order(scores[a], scores[b]).then(a.cmp(&b)));
        let mask = BlockMask::from_removed(l, &ranking[..n])?;
        tracing::info!(%mask, "shortgpt: lowest block influence");
        let counts = ForwardCounts { block_forwards: forwards, head_forwards: 0, candidates: 0 };
        let trace = ShortGptTrace { scores, ranking, protected: self.protected.clone() };
        Ok(PruneResult::new(self.name(), n, mask, Trace::ShortGpt(trace), counts, start.elapsed()))
    }
}
