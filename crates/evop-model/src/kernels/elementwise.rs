//! Elementwise block ops (SwiGLU gating, residual adds): one parallel, vectorised pass on the CPU
//! in f32, the fused CUDA kernel of [`super::block_ops`] on the GPU, tensor ops elsewhere.
use super::math::exp_f32;
use candle_nn::ops::silu;
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `silu(gate) * up` elementwise (SwiGLU's gating) on same-shaped tensors. For f32 on the CPU
/// one parallel, vectorised pass (candle runs `silu` as a single-threaded pass with a library
/// `exp`, then `*` over a temporary); on CUDA one fused kernel ([`crate::kernels::block_ops::silu_mul`]);
/// otherwise the tensor ops.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(out) = cpu_binary_f32(gate, up, silu_mul_chunk)? {
        return Ok(out);
    }
    if gate.device().is_cuda() && gate.shape() == up.shape() {
        return crate::kernels::block_ops::silu_mul(gate, up);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
}
