//! Next-token negative log-likelihood of rows of logits as one candle custom op:
//! `nll[r] = logsumexp(z[r, :]) - z[r, target[r]]`, computed in f32 whatever the logits' dtype.
//!
//! On CUDA this is one kernel (`kernels/token_nll.cu`) that reads the logits once (an online
//! softmax per row, Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"). The
//! tensor-op loss it replaces (an f32 copy of the logits, candle's `log_sum_exp` in five passes,
//! a gather) cost several block forwards per candidate on the GPU (docs/gpu.md, "Search
//! throughput against the PyTorch loop"). The CPU implementation is the same arithmetic row by
//! row, the reference the CUDA kernel is tested against; the CPU search path uses its own fused
//! loss (`calibration::fused_loss`), which never materialises the logits.
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `logsumexp(logits[r]) - logits[r, targets[r]]` for every row `r` of `logits` `(rows, vocab)`
/// (f32, bf16 or f16); `targets` `(rows,)` u32. Returns `(rows,)` f32. A target outside the
/// vocabulary gives NaN on CUDA and an error on the CPU.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if !matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("token_nll: logits must be f32, bf16 or f16, not {:?}", logits.dtype());
    }
    let (rows, _vocab) = logits.dims2()?;
    if targets.dtype() != DType::U32 || targets.dims() != [rows] {
        candle_core::bail!("token_nll: targets must be u32 of shape ({rows},), got {:?} {:?}", targets.dtype(), targets.dims());
    }
    logits.contiguous()?.apply_op2_no_bwd(&targets.contiguous()?, &TokenNll)
}

struct TokenNll;

/// The arithmetic of the CUDA kernel on one row: running maximum and sum of exponentials in f32.
fn row_nll<T: WithDType>(z: &[T], target: usize) -> f32 {
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    for v in z.iter().map(|v| v.to_f64() as f32) {
        if v > m {
            s = if m == f32::NEG_INFINITY { 0.0 } else { s * (m - v).exp() } + 1.0;
            m = v;
        } else if v != f32::NEG_INFINITY {
            s += (v - m).exp();
        }
    }
    m + s.ln() - z[target].to_f64() as f32
}

fn cpu_rows<T: WithDType>(z: &[T], targets: &[u32], cols: usize) -> candle_core::Result<Vec<f32>> {
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= cols) {
        candle_core::bail!("token_nll: target {t} outside the vocabulary of {cols}");
    }
    Ok(z.par_chunks(cols.max(1)).zip(targets.par_iter()).map(|(row, &t)| row_nll(row, t as usize)).collect())
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("token_nll: inputs must be contiguous"),
    }
}

impl CustomOp2 for TokenNll {
    fn name(&self) -> &'static str {
        "evop-token-nll"
    }

    fn cpu_fwd(&self, z: &CpuStorage, zl: &Layout, t: &CpuStorage, tl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = zl.shape().dims2()?;
        let CpuStorage::U32(t) = t else { candle_core::bail!("token_nll: targets must be u32") };
        let t = contiguous(t, tl)?;
        let out = match z {
            CpuStorage::F32(z) => cpu_rows(contiguous(z, zl)?, t, cols)?,
            CpuStorage::BF16(z) => cpu_rows(contiguous(z, zl)?, t, cols)?,
            CpuStorage::F16(z) => cpu_rows(contiguous(z, zl)?, t, cols)?,
            _ => candle_core::bail!("token_nll: unsupported logits dtype"),
        };
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        z: &candle_core::CudaStorage,
        zl: &Layout,
        t: &candle_core::CudaStorage,
        tl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(z, zl, t, tl)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::kernels::cuda::view;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{kernel_name, CudaStorageSlice, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Shape, WithDType};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/token_nll.ptx"));

    fn launch<T: DeviceRepr + WithDType>(
        z: &CudaSlice<T>,
        zl: &Layout,
        t: &CudaSlice<u32>,
        tl: &Layout,
        dev: &CudaDevice,
    ) -> candle_core::Result<CudaSlice<f32>> {
        let (rows, cols) = zl.shape().dims2()?;
        let (z, t) = (view(z, zl)?, view(t, tl)?);
        let func = dev.get_or_load_custom_func(&kernel_name::<T>("evop_token_nll"), "evop_token_nll", PTX)?;
        // SAFETY: the kernel writes every row's value.
        let out = unsafe { dev.alloc::<f32>(rows)? };
        // About 8 values per thread, whole warps, at most 1024 threads.
        let threads = cols.div_ceil(8).next_multiple_of(32).clamp(32, 1024) as u32;
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut builder = func.builder();
        builder.arg(&z);
        builder.arg(&t);
        builder.arg(&out);
        candle_core::builder_arg!(builder, cols as i32);
        // SAFETY: the kernel reads `rows * cols` logits and `rows` targets and writes `rows` values.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }

    pub(super) fn forward(z: &CudaStorage, zl: &Layout, t: &CudaStorage, tl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = z.device.clone();
        let CudaStorageSlice::U32(ts) = &t.slice else { candle_core::bail!("token_nll: targets must be u32") };
        let out = match &z.slice {
            CudaStorageSlice::F32(s) => launch(s, zl, ts, tl, &dev)?,
            CudaStorageSlice::BF16(s) => launch(s, zl, ts, tl, &dev)?,
            CudaStorageSlice::F16(s) => launch(s, zl, ts, tl, &dev)?,
            _ => candle_core::bail!("token_nll: unsupported logits dtype"),
        };
        Ok((CudaStorage { slice: CudaStorageSlice::F32(out), device: dev }, Shape::from(zl.shape().dims()[0])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The tensor-op loss: log-sum-exp in f32 minus the target's logit.
    fn reference(z: &Tensor, t: &Tensor) -> Vec<f32> {
        let z = z.to_dtype(DType::F32).unwrap();
        let lse = z.log_sum_exp(D::Minus1).unwrap();
        let picked = z.gather(&t.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap();
        (lse - picked).unwrap().to_vec1().unwrap()
    }

    fn inputs(rows: usize, vocab: usize, dev: &Device) -> (Tensor, Tensor) {
        let z = Tensor::randn(0f32, 4.0, (rows, vocab), dev).unwrap();
        let t: Vec<u32> = (0..rows).map(|r| ((r * 7919 + 13) % vocab) as u32).collect();
        (z, Tensor::from_vec(t, rows, dev).unwrap())
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn equals_log_sum_exp_minus_the_target_logit_on_the_cpu() {
        let dev = Device::Cpu;
        let (z, t) = inputs(37, 1000, &dev);
        assert!(max_diff(&token_nll(&z, &t).unwrap().to_vec1().unwrap(), &reference(&z, &t)) < 1e-4);
        // -inf logits (a masked vocabulary) are skipped, not turned into NaN.
        let masked = Tensor::from_vec(vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0], (1, 4), &dev).unwrap();
        let got: Vec<f32> = token_nll(&masked, &Tensor::from_vec(vec![1u32], 1, &dev).unwrap()).unwrap().to_vec1().unwrap();
        assert!((got[0] - std::f32::consts::LN_2).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn refuses_bad_targets() {
        let dev = Device::Cpu;
        let (z, _) = inputs(2, 5, &dev);
        let err = token_nll(&z, &Tensor::from_vec(vec![0u32, 5], 2, &dev).unwrap()).unwrap_err();
        assert!(err.to_string().contains("target 5 outside the vocabulary of 5"), "{err}");
        assert!(token_nll(&z, &Tensor::from_vec(vec![0u32], 1, &dev).unwrap()).is_err());
    }

    /// On `EVOP_TEST_DEVICE` (a CUDA build run with `EVOP_TEST_DEVICE=cuda` runs the kernel): the
    /// device's result equals the CPU implementation's, at vocabulary sizes of real heads.
    #[test]
    fn device_result_equals_the_cpu_result() {
        let dev = crate::device::test_device().expect("EVOP_TEST_DEVICE");
        let cpu = Device::Cpu;
        for (rows, vocab, dtype, tol) in [(5, 300, DType::F32, 1e-4), (64, 32_000, DType::BF16, 2e-3), (9, 151_936, DType::F16, 2e-3)] {
            let (z, t) = inputs(rows, vocab, &cpu);
            let z = z.to_dtype(dtype).unwrap();
            let want: Vec<f32> = token_nll(&z, &t).unwrap().to_vec1().unwrap();
            let got: Vec<f32> = token_nll(&z.to_device(&dev).unwrap(), &t.to_device(&dev).unwrap()).unwrap().to_vec1().unwrap();
            assert!(max_diff(&got, &want) < tol, "rows {rows} vocab {vocab} {dtype:?}: {}", max_diff(&got, &want));
        }
    }
}
