//! Folding a linear patch on a block's MLP output into its output projection: with
//! `mlp_out = a W^T + b`, `mlp_out T = a (T^T W)^T + T^T b`, so `W <- T^T W` and `b <- T^T b`. No
//! parameter is added: the patched model has the pruned architecture and loads anywhere.
use crate::error::{HealError, Result};
use candle_core::{DType, Device, Tensor};
use evop_model::LoadedModel;
use ndarray::Array2;
use std::collections::HashMap;

/// `T` `(h, h)` as an f64 tensor on the CPU.
pub fn patch_tensor(t: &Array2<f64>) -> Result<Tensor> {
    Ok(Tensor::from_vec(t.iter().copied().collect::<Vec<f64>>(), t.dim(), &Device::Cpu)?)
}

/// The weights of `block`'s MLP output projection after folding `t` into them, under their
/// Hugging Face names, in the model's dtype (computed in f64).
pub fn folded_weights(model: &LoadedModel, block: usize, t: &Array2<f64>) -> Result<HashMap<String, Tensor>> {
    let names = model.lm.mlp_out_projection(block)?;
    let tt = patch_tensor(t)?.t()?;
    let h = model.lm.info().hidden_size;
    if t.dim() != (h, h) {
        return Err(HealError::Data(format!("patch is {:?}, the hidden size is {h}", t.dim())));
    }
    let dtype = model.lm.info().dtype;
    let mut out = HashMap::new();
    let mut fold = |name: &str| -> Result<()> {
        let w = model.weights.get(name).ok_or_else(|| HealError::Data(format!("weight `{name}` is not in {}", model.source.display())))?;
        let w64 = w.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
        let folded = if w64.rank() == 1 { tt.matmul(&w64.unsqueeze(1)?)?.squeeze(1)? } else { tt.matmul(&w64.contiguous()?)? };
        out.insert(name.to_string(), folded.to_dtype(dtype)?);
        Ok(())
    };
    fold(&names.weight)?;
    if let Some(bias) = &names.bias {
        fold(bias)?;
    }
    Ok(out)
}

