//! The target model's own view of a window: the residual stream at block boundary `k`, mean-pooled
//! over the window's real tokens (and L2-normalised by default, so that a few massive-activation
//! channels do not dominate k-means' Euclidean distance).
//!
//! Boundary `k` is the input of block `k` (`k = 0`: token embeddings; `k = L`: the output of the last
//! block, before the final norm), the indexing of `evop_model::hidden_states`. Only blocks `0..k` run.
use super::{masked_mean, Embedder};
use crate::error::{DataError, Result};
use crate::window::Window;
use evop_model::{AttnContext, BlockLm};
use ndarray::Array2;
use std::sync::Arc;

/// Mean-pooled hidden state of the target model at one block boundary.
pub struct HiddenStateEmbedder {
    lm: Arc<dyn BlockLm>,
    block: usize,
    batch_size: usize,
    normalize: bool,
}

impl HiddenStateEmbedder {
    /// Embeds at boundary `block` (`0..=L`). Defaults: `batch_size = 8`, `normalize = true`.
    pub fn new(lm: Arc<dyn BlockLm>, block: usize) -> Result<Self> {
        let l = lm.num_blocks();
        if block > l {
            return Err(DataError::param("hidden-state block", block, format!("the model has boundaries 0..={l}")));
        }
        Ok(Self { lm, block, batch_size: 8, normalize: true })
    }

    /// Windows per forward pass (at least 1).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Whether rows are L2-normalised.
    pub fn normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }
}

impl Embedder for HiddenStateEmbedder {
    fn name(&self) -> String {
        let info = self.lm.info();
        format!(
            "hidden state of {} ({} blocks) at boundary {}, mean-pooled{}",
            info.architecture,
            info.num_blocks,
            self.block,
            if self.normalize { ", L2-normalised" } else { "" }
        )
    }

    fn dim(&self) -> usize {
        self.lm.info().hidden_size
    }

    fn embed(&self, windows: &[Window]) -> Result<Array2<f32>> {
        let lm = self.lm.as_ref();
        let mut out = Array2::zeros((windows.len(), self.dim()));
        for (c, chunk) in windows.chunks(self.batch_size).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|w| w.ids.clone()).collect();
            let input = evop_model::perplexity::batch_tensor(lm, &ids)?;
            let s = input.dim(1)?;
            let ctx = AttnContext::new(lm.info(), s, 0)?;
            let mut h = lm.embed(&input, 0)?;
            for i in 0..self.block {
                h = lm.block(i, &h, &ctx, None)?;
            }
            let n_tokens: Vec<usize> = chunk.iter().map(|w| w.n_tokens.clamp(1, s)).collect();
            let pooled = masked_mean(&h, &n_tokens, self.normalize)?;
            let start = c * self.batch_size;
            out.slice_mut(ndarray::s![start..start + chunk.len(), ..]).assign(&pooled);
        }
        Ok(out)
    }
}
