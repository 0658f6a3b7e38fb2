//! Token-level negative log-likelihood and perplexity with the standard protocol: join the texts
//! with `"\n\n"`, tokenize once, cut non-overlapping windows of `seqlen` tokens (the remainder is
//! dropped), and report `exp` of the mean NLL over every predicted token (as in the SLEB and
//! GPTQ evaluation code).
use crate::error::{ModelError, Result};
use crate::mask::BlockMask;
use crate::arch::{run_blocks, AttnContext, BlockLm};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// Per-token NLL `(b, s - 1)` (f32) of predicting `ids[:, 1..]` from `logits[:, ..s-1]`.
pub fn token_nll(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, s, _v) = logits.dims3()?;
    if s < 2 {
        return Err(ModelError::Input("a window needs at least 2 tokens to predict one".into()));
    }
    let logits = logits.narrow(1, 0, s - 1)?.to_dtype(DType::F32)?.contiguous()?;
    let targets = ids.narrow(1, 1, s - 1)?.to_dtype(DType::U32)?.unsqueeze(2)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let picked = logits.gather(&targets.contiguous()?, 2)?.squeeze(2)?;
    Ok((lse - picked)?.reshape((b, s - 1))?)
}

/// Per-token NLL from the residual stream after the last block (final norm + head applied here).
pub fn token_nll_from_hidden(lm: &dyn BlockLm, hidden: &Tensor, ids: &Tensor) -> Result<Tensor> {
    token_nll(&lm.head(hidden)?, ids)
}

/// Stacks equal-length windows into a `(b, s)` u32 tensor on the model's device.
pub fn batch_tensor(lm: &dyn BlockLm, windows: &[Vec<u32>]) -> Result<Tensor> {
    let s = windows.first().map(Vec::len).ok_or_else(|| ModelError::Input("no windows".into()))?;
    if windows.iter().any(|w| w.len() != s) {
        return Err(ModelError::Input("windows in one batch must have the same length".into()));
    }
    let vocab = lm.info().vocab_size as u32;
    if let Some(bad) = windows.iter().flatten().find(|&&t| t >= vocab) {
        return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary of {vocab}")));
    }
    let flat: Vec<u32> = windows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (windows.len(), s), &lm.info().device)?)
}

/// Per-token NLL `(b, s - 1)` of the masked model on a batch of equal-length windows.
pub fn masked_token_nll(lm: &dyn BlockLm, windows: &[Vec<u32>], mask: &BlockMask) -> Result<Tensor> {
    let ids = batch_tensor(lm, windows)?;
    let ctx = AttnContext::new(lm.info(), ids.dim(1)?, 0)?;
    let h = run_blocks(lm, lm.embed(&ids, 0)?, 0, mask, &ctx)?;
    token_nll_from_hidden(lm, &h, &ids)
}

/// The mean token NLL of each window under `mask`, computed `batch_size` windows at a time.
pub fn window_nlls(lm: &dyn BlockLm, windows: &[Vec<u32>], mask: &BlockMask, batch_size: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(batch_size.max(1)) {
        let nll = masked_token_nll(lm, chunk, mask)?.mean(1)?.to_dtype(DType::F64)?;
        out.extend(nll.to_vec1::<f64>()?);
    }
    Ok(out)
}

/// A perplexity measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Perplexity {
    /// Mean NLL over every predicted token (nats).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Predicted tokens.
    pub tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
}

/// Perplexity of the masked model over windows (token-weighted mean over all windows).
pub fn perplexity(lm: &dyn BlockLm, windows: &[Vec<u32>], mask: &BlockMask, batch_size: usize) -> Result<Perplexity> {
    if windows.is_empty() {
        return Err(ModelError::Input("no evaluation windows (is the text shorter than one window?)".into()));
    }
    let mut sum = 0f64;
    let mut tokens = 0usize;
    for chunk in windows.chunks(batch_size.max(1)) {
        let nll = masked_token_nll(lm, chunk, mask)?;
        tokens += nll.elem_count();
        sum += nll.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    }
    let mean_nll = sum / tokens as f64;
    Ok(Perplexity { mean_nll, perplexity: mean_nll.exp(), tokens, windows: windows.len() })
}

/// Cuts token ids into non-overlapping windows of `seqlen`, dropping the remainder.
pub fn cut_windows(ids: &[u32], seqlen: usize) -> Vec<Vec<u32>> {
    if seqlen == 0 {
        return Vec::new();
    }
    ids.chunks_exact(seqlen).map(<[u32]>::to_vec).collect()
}

/// Joins texts with `"\n\n"` (the standard protocol) for tokenizing once.
pub fn join_texts<S: AsRef<str>>(texts: &[S]) -> String {
    texts.iter().map(AsRef::as_ref).collect::<Vec<_>>().join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nll_matches_hand_computation() {
        // Two positions, vocab 3: logits row 0 = [0, ln 2, 0] predicting token 1.
        let logits = Tensor::from_vec(vec![0f32, 2f32.ln(), 0.0, 0.0, 0.0, 0.0], (1, 2, 3), &Device::Cpu).unwrap();
        let ids = Tensor::from_vec(vec![0u32, 1], (1, 2), &Device::Cpu).unwrap();
        let nll: Vec<Vec<f32>> = token_nll(&logits, &ids).unwrap().to_vec2().unwrap();
        assert!((nll[0][0] - (4f32 / 2.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn windows_drop_the_remainder() {
        let w = cut_windows(&[1, 2, 3, 4, 5], 2);
        assert_eq!(w, vec![vec![1, 2], vec![3, 4]]);
        assert!(cut_windows(&[1], 0).is_empty());
    }
}
