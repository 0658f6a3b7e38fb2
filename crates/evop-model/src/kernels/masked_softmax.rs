//! Scaled, masked softmax over the last dimension as one candle custom op:
//! `softmax(scale * scores + mask)`, computed in f32 whatever the storage dtype, written back in the
//! scores' dtype.
//!
//! On CUDA this is one kernel (`kernels/masked_softmax.cu`, compiled to PTX by `build.rs`) that
//! reads the scores once per pass and never materialises an f32 copy. It replaces the four
//! elementwise passes of the tensor-op attention ([`crate::kernels::attention_reference`]: scale,
//! cast to f32, broadcast mask add, cast back) around candle's softmax, which dominated the GPU
//! prompt time (docs/gpu.md, "Where the GPU prompt time goes"). The CPU implementation is the
//! same arithmetic row by row: the reference the CUDA kernel is tested against.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// `softmax(scale * scores + mask)` over the last dimension of `scores` (any rank >= 2,
/// `(b, h, s, t)` for attention). `mask` is additive, `(s, t)`: row `i` of every `(s, t)` slice of
/// the scores gets mask row `i`. f32, bf16 and f16 scores; the result has the scores' dtype.
pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> candle_core::Result<Tensor> {
    if !matches!(scores.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("masked_softmax: scores must be f32, bf16 or f16, not {:?}", scores.dtype());
    }
    if scores.rank() < 2 {
        candle_core::bail!("masked_softmax: scores need at least 2 dimensions, got {:?}", scores.dims());
    }
    let scores = scores.contiguous()?;
    let op = MaskedSoftmax { scale: scale as f32 };
    match mask {
        None => scores.apply_op1_no_bwd(&op),
        Some(mask) => {
            let (s, t) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
            if mask.dims() != [s, t] {
                candle_core::bail!("masked_softmax: mask {:?} does not match the scores' last two dims ({s}, {t})", mask.dims());
            }
            let mask = mask.to_dtype(scores.dtype())?.contiguous()?;
            scores.apply_op2_no_bwd(&mask, &op)
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct MaskedSoftmax {
    scale: f32,
}

/// Rows of `cols` values; mask row `r % mask_rows` is added to row `r` (no mask when `mask_rows`
/// is 0). The arithmetic of the CUDA kernel: f32 throughout, maximum, sum of exponentials, output.
fn cpu_rows<T: WithDType>(x: &[T], mask: Option<&[T]>, cols: usize, scale: f32) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let mask_rows = mask.map_or(0, |m| m.len() / cols.max(1));
    out.par_chunks_mut(cols.max(1)).zip(x.par_chunks(cols.max(1))).enumerate().for_each(|(r, (y, xr))| {
        let mr = mask.map(|m| &m[(r % mask_rows) * cols..(r % mask_rows + 1) * cols]);
        let value = |c: usize| xr[c].to_f64() as f32 * scale + mr.map_or(0.0, |m| m[c].to_f64() as f32);
        let mx = (0..cols).map(value).fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = (0..cols).map(|c| (value(c) - mx).exp()).sum();
        for (c, yc) in y.iter_mut().enumerate() {
            *yc = T::from_f64(((value(c) - mx).exp() / sum) as f64);
        }
    });
    out
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("masked_softmax: input must be contiguous"),
    }
}

fn cpu_forward(
    x: &CpuStorage,
    xl: &Layout,
    mask: Option<(&CpuStorage, &Layout)>,
    scale: f32,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let cols = xl.shape().dims().last().copied().unwrap_or(1);
    macro_rules! run {
        ($variant:ident) => {{
            let CpuStorage::$variant(xs) = x else { unreachable!() };
            let xs = contiguous(xs, xl)?;
            let ms = match mask {
                None => None,
                Some((CpuStorage::$variant(ms), ml)) => Some(contiguous(ms, ml)?),
                Some(_) => candle_core::bail!("masked_softmax: the mask's dtype differs from the scores'"),
            };
            CpuStorage::$variant(cpu_rows(xs, ms, cols, scale))
        }};
    }
    let out = match x {
        CpuStorage::F32(_) => run!(F32),
        CpuStorage::BF16(_) => run!(BF16),
        CpuStorage::F16(_) => run!(F16),
        other => candle_core::bail!("masked_softmax: unsupported dtype {:?}", candle_core::backend::BackendStorage::dtype(other)),
    };
    Ok((out, xl.shape().clone()))
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "evop-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_forward(s, l, None, self.scale)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(s, l, None, self.scale)
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "evop-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, m: &CpuStorage, ml: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_forward(s, l, Some((m, ml)), self.scale)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
        m: &candle_core::CudaStorage,
        ml: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(s, l, Some((m, ml)), self.scale)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::kernels::cuda::view;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
    use candle_core::cuda_backend::{kernel_name, CudaStorageSlice, Map1, Map2, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Shape, WithDType};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/masked_softmax.ptx"));

    /// Threads per row: about 8 values each, a whole number of warps, at most 1024.
    fn threads(cols: usize) -> u32 {
        (cols.div_ceil(8).next_multiple_of(32)).clamp(32, 1024) as u32
    }

    fn launch<T: DeviceRepr + WithDType>(
        x: &CudaSlice<T>,
        xl: &Layout,
        mask: Option<(&CudaSlice<T>, &Layout)>,
        dev: &CudaDevice,
        scale: f32,
    ) -> candle_core::Result<CudaSlice<T>> {
        let x = view(x, xl)?;
        let cols = xl.shape().dims().last().copied().unwrap_or(1);
        let el = xl.shape().elem_count();
        let rows = el / cols.max(1);
        let func = dev.get_or_load_custom_func(&kernel_name::<T>("evop_masked_softmax"), "evop_masked_softmax", PTX)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<T>(el)? };
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads(cols), 1, 1), shared_mem_bytes: 0 };
        let mut builder = func.builder();
        builder.arg(&x);
        let mask_view;
        let mask_rows = match mask {
            Some((m, ml)) => {
                mask_view = view(m, ml)?;
                builder.arg(&mask_view);
                ml.shape().elem_count() / cols.max(1)
            }
            None => {
                builder.arg(&x);
                0
            }
        };
        builder.arg(&out);
        candle_core::builder_arg!(builder, cols as i32, mask_rows as i32, scale);
        // SAFETY: the kernel reads `rows * cols` scores and `mask_rows * cols` mask values and writes `rows * cols` outputs.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(out)
    }

    struct NoMask(f32);
    impl Map1 for NoMask {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(&self, x: &CudaSlice<T>, dev: &CudaDevice, l: &Layout) -> candle_core::Result<CudaSlice<T>> {
            launch(x, l, None, dev, self.0)
        }
    }

    struct WithMask(f32);
    impl Map2 for WithMask {
        fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
            &self,
            x: &CudaSlice<T>,
            xl: &Layout,
            m: &CudaSlice<T>,
            ml: &Layout,
            dev: &CudaDevice,
        ) -> candle_core::Result<CudaSlice<T>> {
            launch(x, xl, Some((m, ml)), dev, self.0)
        }
    }

    pub(super) fn forward(
        x: &CudaStorage,
        xl: &Layout,
        mask: Option<(&CudaStorage, &Layout)>,
        scale: f32,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = x.device().clone();
        let slice: CudaStorageSlice = match mask {
            None => NoMask(scale).map(&x.slice, &dev, xl)?,
            Some((m, ml)) => WithMask(scale).map(&x.slice, xl, &m.slice, ml, &dev)?,
        };
        Ok((CudaStorage { slice, device: dev }, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::max_abs_diff as max_diff;
    use candle_core::Device;

    fn reference(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
        let s = (scores.to_dtype(DType::F32).unwrap() * scale).unwrap();
        let s = match mask {
            Some(m) => s.broadcast_add(&m.to_dtype(DType::F32).unwrap()).unwrap(),
            None => s,
        };
        candle_nn::ops::softmax_last_dim(&s).unwrap()
    }

    #[test]
    fn equals_scale_mask_softmax_on_the_cpu() {
        let dev = Device::Cpu;
        let scores = Tensor::randn(0f32, 3.0, (2, 3, 5, 7), &dev).unwrap();
        let mask = crate::kernels::causal_mask(5, 2, Some(4), DType::F32, &dev).unwrap();
        for (m, scale) in [(Some(&mask), 0.125), (None, 0.3)] {
            let got = masked_softmax(&scores, m, scale).unwrap();
            assert!(max_diff(&got, &reference(&scores, m, scale)) < 1e-6);
            let got16 = masked_softmax(&scores.to_dtype(DType::BF16).unwrap(), m, scale).unwrap();
            assert_eq!(got16.dtype(), DType::BF16);
            // bf16 inputs and output: within bf16 rounding of the f32 result.
            assert!(max_diff(&got16, &reference(&scores.to_dtype(DType::BF16).unwrap(), m, scale)) < 4e-3);
        }
    }

    #[test]
    fn refuses_bad_masks_and_dtypes() {
        let dev = Device::Cpu;
        let scores = Tensor::zeros((1, 2, 4, 6), DType::F32, &dev).unwrap();
        let err = masked_softmax(&scores, Some(&Tensor::zeros((4, 5), DType::F32, &dev).unwrap()), 1.0).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let ints = Tensor::zeros((2, 3), DType::U32, &dev).unwrap();
        assert!(masked_softmax(&ints, None, 1.0).unwrap_err().to_string().contains("f32, bf16 or f16"));
    }

    /// On `EVOP_TEST_DEVICE` (a CUDA build run with `EVOP_TEST_DEVICE=cuda` runs the kernel): the
    /// device's result equals the CPU implementation's, with attention-sized rows.
    #[test]
    fn device_result_equals_the_cpu_result() {
        let dev = crate::device::test_device().expect("EVOP_TEST_DEVICE");
        let cpu = Device::Cpu;
        for (s, offset, window, dtype, tol) in
            [(9, 0, None, DType::F32, 1e-6), (300, 0, None, DType::F32, 1e-6), (2100, 5, Some(700), DType::BF16, 8e-3), (1, 40, None, DType::F16, 1e-3)]
        {
            let t = s + offset;
            let scores = Tensor::randn(0f32, 4.0, (2, 3, s, t), &cpu).unwrap().to_dtype(dtype).unwrap();
            let mask = crate::kernels::causal_mask(s, offset, window, dtype, &cpu).unwrap();
            let want = masked_softmax(&scores, Some(&mask), 0.09).unwrap();
            let got = masked_softmax(&scores.to_device(&dev).unwrap(), Some(&mask.to_device(&dev).unwrap()), 0.09).unwrap();
            assert!(max_diff(&got.to_device(&cpu).unwrap(), &want) < tol, "s {s} dtype {dtype:?}");
        }
    }
}
