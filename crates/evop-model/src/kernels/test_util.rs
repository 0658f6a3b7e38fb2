//! Helpers of the unit tests.
use candle_core::{DType, Device, Tensor};

/// The largest absolute difference between two same-shaped tensors (any device and dtype), in f32.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    (f(a) - f(b)).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
