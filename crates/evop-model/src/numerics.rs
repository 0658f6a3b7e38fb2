//! Numerics shared by every architecture, written once: causal (and sliding-window) masks,
//! rotary position tables, grouped-query `repeat_kv` and scaled dot-product attention.
//!
//! Shapes follow the Hugging Face modelling code: hidden states are `(batch, seq, hidden)`,
//! attention tensors `(batch, heads, seq, head_dim)`.
use candle_core::{DType, Device, Tensor, D};

/// candle-nn's RMSNorm, SiLU and softmax ops as the model runs them, re-exported for measurement
/// harnesses (examples and benches have no direct candle-nn dependency).
pub use candle_nn::ops::{rms_norm, silu, softmax_last_dim};

/// Additive attention mask of shape `(seq_len, offset + seq_len)`: 0 where query `i` (at absolute
/// position `offset + i`) may attend key `j`, `-inf` elsewhere. With `sliding_window = Some(w)` a
/// query only sees the `w` most recent keys (itself included), as Mistral does.
pub fn causal_mask(
    seq_len: usize,
    offset: usize,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = offset + seq_len;
    let mut data = vec![0f32; seq_len * total];
    for i in 0..seq_len {
        let q = offset + i;
        for j in 0..total {
            let future = j > q;
            let too_old = sliding_window.is_some_and(|w| q >= w && j <= q - w);
            if future || too_old {
                data[i * total + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(data, (seq_len, total), device)?.to_dtype(dtype)
}

/// Whether a mask is needed at all (single-token steps without a sliding window need none).
pub fn needs_mask(seq_len: usize, offset: usize, sliding_window: Option<usize>) -> bool {
    seq_len > 1 || sliding_window.is_some_and(|w| offset + seq_len > w)
}

/// Repeats each of `n_kv` key/value heads `n_rep` times: `(b, n_kv, s, d) -> (b, n_kv * n_rep, s, d)`.
pub fn repeat_kv(xs: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, n_kv, s, d) = xs.dims4()?;
    xs.unsqueeze(2)?.expand((b, n_kv, n_rep, s, d))?.reshape((b, n_kv * n_rep, s, d))
}

/// Precomputed rotary-embedding tables (half-split layout, as Hugging Face Llama uses).
#[derive(Clone, Debug)]
pub struct RotaryTable {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryTable {
    /// Tables for positions `0..max_positions` with inverse frequencies `theta^(-2i/head_dim)`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = t.matmul(&inv_freq)?;
        Ok(Self { cos: freqs.cos()?.to_dtype(dtype)?, sin: freqs.sin()?.to_dtype(dtype)? })
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `q` and `k` (each `(b, heads, seq, head_dim)`) for absolute positions starting at `offset`.
    pub fn apply(&self, q: &Tensor, k: &Tensor, offset: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let seq = q.dim(2)?;
        if offset + seq > self.max_positions() {
            candle_core::bail!(
                "position {} exceeds the rotary table ({} positions)",
                offset + seq,
                self.max_positions()
            );
        }
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
        Ok((q, k))
    }
}

/// Scaled dot-product attention. `q: (b, h, s, d)`, `k`/`v`: `(b, h_kv, t, d)`, `mask`: additive
/// `(s, t)` or `None`. Returns `(b, s, h * d)`.
///
/// On the CPU in f32, with no mask or a mask of the form [`causal_mask`] builds (each query sees
/// one contiguous range of keys), this runs the fused kernel of [`crate::cpu_attention`]; every
/// other case (GPU, bf16/f16, other masks) runs [`attention_reference`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if let Some(out) = crate::cpu_attention::try_attention(q, k, v, mask, scale)? {
        return Ok(out);
    }
    attention_reference(q, k, v, mask, scale)
}

/// Scaled dot-product attention with tensor operations, on any device and dtype (the reference
/// for the fused CPU kernel): grouped-query heads are expanded, the `(b, h, s, t)` scores are
/// materialised and the softmax runs in f32. Shapes as in [`attention`].
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let n_rep = h / k.dim(1)?;
    let k = repeat_kv(k.clone(), n_rep)?;
    let v = repeat_kv(v.clone(), n_rep)?;
    let dtype = q.dtype();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(DType::F32)?)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    let out = probs.matmul(&v.contiguous()?)?;
    out.transpose(1, 2)?.reshape((b, s, h * d))
}

/// Splits `(b, s, heads * d)` into `(b, heads, s, d)`.
pub fn split_heads(xs: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, hd) = xs.dims3()?;
    xs.reshape((b, s, heads, hd / heads))?.transpose(1, 2)
}

/// Index of the last dimension, re-exported for readability at call sites.
pub const LAST: D = D::Minus1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_and_sliding_masks() {
        let m = causal_mask(3, 1, None, DType::F32, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = m.to_vec2().unwrap();
        assert_eq!(v[0], vec![0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(v[2], vec![0.0; 4]);
        let w = causal_mask(4, 0, Some(2), DType::F32, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = w.to_vec2().unwrap();
        // Query 3 sees keys 2 and 3 only.
        assert_eq!(v[3][..2], [f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(v[3][2..], [0.0, 0.0]);
    }

    #[test]
    fn repeat_kv_repeats_each_head_contiguously() {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu).unwrap().reshape((1, 2, 2, 1)).unwrap();
        let r = repeat_kv(x, 2).unwrap();
        let v: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }
}

/// A linear layer that multiplies all leading dimensions as one matrix: `(.., in) -> (.., out)`.
///
/// candle-nn's `Linear` runs one GEMM per batch element against the broadcast weight; for wide
/// layers (the LM head is 576 x 49152 on SmolLM2) that streams the whole weight once per batch
/// element. Flattening to a single `(rows, in) x (in, out)` GEMM streams it once.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `weight` is `(out, in)` as in PyTorch; `bias` is `(out,)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The `(out, in)` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl From<candle_nn::Linear> for Linear {
    fn from(l: candle_nn::Linear) -> Self {
        Self::new(l.weight().clone(), l.bias().cloned())
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        let inner = dims[dims.len() - 1];
        let rows = xs.elem_count() / inner.max(1);
        let flat = xs.reshape((rows, inner))?;
        let mut out = flat.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            out = out.broadcast_add(b)?;
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty shape") = self.weight.dim(0)?;
        out.reshape(shape)
    }
}
