//! The memory layout of block weights on the CPU.
//!
//! Checkpoints store a projection's weight as `(out, in)` row-major, and a linear layer computes
//! `x · Wᵀ`. On the CPU the GEMM then reads its right-hand side through a transposed view, which
//! on small windows costs up to 3.4x the time of the same product against a row-major `(in, out)`
//! matrix (docs/performance.md: the down projection at 128 tokens). [`cpu_gemm_layout`] stores
//! each block weight as `(in, out)` row-major once at load time and keeps its logical shape
//! `(out, in)` as a transposed view of that storage: every reader sees the same values, no memory
//! is duplicated, and `W.t()` in the forward is the contiguous matrix the GEMM wants.
use crate::error::Result;
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// Whether `name` is a weight matrix inside a decoder block (`model.layers.N.…` for the Llama
/// family, `model.decoder.layers.N.…` for OPT).
fn is_block_matrix(name: &str, t: &Tensor) -> bool {
    t.rank() == 2 && name.contains("layers.")
}

/// Re-lays every block weight matrix of `weights` as described in the module header when
/// `device` is the CPU; on other devices the weights are left as they are.
pub fn cpu_gemm_layout(weights: &mut HashMap<String, Tensor>, device: &Device) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    for (name, t) in weights.iter_mut() {
        if is_block_matrix(name, t) && t.is_contiguous() {
            *t = t.t()?.contiguous()?.t()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_shape_are_kept_and_the_product_operand_becomes_contiguous() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((3, 4)).unwrap();
        let norm = Tensor::ones(4, candle_core::DType::F32, &dev).unwrap();
        let embed = w.clone();
        let mut m = HashMap::from([
            ("model.layers.0.mlp.up_proj.weight".to_string(), w.clone()),
            ("model.layers.0.input_layernorm.weight".to_string(), norm),
            ("model.embed_tokens.weight".to_string(), embed),
        ]);
        cpu_gemm_layout(&mut m, &dev).unwrap();
        let up = &m["model.layers.0.mlp.up_proj.weight"];
        assert_eq!(up.dims(), &[3, 4]);
        assert_eq!(up.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(!up.is_contiguous() && up.t().unwrap().is_contiguous());
        assert!(m["model.embed_tokens.weight"].is_contiguous(), "the embedding is read by rows");
        assert!(m["model.layers.0.input_layernorm.weight"].is_contiguous());
    }
}
