//! What a loader returns: the block-level model with its tokenizer, weights and configuration,
//! and the options it was loaded with. Every source (GGUF, Hugging Face directory, synthetic
//! shapes) produces a [`LoadedModel`].
use crate::arch::{Architecture, BlockLm};
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Where and in which precision to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    /// f32 on the CPU.
    fn default() -> Self {
        Self { dtype: DType::F32, device: Device::Cpu }
    }
}

/// A loaded model with everything needed to run, evaluate and save it.
pub struct LoadedModel {
    /// The block-level model.
    pub lm: Arc<dyn BlockLm>,
    /// The tokenizer, when the source provides one.
    pub tokenizer: Option<Tokenizer>,
    /// Every weight under its Hugging Face name (shares storage with `lm`).
    pub weights: HashMap<String, Tensor>,
    /// The Hugging Face `config.json` (read, or synthesised from GGUF metadata).
    pub hf_config: serde_json::Value,
    /// The file or directory it was loaded from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        self.lm.info().architecture
    }

    /// Replaces weights by name and rebuilds [`LoadedModel::lm`] on them (see
    /// [`LoadedModel::rebuilt_with`]); nothing changes on error.
    pub fn replace_weights(&mut self, replacements: HashMap<String, Tensor>) -> Result<()> {
        let (lm, weights) = self.rebuild(replacements)?;
        self.lm = lm;
        self.weights = weights;
        Ok(())
    }

    /// The block-level model with some weights replaced by name, on the model's dtype and device;
    /// every other weight shares its storage with this model's. Each name must be a weight of the
    /// model and each tensor must have its shape. Models placed over several devices are rebuilt
    /// on the first one.
    pub fn rebuilt_with(&self, replacements: HashMap<String, Tensor>) -> Result<Arc<dyn BlockLm>> {
        Ok(self.rebuild(replacements)?.0)
    }

    fn rebuild(&self, replacements: HashMap<String, Tensor>) -> Result<(Arc<dyn BlockLm>, HashMap<String, Tensor>)> {
        let (dtype, device) = (self.lm.info().dtype, self.lm.info().device.clone());
        let mut fresh = HashMap::new();
        for (name, t) in replacements {
            let old = self.weights.get(&name).ok_or_else(|| ModelError::Weight {
                name: name.clone(),
                message: format!("not a weight of {}", self.source.display()),
            })?;
            if old.dims() != t.dims() {
                return Err(ModelError::Weight {
                    name,
                    message: format!("replacement has shape {:?}, the weight has {:?}", t.dims(), old.dims()),
                });
            }
            fresh.insert(name, t.to_dtype(dtype)?.to_device(&device)?.contiguous()?);
        }
        crate::io::layout::cpu_gemm_layout(&mut fresh, &device)?;
        let mut weights = self.weights.clone();
        weights.extend(fresh);
        let vb = candle_nn::VarBuilder::from_tensors(weights.clone(), dtype, &device);
        let lm = crate::arch::build(self.architecture(), &self.hf_config, vb, &self.source)?;
        Ok((lm, weights))
    }

    /// The tokenizer or an error saying the model has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Tokenizer(format!("{} has no tokenizer.json", self.source.display()))
        })
    }
}

