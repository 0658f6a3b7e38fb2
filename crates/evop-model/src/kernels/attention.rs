//! Scaled dot-product attention, dispatched to the fastest kernel that applies: the fused CPU
//! kernel ([`super::cpu_attention`]), FlashAttention-2 on CUDA ([`super::flash_attention`]), the
//! fused masked softmax ([`super::masked_softmax`]), else [`super::reference::attention_reference`].
use super::reference::{attention_reference, expand_kv};
use candle_core::{DType, Tensor};

/// Per-forward attention context: where the chunk starts and its additive causal mask
/// (built from a model's sizes by `AttnContext::new` in [`crate::arch`]).
#[derive(Clone, Debug)]
pub struct AttnContext {
    /// Absolute position of the first token of this chunk (the KV cache length).
    pub offset: usize,
    /// Tokens in this chunk.
    pub seq_len: usize,
    /// `(seq_len, offset + seq_len)` additive mask, or `None` when no position is hidden.
    pub mask: Option<Tensor>,
    /// The model's attention window (Mistral), which the mask also encodes.
    pub sliding_window: Option<usize>,
}

/// Scaled dot-product attention. `q: (b, h, s, d)`, `k`/`v`: `(b, h_kv, t, d)`, `mask`: additive
/// `(s, t)` or `None`. Returns `(b, s, h * d)`.
///
/// On the CPU in f32, with no mask or a mask of the form [`causal_mask`] builds (each query sees
/// one contiguous range of keys), this runs the fused kernel of [`crate::kernels::cpu_attention`]; on CUDA
/// it runs [`attention_fused_softmax`]; every other case (Metal, CPU bf16/f16, other masks on the
/// CPU) runs [`attention_reference`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if let Some(out) = crate::kernels::cpu_attention::try_attention(q, k, v, mask, scale)? {
        return Ok(out);
    }
    if q.device().is_cuda() {
        return attention_fused_softmax(q, k, v, mask, scale);
    }
    attention_reference(q, k, v, mask, scale)
}

/// Causal attention for a model chunk described by `ctx` (offset, mask, sliding window):
/// [`crate::kernels::flash_attention`] where it applies (CUDA, bf16/f16, head size 64 or 128, prompts of at
/// least [`crate::kernels::flash_attention::MIN_QUERIES`] tokens), otherwise [`attention`] with the mask.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ctx: &AttnContext,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if let Some(out) = crate::kernels::flash_attention::try_flash_attention(q, k, v, ctx.offset, ctx.sliding_window, scale)? {
        return Ok(out);
    }
    attention(q, k, v, ctx.mask.as_ref(), scale)
}

/// Scaled dot-product attention with materialised scores and one fused pass between the two
/// products: `Q K^T` in the model's dtype, then [`crate::kernels::masked_softmax::masked_softmax`] (scale,
/// mask and softmax in f32, written back in the model's dtype), then `P V`. The keys are read
/// transposed in place (no copy). Shapes as in [`attention`]; any device.
pub fn attention_fused_softmax(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (k, v) = expand_kv(h, k, v)?;
    let scores = q.contiguous()?.matmul(&k.t()?)?;
    let probs = crate::kernels::masked_softmax::masked_softmax(&scores, mask, scale)?;
    let out = probs.matmul(&v)?;
    out.transpose(1, 2)?.reshape((b, s, h * d))
}

/// Splits `(b, s, heads * d)` into `(b, heads, s, d)` (a transposed view).
pub fn split_heads(xs: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, hd) = xs.dims3()?;
    xs.reshape((b, s, heads, hd / heads))?.transpose(1, 2)
}

/// [`split_heads`] as a contiguous tensor; on CUDA and the CPU one copy op ([`crate::kernels::block_ops::to_heads`]).
pub fn split_heads_contiguous(xs: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, hd) = xs.dims3()?;
    if (xs.device().is_cuda() || xs.device().is_cpu()) && (hd / heads).is_multiple_of(8) && matches!(xs.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return crate::kernels::block_ops::to_heads(&xs.reshape((b, s, heads, hd / heads))?);
    }
    split_heads(xs, heads)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::reference::{causal_mask, needs_mask};
    use candle_core::{DType, Device};

    #[test]
    fn fused_softmax_attention_matches_the_reference() {
        let cpu = Device::Cpu;
        let dev = crate::device::test_device().expect("EVOP_TEST_DEVICE");
        for (s, offset, window, heads, kv_heads) in [(7, 0, None, 4, 4), (33, 5, Some(16), 6, 2), (1, 20, None, 4, 1)] {
            let q = Tensor::randn(0f32, 1.0, (2, heads, s, 16), &cpu).unwrap();
            let k = Tensor::randn(0f32, 1.0, (2, kv_heads, offset + s, 16), &cpu).unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, kv_heads, offset + s, 16), &cpu).unwrap();
            let mask = needs_mask(s, offset, window).then(|| causal_mask(s, offset, window, DType::F32, &cpu).unwrap());
            let want = attention_reference(&q, &k, &v, mask.as_ref(), 0.25).unwrap();
            let on = |t: &Tensor| t.to_device(&dev).unwrap();
            let got = attention_fused_softmax(&on(&q), &on(&k), &on(&v), mask.as_ref().map(on).as_ref(), 0.25).unwrap();
            let diff = (got.to_device(&cpu).unwrap() - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "s {s} offset {offset}: {diff}");
        }
    }
}
