//! Causal attention on CUDA without materialised scores, FlashAttention-2 style (Dao 2023,
//! "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"): the kernel
//! `kernels/flash_attention.cu` (PTX built by `build.rs` under the `cuda` feature) walks the key
//! tiles a block of 64 queries may see, with Q K^T and P V on the tensor cores and an online
//! softmax in f32, and writes the `(b, s, h * d)` output directly.
//!
//! It covers what the models run on GPUs: bf16 or f16, head dimension 64 or 128, causal masks
//! with a KV-cache offset and an optional sliding window, grouped-query heads read in place.
//! Everything else (f32, other head sizes, one-token decoding steps, other devices) goes to
//! [`crate::kernels::attention`]. On the prompt of a Llama-2-7B-shaped model the materialised
//! path spent 79% of a block in attention (docs/gpu.md).
use candle_core::{DType, Tensor};

/// Fewer queries than this (decoding steps) take the materialised path: a 64-row query tile would
/// be mostly empty.
pub const MIN_QUERIES: usize = 16;

/// Causal attention through the fused kernel when it applies, else `None`. `q: (b, h, s, d)`,
/// `k`/`v: (b, h_kv, offset + s, d)`; query `i` is at absolute position `offset + i`; with
/// `Some(w)` it sees only the `w` most recent keys (itself included). Returns `(b, s, h * d)`.
pub fn try_flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    sliding_window: Option<usize>,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let (b, h, s, d) = q.dims4()?;
    let (bk, h_kv, t, dk) = k.dims4()?;
    if v.dims() != k.dims() || bk != b || dk != d || h_kv == 0 || h % h_kv != 0 {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} do not fit together", q.dims(), k.dims(), v.dims());
    }
    if t != offset + s {
        candle_core::bail!("attention: {t} keys for {s} queries at offset {offset} (expected {})", offset + s);
    }
    if !q.device().is_cuda() || !cfg!(feature = "cuda") || !matches!(q.dtype(), DType::BF16 | DType::F16) {
        return Ok(None);
    }
    if s < MIN_QUERIES || !(d == 64 || d == 128) || sliding_window == Some(0) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    // 16-byte loads need every tensor to start on a multiple of 8 elements.
    if [&q, &k, &v].iter().any(|x| x.layout().start_offset() % 8 != 0) {
        return Ok(None);
    }
    let op = FlashAttention {
        heads: h,
        kv_heads: h_kv,
        queries: s,
        keys: t,
        offset,
        window: sliding_window.unwrap_or(0),
        scale_log2: (scale * std::f64::consts::LOG2_E) as f32,
    };
    Ok(Some(q.apply_op3_no_bwd(&k, &v, &op)?))
}

#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct FlashAttention {
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    offset: usize,
    window: usize,
    scale_log2: f32,
}

impl candle_core::CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "evop-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("the flash-attention kernel runs on CUDA only (the CPU has crate::kernels::cpu_attention)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &candle_core::Layout,
        k: &candle_core::CudaStorage,
        kl: &candle_core::Layout,
        v: &candle_core::CudaStorage,
        vl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::Map3;
        let dev = q.device().clone();
        let slice = self.map(&q.slice, ql, &k.slice, kl, &v.slice, vl, &dev)?;
        let (b, _, s, d) = ql.shape().dims4()?;
        Ok((candle_core::CudaStorage { slice, device: dev }, (b, s, self.heads * d).into()))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::FlashAttention;
    use crate::kernels::cuda::view;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
    use candle_core::cuda_backend::{kernel_name, Map3, WrapErr};
    use candle_core::{CudaDevice, Layout, WithDType};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx"));

    impl Map3 for FlashAttention {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            q: &CudaSlice<T>,
            ql: &Layout,
            k: &CudaSlice<T>,
            kl: &Layout,
            v: &CudaSlice<T>,
            vl: &Layout,
            dev: &CudaDevice,
        ) -> candle_core::Result<CudaSlice<T>> {
            let (q, k, v) = (view(q, ql)?, view(k, kl)?, view(v, vl)?);
            let (b, _, s, d) = ql.shape().dims4()?;
            let name = kernel_name::<T>(&format!("evop_flash_attention_d{d}"));
            let func = dev.get_or_load_custom_func(&name, "evop_flash_attention", PTX)?;
            let el = b * s * self.heads * d;
            // SAFETY: the kernel writes every output element (rows < s of every batch and head).
            let out = unsafe { dev.alloc::<T>(el)? };
            let cfg = LaunchConfig {
                grid_dim: (s.div_ceil(64) as u32, self.heads as u32, b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = func.builder();
            builder.arg(&q);
            builder.arg(&k);
            builder.arg(&v);
            builder.arg(&out);
            candle_core::builder_arg!(
                builder,
                self.heads as i32,
                self.kv_heads as i32,
                self.queries as i32,
                self.keys as i32,
                self.offset as i32,
                self.window as i32,
                self.scale_log2
            );
            // SAFETY: shapes checked in `try_flash_attention`; the kernel reads within q, k and v.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// On the CPU the kernel never applies; on `EVOP_TEST_DEVICE=cuda` it equals the tensor-op
    /// reference (computed in f32 on the CPU from the same rounded inputs) for causal prompts with
    /// and without a KV-cache offset, a sliding window, grouped-query heads, head sizes 64 and
    /// 128, row counts that do not fill a tile, bf16 and f16.
    #[test]
    fn kernel_matches_the_reference_attention() {
        let dev = crate::device::test_device().expect("EVOP_TEST_DEVICE");
        let cpu = Device::Cpu;
        let cases = [
            // (batch, heads, kv_heads, queries, offset, window, head_dim, dtype)
            (1, 4, 4, 64, 0, None, 64, DType::BF16),
            (2, 6, 2, 77, 0, None, 128, DType::BF16),
            (1, 4, 1, 130, 70, Some(50), 64, DType::F16),
            (2, 2, 2, 300, 0, Some(100), 128, DType::BF16),
            (1, 3, 3, 16, 5, None, 128, DType::F16),
        ];
        for (b, h, h_kv, s, offset, window, d, dtype) in cases {
            let t = offset + s;
            let round = |x: Tensor| x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let q = round(Tensor::randn(0f32, 1.0, (b, h, s, d), &cpu).unwrap());
            let k = round(Tensor::randn(0f32, 1.0, (b, h_kv, t, d), &cpu).unwrap());
            let v = round(Tensor::randn(0f32, 1.0, (b, h_kv, t, d), &cpu).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            let mask = crate::kernels::causal_mask(s, offset, window, DType::F32, &cpu).unwrap();
            let want = crate::kernels::attention_reference(&q, &k, &v, Some(&mask), scale).unwrap();
            let on = |x: &Tensor| x.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
            let got = try_flash_attention(&on(&q), &on(&k), &on(&v), offset, window, scale).unwrap();
            let Some(got) = got else {
                assert!(!dev.is_cuda() || !cfg!(feature = "cuda"), "the kernel must apply on CUDA");
                continue;
            };
            assert_eq!(got.dims(), &[b, s, h * d]);
            let diff = crate::kernels::test_util::max_abs_diff(&got, &want);
            // Probabilities are rounded to the input dtype before P V, as in FlashAttention.
            let tol = if dtype == DType::BF16 { 2e-2 } else { 4e-3 };
            assert!(diff < tol, "case b{b} h{h}/{h_kv} s{s} offset{offset} window{window:?} d{d} {dtype:?}: max diff {diff}");
        }
    }

    /// Which keys each query sees, exactly: with `q = 0` every visible key gets the same weight,
    /// and value row `j` is the one-hot vector of column `j % d`, so output column `c` of query
    /// `i` is `1 / n_i` when key `c` (mod `d`) is visible to it and 0 otherwise. A key wrongly
    /// shown or hidden (at a tile edge, the causal limit, the window's start or past the last key)
    /// moves a value by about `1 / n_i` >= 1/40 here, far above the rounding of `1 / n_i`.
    #[test]
    fn kernel_sees_exactly_the_causal_window() {
        let dev = crate::device::test_device().expect("EVOP_TEST_DEVICE");
        let cpu = Device::Cpu;
        let (h, d) = (2, 64);
        for (s, offset, window) in [(100, 30, Some(40)), (70, 0, Some(64)), (33, 20, None)] {
            let t = offset + s;
            let q = Tensor::zeros((1, h, s, d), DType::F32, &cpu).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, h, t, d), &cpu).unwrap();
            let onehot: Vec<f32> = (0..h * t * d).map(|i| if (i / d) % t % d == i % d { 1.0 } else { 0.0 }).collect();
            let v = Tensor::from_vec(onehot, (1, h, t, d), &cpu).unwrap();
            let mask = crate::kernels::causal_mask(s, offset, window, DType::F32, &cpu).unwrap();
            let want = crate::kernels::attention_reference(&q, &k, &v, Some(&mask), 0.125).unwrap();
            let on = |x: &Tensor| x.to_dtype(DType::F16).unwrap().to_device(&dev).unwrap();
            let Some(got) = try_flash_attention(&on(&q), &on(&k), &on(&v), offset, window, 0.125).unwrap() else {
                assert!(!dev.is_cuda() || !cfg!(feature = "cuda"), "the kernel must apply on CUDA");
                continue;
            };
            let diff = crate::kernels::test_util::max_abs_diff(&got, &want);
            assert!(diff < 2e-3, "s {s} offset {offset} window {window:?}: max diff {diff}");
        }
    }

    #[test]
    fn shape_mismatches_are_errors_and_the_cpu_is_not_served() {
        let cpu = Device::Cpu;
        let q = Tensor::zeros((1, 4, 20, 64), DType::BF16, &cpu).unwrap();
        let k3 = Tensor::zeros((1, 3, 20, 64), DType::BF16, &cpu).unwrap();
        assert!(try_flash_attention(&q, &k3, &k3, 0, None, 0.1).unwrap_err().to_string().contains("do not fit"));
        let k = Tensor::zeros((1, 2, 20, 64), DType::BF16, &cpu).unwrap();
        assert!(try_flash_attention(&q, &k, &k, 3, None, 0.1).unwrap_err().to_string().contains("offset 3"));
        assert!(try_flash_attention(&q, &k, &k, 0, None, 0.1).unwrap().is_none());
    }
}
