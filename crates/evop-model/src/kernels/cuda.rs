//! What evop-model's CUDA custom ops share: contiguous views of candle's device buffers and
//! grid-stride launch shapes. (Kernels load with `CudaDevice::get_or_load_custom_func` from the PTX
//! that `build.rs` compiled.)
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::Layout;

/// The part of `x` that `l` (a contiguous layout) covers.
pub(crate) fn view<'a, T>(x: &'a CudaSlice<T>, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(x.slice(a..b)),
        None => candle_core::bail!("evop CUDA kernels take contiguous inputs"),
    }
}

/// A grid-stride launch over `work` items, 256 threads per block.
pub(crate) fn grid_stride(work: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (work.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}
