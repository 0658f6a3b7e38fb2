//! Calibration loss of masked models, computed with exact reuse across candidates.
//!
//! Every pruning method (SLEB's greedy steps, one-shot ranking, exhaustive search, EvoP's
//! evolutionary search) asks the same question many times: the mean token NLL of each
//! calibration window under some mask. The reference implementations run a full forward per
//! candidate. Here:
//! - the dense residual stream at every block boundary is computed once per calibration batch, so
//!   a candidate starts at its first skipped block (everything before it equals the dense model);
//! - a set of candidates is evaluated as a prefix tree over their kept-block sequences: every
//!   shared prefix of block applications runs once;
//! - block and head applications are counted, so the savings are measurable.
//!
//! Results equal the naive masked forward up to float reassociation (the same block runs on the
//! same input either way).
use crate::error::{ModelError, Result};
use crate::mask::BlockMask;
use crate::model::{AttnContext, BlockLm};
use crate::perplexity::{batch_tensor, token_nll_from_hidden};
use candle_core::{DType, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How many block and head applications (each over one calibration batch) were run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwardCounts {
    /// Block applications, one per (block, calibration batch).
    pub block_forwards: u64,
    /// Head applications (final norm + LM head + loss), one per (candidate, calibration batch).
    pub head_forwards: u64,
    /// Candidates evaluated.
    pub candidates: u64,
}

/// What a window's loss is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean token negative log-likelihood of the window's next tokens (SLEB's criterion).
    #[default]
    Nll,
    /// Mean over positions of KL(dense || masked) between next-token distributions (EvoPress's
    /// criterion). Keeps the dense log-probabilities of every calibration position in memory:
    /// `windows x seqlen x vocab` floats.
    KlToDense,
}

/// Settings of a [`CalibrationEvaluator`].
#[derive(Clone, Debug)]
pub struct EvaluatorOptions {
    /// Windows per forward batch. Default 8.
    pub batch_size: usize,
    /// Keep the dense hidden states at every block boundary. Default true.
    pub dense_cache: bool,
    /// Evaluate a set of candidates as a prefix tree. Default true.
    pub prefix_sharing: bool,
    /// The per-window loss. Default [`LossKind::Nll`].
    pub loss: LossKind,
}

impl Default for EvaluatorOptions {
    fn default() -> Self {
        Self { batch_size: 8, dense_cache: true, prefix_sharing: true, loss: LossKind::Nll }
    }
}

impl EvaluatorOptions {
    /// The reference behaviour: a full masked forward per candidate, nothing reused.
    pub fn naive(batch_size: usize) -> Self {
        Self { batch_size, dense_cache: false, prefix_sharing: false, loss: LossKind::Nll }
    }
}

struct Batch {
    ids: Tensor,
    ctx: AttnContext,
    windows: usize,
    /// Dense boundary states `0..=L` when the dense cache is on (index 0 = embeddings).
    dense: Option<Vec<Tensor>>,
    /// Dense next-token log-probabilities `(b, s - 1, vocab)` for [`LossKind::KlToDense`].
    dense_logp: Option<Tensor>,
}

/// Computes per-window mean token NLL of masked models on a fixed calibration set.
pub struct CalibrationEvaluator {
    lm: Arc<dyn BlockLm>,
    batches: Vec<Batch>,
    options: EvaluatorOptions,
    block_forwards: AtomicU64,
    head_forwards: AtomicU64,
    candidates: AtomicU64,
}

impl CalibrationEvaluator {
    /// Prepares the calibration windows (all of one length) in batches; with the dense cache on,
    /// runs the dense model once over them.
    pub fn new(lm: Arc<dyn BlockLm>, windows: &[Vec<u32>], options: EvaluatorOptions) -> Result<Self> {
        if windows.is_empty() {
            return Err(ModelError::Input("the calibration set is empty".into()));
        }
        let mut batches = Vec::new();
        for chunk in windows.chunks(options.batch_size.max(1)) {
            let ids = batch_tensor(lm.as_ref(), chunk)?;
            let ctx = AttnContext::new(lm.info(), ids.dim(1)?, 0)?;
            batches.push(Batch { ids, ctx, windows: chunk.len(), dense: None, dense_logp: None });
        }
        let me = Self {
            lm,
            batches,
            options,
            block_forwards: AtomicU64::new(0),
            head_forwards: AtomicU64::new(0),
            candidates: AtomicU64::new(0),
        };
        me.fill_dense_cache()?.fill_dense_logp()
    }

    fn fill_dense_logp(mut self) -> Result<Self> {
        if self.options.loss != LossKind::KlToDense {
            return Ok(self);
        }
        let l = self.lm.num_blocks();
        for b in 0..self.batches.len() {
            let h = match &self.batches[b].dense {
                Some(states) => states[l].clone(),
                None => {
                    let batch = &self.batches[b];
                    let mut h = self.lm.embed(&batch.ids, 0)?;
                    for i in 0..l {
                        h = self.lm.block(i, &h, &batch.ctx, None)?;
                    }
                    self.block_forwards.fetch_add(l as u64, Ordering::Relaxed);
                    h
                }
            };
            self.batches[b].dense_logp = Some(next_token_logp(self.lm.as_ref(), &h)?);
        }
        Ok(self)
    }

    fn fill_dense_cache(mut self) -> Result<Self> {
        if !self.options.dense_cache {
            return Ok(self);
        }
        let l = self.lm.num_blocks();
        for b in 0..self.batches.len() {
            let batch = &self.batches[b];
            let mut states = Vec::with_capacity(l + 1);
            let mut h = self.lm.embed(&batch.ids, 0)?;
            for i in 0..l {
                let next = self.lm.block(i, &h, &batch.ctx, None)?;
                states.push(h);
                h = next;
            }
            states.push(h);
            self.block_forwards.fetch_add(l as u64, Ordering::Relaxed);
            self.batches[b].dense = Some(states);
        }
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn BlockLm> {
        &self.lm
    }

    /// Number of calibration windows.
    pub fn num_windows(&self) -> usize {
        self.batches.iter().map(|b| b.windows).sum()
    }

    /// Block, head and candidate counts so far (the dense cache's one pass included).
    pub fn counts(&self) -> ForwardCounts {
        ForwardCounts {
            block_forwards: self.block_forwards.load(Ordering::Relaxed),
            head_forwards: self.head_forwards.load(Ordering::Relaxed),
            candidates: self.candidates.load(Ordering::Relaxed),
        }
    }

    /// Mean token NLL of every window under `mask`.
    pub fn window_losses(&self, mask: &BlockMask) -> Result<Vec<f64>> {
        Ok(self.window_losses_many(std::slice::from_ref(mask))?.remove(0))
    }

    /// Mean token NLL of every window under each mask, in order. Windows are ordered as given to
    /// [`CalibrationEvaluator::new`].
    pub fn window_losses_many(&self, masks: &[BlockMask]) -> Result<Vec<Vec<f64>>> {
        let l = self.lm.num_blocks();
        for m in masks {
            m.check_len(l)?;
        }
        self.candidates.fetch_add(masks.len() as u64, Ordering::Relaxed);
        let mut out: Vec<Vec<f64>> = vec![Vec::with_capacity(self.num_windows()); masks.len()];
        for batch in &self.batches {
            let mut losses: Vec<Option<Vec<f64>>> = vec![None; masks.len()];
            if self.options.prefix_sharing {
                let all: Vec<usize> = (0..masks.len()).collect();
                let (start, h) = self.start_state(batch, masks, &all)?;
                self.tree(batch, masks, all, start, h, true, &mut losses)?;
            } else {
                for k in 0..masks.len() {
                    let (start, h) = self.start_state(batch, masks, &[k])?;
                    self.tree(batch, masks, vec![k], start, h, true, &mut losses)?;
                }
            }
            for (k, l) in losses.into_iter().enumerate() {
                out[k].extend(l.expect("every candidate reaches a leaf"));
            }
        }
        Ok(out)
    }

    /// Where evaluation of `group` starts: with the dense cache, the boundary before the first
    /// block any of them skips; otherwise the embeddings.
    fn start_state(&self, batch: &Batch, masks: &[BlockMask], group: &[usize]) -> Result<(usize, Tensor)> {
        match &batch.dense {
            Some(states) => {
                let l = self.lm.num_blocks();
                let first = group.iter().map(|&k| masks[k].first_removed().unwrap_or(l)).min().unwrap_or(l);
                Ok((first, states[first].clone()))
            }
            None => Ok((0, self.lm.embed(&batch.ids, 0)?)),
        }
    }

    /// Depth-first over blocks `i..L`: candidates that keep block `i` share its application.
    /// `dense_path` says that `h` is the dense state at boundary `i` (nothing skipped so far), in
    /// which case the cached dense states let the walk jump to the group's first skipped block.
    #[allow(clippy::too_many_arguments)]
    fn tree(
        &self,
        batch: &Batch,
        masks: &[BlockMask],
        group: Vec<usize>,
        mut i: usize,
        mut h: Tensor,
        mut dense_path: bool,
        losses: &mut [Option<Vec<f64>>],
    ) -> Result<()> {
        let l = self.lm.num_blocks();
        loop {
            if dense_path {
                if let Some(states) = &batch.dense {
                    let first = group.iter().map(|&k| masks[k].first_removed().unwrap_or(l)).min().unwrap_or(l);
                    if first > i {
                        i = first;
                        h = states[first].clone();
                    }
                }
            }
            if i == l {
                let per_token = match &batch.dense_logp {
                    Some(dense) => {
                        let logp = next_token_logp(self.lm.as_ref(), &h)?;
                        (dense.exp()? * (dense - logp)?)?.sum(2)?
                    }
                    None => token_nll_from_hidden(self.lm.as_ref(), &h, &batch.ids)?,
                };
                let nll = per_token.mean(1)?.to_dtype(DType::F64)?;
                self.head_forwards.fetch_add(1, Ordering::Relaxed);
                let v = nll.to_vec1::<f64>()?;
                for &k in &group {
                    losses[k] = Some(v.clone());
                }
                return Ok(());
            }
            let (keep, skip): (Vec<usize>, Vec<usize>) = group.iter().partition(|&&k| masks[k].is_kept(i));
            if !skip.is_empty() && !keep.is_empty() {
                // Branch: the skipping candidates continue from the current state.
                self.tree(batch, masks, skip, i + 1, h.clone(), false, losses)?;
                let h = self.apply_block(batch, i, &h)?;
                return self.tree(batch, masks, keep, i + 1, h, dense_path, losses);
            }
            if keep.is_empty() {
                dense_path = false;
            } else {
                h = self.apply_block(batch, i, &h)?;
            }
            i += 1;
        }
    }

    fn apply_block(&self, batch: &Batch, i: usize, h: &Tensor) -> Result<Tensor> {
        self.block_forwards.fetch_add(1, Ordering::Relaxed);
        self.lm.block(i, h, &batch.ctx, None)
    }
}

/// Next-token log-probabilities `(b, s - 1, vocab)` (f32) from the final residual stream.
fn next_token_logp(lm: &dyn BlockLm, h: &Tensor) -> Result<Tensor> {
    let s = h.dim(1)?;
    let logits = lm.head(&h.narrow(1, 0, s - 1)?)?.to_dtype(DType::F32)?;
    Ok(candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{load, LoadOptions};
    use crate::perplexity::window_nlls;

    fn tiny() -> Arc<dyn BlockLm> {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
        load(&dir, &LoadOptions::default()).unwrap().lm
    }

    fn windows() -> Vec<Vec<u32>> {
        (0..5).map(|w| (0..12).map(|t| ((w * 31 + t * 7) % 120 + 4) as u32).collect()).collect()
    }

    #[test]
    fn reuse_equals_the_naive_forward_and_saves_blocks() {
        let lm = tiny();
        let masks: Vec<BlockMask> = [vec![], vec![1], vec![2], vec![0, 3], vec![1, 2], vec![3], vec![2]]
            .iter()
            .map(|r| BlockMask::from_removed(4, r).unwrap())
            .collect();
        let fast = CalibrationEvaluator::new(lm.clone(), &windows(), EvaluatorOptions { batch_size: 2, ..Default::default() }).unwrap();
        let naive = CalibrationEvaluator::new(lm.clone(), &windows(), EvaluatorOptions::naive(2)).unwrap();
        let a = fast.window_losses_many(&masks).unwrap();
        let b = naive.window_losses_many(&masks).unwrap();
        for (k, m) in masks.iter().enumerate() {
            let direct = window_nlls(lm.as_ref(), &windows(), m, 5).unwrap();
            for w in 0..5 {
                assert!((a[k][w] - direct[w]).abs() <= 1e-6 * direct[w].abs(), "mask {m}: {} vs {}", a[k][w], direct[w]);
                assert!((b[k][w] - direct[w]).abs() <= 1e-6 * direct[w].abs());
            }
        }
        let (f, n) = (fast.counts(), naive.counts());
        assert!(f.block_forwards < n.block_forwards, "{f:?} vs {n:?}");
        // The naive path runs every kept block of every candidate on each of the 3 batches.
        let kept: u64 = masks.iter().map(|m| (4 - m.num_removed()) as u64).sum();
        assert_eq!(n.block_forwards, 3 * kept);
        assert_eq!(n.head_forwards, 3 * masks.len() as u64);
    }

    #[test]
    fn kl_to_dense_is_zero_for_the_dense_model_and_matches_a_direct_computation() {
        let lm = tiny();
        let opts = EvaluatorOptions { batch_size: 2, loss: LossKind::KlToDense, ..Default::default() };
        let ev = CalibrationEvaluator::new(lm.clone(), &windows(), opts).unwrap();
        let mask = BlockMask::from_removed(4, &[2]).unwrap();
        let out = ev.window_losses_many(&[BlockMask::dense(4), mask.clone()]).unwrap();
        assert!(out[0].iter().all(|&k| k.abs() < 1e-6), "{:?}", out[0]);
        // Direct: full logits of both models, KL per position, mean per window.
        let ids = crate::perplexity::batch_tensor(lm.as_ref(), &windows()).unwrap();
        let lp = |m: &BlockMask| {
            let logits = crate::model::forward_masked(lm.as_ref(), &ids, m).unwrap().narrow(1, 0, 11).unwrap();
            candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap()
        };
        let (p, q) = (lp(&BlockMask::dense(4)), lp(&mask));
        let kl: Vec<f32> = (p.exp().unwrap() * (p - q).unwrap()).unwrap().sum(2).unwrap().mean(1).unwrap().to_vec1().unwrap();
        for w in 0..5 {
            assert!(out[1][w] > 1e-4, "removing a block must move the distribution");
            assert!((out[1][w] - kl[w] as f64).abs() < 1e-5, "{} vs {}", out[1][w], kl[w]);
        }
    }

    #[test]
    fn empty_calibration_and_wrong_mask_are_errors() {
        let lm = tiny();
        assert!(CalibrationEvaluator::new(lm.clone(), &[], EvaluatorOptions::default()).is_err());
        let ev = CalibrationEvaluator::new(lm, &windows(), EvaluatorOptions::default()).unwrap();
        assert!(ev.window_losses(&BlockMask::dense(5)).is_err());
    }
}
