//! Angular distance: remove the contiguous run of `n` blocks that turns its input least.
//!
//! Gromov, Tirumala, Shapourian, Glorioso and Roberts, "The Unreasonable Ineffectiveness of the
//! Deeper Layers", 2024 (arXiv 2403.17887), section 3.2: for a run of `n` blocks starting at
//! `l`, `d(x^(l), x^(l+n)) = arccos(cos(x^(l)_T, x^(l+n)_T)) / pi`, where `x^(l)` is the input of
//! block `l` and `x^(l+n)` the output of block `l + n - 1`, taken at the last token `T` of each
//! sequence and averaged over the calibration windows; the run with the smallest distance is
//! removed (the paper then "heals" with QLoRA, which is out of scope here).
//!
//! Choices, stated: by default only the last token counts, as in the paper
//! ([`AngularTokens::Last`]); [`AngularTokens::All`] averages over every position instead. States
//! are the raw residual stream (before the final norm). Ties go to the earlier run. A run that
//! contains a `protected` block is not considered (none by default, as in the paper).
use crate::common::{check_n, check_windows, eligible_blocks, for_each_dense_batch, loss_order, rows, token_cosine};
use crate::error::Result;
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, ForwardCounts};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Which token positions the distance averages over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AngularTokens {
    /// The last position of each window (the paper's choice).
    #[default]
    Last,
    /// Every position of each window.
    All,
}

/// Angular-distance settings. Defaults: last token, no protected block, batches of 8 windows.
#[derive(Clone, Debug)]
pub struct Angular {
    pub tokens: AngularTokens,
    /// Blocks never removed: runs containing one are skipped.
    pub protected: Vec<usize>,
    /// Windows per dense forward.
    pub batch_size: usize,
}

impl Default for Angular {
    fn default() -> Self {
        Self { tokens: AngularTokens::Last, protected: Vec::new(), batch_size: 8 }
    }
}

/// The distance of one run of blocks `start..start + n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDistance {
    pub start: usize,
    /// Mean of `arccos(cos) / pi`, in `[0, 1]`.
    pub distance: f64,
}

/// How angular distance decided: every allowed run's distance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AngularTrace {
    pub tokens: AngularTokens,
    pub run_length: usize,
    /// Allowed runs in ascending start order.
    pub runs: Vec<RunDistance>,
    pub protected: Vec<usize>,
}

/// `d[l]` for every `l` in `0..=L-n`: mean angular distance between the input of block `l` and the
/// output of block `l + n - 1`. Returns the distances and the number of block forwards run.
pub fn run_distances(
    lm: &dyn BlockLm,
    calibration: &[Vec<u32>],
    n: usize,
    tokens: AngularTokens,
    batch_size: usize,
) -> Result<(Vec<f64>, u64)> {
    check_windows(calibration, 1)?;
    let l = lm.num_blocks();
    check_n(n, l + 1)?;
    let mut sums = vec![0f64; l + 1 - n];
    let mut count = 0usize;
    let forwards = for_each_dense_batch(lm, calibration, batch_size, |states| {
        let s = states[0].dims()[1];
        for (start, sum) in sums.iter_mut().enumerate() {
            let (a, b) = match tokens {
                AngularTokens::Last => (states[start].narrow(1, s - 1, 1), states[start + n].narrow(1, s - 1, 1)),
                AngularTokens::All => (Ok(states[start].clone()), Ok(states[start + n].clone())),
            };
            let map = |e: candle_core::Error| crate::BaselineError::Model(e.into());
            let cos = rows(&token_cosine(&a.map_err(map)?, &b.map_err(map)?)?)?;
            *sum += cos.iter().flatten().map(|c| c.clamp(-1.0, 1.0).acos() / std::f64::consts::PI).sum::<f64>();
        }
        count += states[0].dims()[0] * if tokens == AngularTokens::Last { 1 } else { s };
        Ok(())
    })?;
    Ok((sums.into_iter().map(|x| x / count as f64).collect(), forwards))
}

impl Pruner for Angular {
    fn name(&self) -> &'static str {
        "angular"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        let l = lm.num_blocks();
        check_n(n, l)?;
        let eligible = eligible_blocks(l, &self.protected)?.len();
        let allowed: Vec<usize> = (0..=l - n).filter(|&s| !(s..s + n).any(|b| self.protected.contains(&b))).collect();
        if allowed.is_empty() {
            return Err(crate::BaselineError::NotEnoughEligible {
                method: "angular",
                n,
                eligible,
                num_blocks: l,
                why: format!("no run of {n} contiguous blocks avoids the protected blocks {:?}", self.protected),
            });
        }
        let (d, forwards) = run_distances(lm.as_ref(), calibration, n, self.tokens, self.batch_size)?;
        let runs: Vec<RunDistance> = allowed.iter().map(|&s| RunDistance { start: s, distance: d[s] }).collect();
        let best = runs
            .iter()
            .min_by(|a, b| loss_order(a.distance, b.distance).then(a.start.cmp(&b.start)))
            .map(|r| r.start)
            .unwrap_or(0);
        let removed: Vec<usize> = (best..best + n).collect();
        let mask = BlockMask::from_removed(l, &removed)?;
        tracing::info!(%mask, distance = d[best], "angular: closest run");
        let counts = ForwardCounts { block_forwards: forwards, head_forwards: 0, candidates: 0 };
        let trace = AngularTrace { tokens: self.tokens, run_length: n, runs, protected: self.protected.clone() };
        Ok(PruneResult::new(self.name(), n, mask, Trace::Angular(trace), counts, start.elapsed()))
    }
}
