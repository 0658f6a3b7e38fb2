//! Rotary position embeddings (Su et al. 2021) in the half-split layout Hugging Face Llama uses.
use candle_core::{DType, Device, Tensor};

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

    /// The `(seq, head_dim / 2)` cos and sin rows of positions `offset..offset + seq`.
    pub fn rows(&self, offset: usize, seq: usize) -> candle_core::Result<(Tensor, Tensor)> {
        if offset + seq > self.max_positions() {
            candle_core::bail!(
                "position {} exceeds the rotary table ({} positions)",
                offset + seq,
                self.max_positions()
            );
        }
        Ok((self.cos.narrow(0, offset, seq)?, self.sin.narrow(0, offset, seq)?))
    }

    /// Rotates `q` and `k` (each `(b, heads, seq, head_dim)`) for absolute positions starting at `offset`.
    ///
    /// On CUDA and the CPU, when `q` and `k` are the head views of projection outputs (as
    /// [`split_heads`] makes them), one fused op per tensor rotates and transposes them
    /// ([`crate::kernels::block_ops::rope_to_heads`]).
    pub fn apply(&self, q: &Tensor, k: &Tensor, offset: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let seq = q.dim(2)?;
        let (cos, sin) = self.rows(offset, seq)?;
        if q.device().is_cuda() || q.device().is_cpu() {
            let (qt, kt) = (q.transpose(1, 2)?, k.transpose(1, 2)?);
            if qt.is_contiguous() && kt.is_contiguous() {
                return Ok((crate::kernels::block_ops::rope_to_heads(&qt, &cos, &sin)?, crate::kernels::block_ops::rope_to_heads(&kt, &cos, &sin)?));
            }
        }
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
        Ok((q, k))
    }
}
