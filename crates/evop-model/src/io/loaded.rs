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

    /// The tokenizer or an error saying the model has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Tokenizer(format!("{} has no tokenizer.json", self.source.display()))
        })
    }
}

