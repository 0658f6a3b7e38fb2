//! Numerics shared by every architecture, written once: causal (and sliding-window) masks,
//! rotary position tables, grouped-query `repeat_kv` and scaled dot-product attention.
//!
//! Shapes follow the Hugging Face modelling code: hidden states are `(batch, seq, hidden)`,
//! attention tensors `(batch, heads, seq, head_dim)`.
use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
    /// On CUDA, when `q` and `k` are the head views of projection outputs (as [`split_heads`]
    /// makes them), one fused kernel per tensor rotates and transposes them
    /// ([`crate::block_ops::rope_to_heads`]).
    pub fn apply(&self, q: &Tensor, k: &Tensor, offset: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let seq = q.dim(2)?;
        let (cos, sin) = self.rows(offset, seq)?;
        if q.device().is_cuda() {
            let (qt, kt) = (q.transpose(1, 2)?, k.transpose(1, 2)?);
            if qt.is_contiguous() && kt.is_contiguous() {
                return Ok((crate::block_ops::rope_to_heads(&qt, &cos, &sin)?, crate::block_ops::rope_to_heads(&kt, &cos, &sin)?));
            }
        }
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
        Ok((q, k))
    }
}

/// Scaled dot-product attention. `q: (b, h, s, d)`, `k`/`v`: `(b, h_kv, t, d)`, `mask`: additive
/// `(s, t)` or `None`. Returns `(b, s, h * d)`.
///
/// On the CPU in f32, with no mask or a mask of the form [`causal_mask`] builds (each query sees
/// one contiguous range of keys), this runs the fused kernel of [`crate::cpu_attention`]; on CUDA
/// it runs [`attention_fused_softmax`]; every other case (Metal, CPU bf16/f16, other masks on the
/// CPU) runs [`attention_reference`].
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
    if q.device().is_cuda() {
        return attention_fused_softmax(q, k, v, mask, scale);
    }
    attention_reference(q, k, v, mask, scale)
}

/// Causal attention for a model chunk described by `ctx` (offset, mask, sliding window):
/// [`crate::flash_attention`] where it applies (CUDA, bf16/f16, head size 64 or 128, prompts of at
/// least [`crate::flash_attention::MIN_QUERIES`] tokens), otherwise [`attention`] with the mask.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ctx: &crate::model::AttnContext,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if let Some(out) = crate::flash_attention::try_flash_attention(q, k, v, ctx.offset, ctx.sliding_window, scale)? {
        return Ok(out);
    }
    attention(q, k, v, ctx.mask.as_ref(), scale)
}

/// Keys and values with every grouped-query head repeated up to `heads` (contiguous).
fn expand_kv(heads: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let n_rep = heads / k.dim(1)?;
    Ok((repeat_kv(k.contiguous()?, n_rep)?, repeat_kv(v.contiguous()?, n_rep)?))
}

/// Scaled dot-product attention with materialised scores and one fused pass between the two
/// products: `Q K^T` in the model's dtype, then [`crate::masked_softmax::masked_softmax`] (scale,
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
    let probs = crate::masked_softmax::masked_softmax(&scores, mask, scale)?;
    let out = probs.matmul(&v)?;
    out.transpose(1, 2)?.reshape((b, s, h * d))
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
    let (k, v) = expand_kv(h, k, v)?;
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

/// Splits `(b, s, heads * d)` into `(b, heads, s, d)` (a transposed view).
pub fn split_heads(xs: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, hd) = xs.dims3()?;
    xs.reshape((b, s, heads, hd / heads))?.transpose(1, 2)
}

/// [`split_heads`] as a contiguous tensor; on CUDA one copy kernel ([`crate::block_ops::to_heads`]).
pub fn split_heads_contiguous(xs: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, s, hd) = xs.dims3()?;
    if xs.device().is_cuda() && (hd / heads).is_multiple_of(8) && matches!(xs.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return crate::block_ops::to_heads(&xs.reshape((b, s, heads, hd / heads))?);
    }
    split_heads(xs, heads)?.contiguous()
}

/// `silu(gate) * up` elementwise (SwiGLU's gating) on same-shaped tensors. For f32 on the CPU
/// one parallel, vectorised pass (candle runs `silu` as a single-threaded pass with a library
/// `exp`, then `*` over a temporary); on CUDA one fused kernel ([`crate::block_ops::silu_mul`]);
/// otherwise the tensor ops.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(out) = cpu_binary_f32(gate, up, silu_mul_chunk)? {
        return Ok(out);
    }
    if gate.device().is_cuda() && gate.shape() == up.shape() {
        return crate::block_ops::silu_mul(gate, up);
    }
    silu(gate)? * up
}

/// `a + b` on same-shaped tensors (the residual adds). For f32 on the CPU a pass on rayon's pool,
/// like every other parallel CPU op of the block: candle's own parallel binary ops run on a
/// second pool of spinning threads, which compete with rayon's for the cores (measured: the
/// SmolLM2 forward at 128 x 1 and 512 x 1 is 5-20% faster this way, docs/performance.md);
/// otherwise the tensor op.
pub fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(out) = cpu_binary_f32(a, b, add_chunk)? {
        return Ok(out);
    }
    a + b
}

/// Elements per parallel task of the CPU elementwise ops.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// An elementwise kernel: `(a_chunk, b_chunk, out_chunk, use_avx512)`.
type ChunkFn = fn(&[f32], &[f32], &mut [MaybeUninit<f32>], bool);

/// Runs `f(a_chunk, b_chunk, out_chunk)` over contiguous f32 CPU tensors of one shape in
/// parallel (`f` writes every element of its output chunk); `None` when the tensors are not f32
/// on the CPU or their shapes differ.
fn cpu_binary_f32(a: &Tensor, b: &Tensor, f: ChunkFn) -> candle_core::Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(a) && cpu_f32(b)) || a.dims() != b.dims() {
        return Ok(None);
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    fn slice<'a>(s: &'a candle_core::Storage, l: &candle_core::Layout) -> Option<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(d)), Some((start, end))) => Some(&d[start..end]),
            _ => None,
        }
    }
    let (Some(x), Some(y)) = (slice(&sa, la), slice(&sb, lb)) else { return Ok(None) };
    let avx512 = has_avx512();
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(x.par_chunks(ELEMENTWISE_CHUNK).zip(y.par_chunks(ELEMENTWISE_CHUNK)))
        .for_each(|(o, (x, y))| f(x, y, o, avx512));
    // SAFETY: the chunks cover all x.len() elements and `f` wrote every one of them.
    unsafe { out.set_len(x.len()) };
    Ok(Some(Tensor::from_vec(out, a.shape(), a.device())?))
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn silu_mul_chunk(x: &[f32], y: &[f32], o: &mut [MaybeUninit<f32>], avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is true only when the CPU supports AVX-512F.
        return unsafe { silu_mul_avx512(x, y, o) };
    }
    let _ = avx512;
    silu_mul_generic(x, y, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(x: &[f32], y: &[f32], o: &mut [MaybeUninit<f32>]) {
    silu_mul_generic(x, y, o)
}

/// `o = x / (1 + exp(-x)) * y`, as candle's `silu` computes it.
#[inline(always)]
fn silu_mul_generic(x: &[f32], y: &[f32], o: &mut [MaybeUninit<f32>]) {
    debug_assert!(x.len() == o.len() && y.len() == o.len());
    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
        o.write(x / (1.0 + exp_f32(-x)) * y);
    }
}

fn add_chunk(x: &[f32], y: &[f32], o: &mut [MaybeUninit<f32>], avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is true only when the CPU supports AVX-512F.
        return unsafe { add_avx512(x, y, o) };
    }
    let _ = avx512;
    add_generic(x, y, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_avx512(x: &[f32], y: &[f32], o: &mut [MaybeUninit<f32>]) {
    add_generic(x, y, o)
}

#[inline(always)]
fn add_generic(x: &[f32], y: &[f32], o: &mut [MaybeUninit<f32>]) {
    debug_assert!(x.len() == o.len() && y.len() == o.len());
    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
        o.write(x + y);
    }
}

/// `exp(x)` in f32: Cephes `expf` (range reduction by `ln 2` in two parts, degree-6 polynomial,
/// relative error about 2e-7), branch-free so loops over it vectorise. Arguments are clamped to
/// [-87.3, 88.3]: below, about 1.2e-38 instead of a smaller number or 0; above, about 2.2e38
/// instead of a larger number or infinity. NaN gives NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer.
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 0.5; // Cephes' 5.0000001e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    // 2^n from the integer n held in t's low mantissa bits (|n| < 2^22), without a float-to-int
    // cast (Rust's saturating casts do not vectorise).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
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
    fn exp_f32_matches_the_library_exp() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) >= 0.0 && exp_f32(-1e4) < 2e-38);
        assert!(exp_f32(1e4).is_finite());
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn fused_elementwise_ops_match_the_tensor_ops() {
        let dev = Device::Cpu;
        // Odd length (a remainder in the last chunk), values over a wide range.
        let n = 3 * ELEMENTWISE_CHUNK + 1_001;
        let g: Vec<f32> = (0..n).map(|i| ((i * 7919) % 20_011) as f32 / 500.0 - 20.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 9_973) as f32 / 1_000.0 - 5.0).collect();
        let (g, u) = (Tensor::from_vec(g, (1, n), &dev).unwrap(), Tensor::from_vec(u, (1, n), &dev).unwrap());
        let close = |a: &Tensor, b: &Tensor, tol: f32| {
            let (a, b): (Vec<f32>, Vec<f32>) = (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= tol * y.abs() + 1e-30, "{x} vs {y}");
            }
        };
        close(&silu_mul(&g, &u).unwrap(), &(silu(&g).unwrap() * &u).unwrap(), 1e-6);
        close(&add(&g, &u).unwrap(), &(&g + &u).unwrap(), 0.0);
        // Strided inputs are made contiguous; other dtypes and mismatched shapes use the tensor ops.
        let t = g.narrow(1, 0, 7_000).unwrap().reshape((1_000, 7)).unwrap().t().unwrap();
        assert!(!t.is_contiguous());
        close(&silu_mul(&t, &t).unwrap(), &(silu(&t).unwrap() * &t).unwrap(), 1e-6);
        close(&add(&t, &t).unwrap(), &(&t + &t).unwrap(), 0.0);
        let gb = g.to_dtype(DType::BF16).unwrap();
        let ub = u.to_dtype(DType::BF16).unwrap();
        assert_eq!(silu_mul(&gb, &ub).unwrap().dtype(), DType::BF16);
        assert!(silu_mul(&g, &g.narrow(1, 0, 5).unwrap()).is_err());
        assert!(add(&g, &g.narrow(1, 0, 5).unwrap()).is_err());
    }

    /// The fused-softmax attention equals the tensor-op reference (on the CPU, and on
    /// `EVOP_TEST_DEVICE` against the CPU reference): grouped-query heads, causal masks with a KV
    /// offset and a sliding window, one-token steps without a mask.
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

    /// The `(out,)` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
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
