//! The architectures: one block-level interface ([`block_lm::BlockLm`]), one file per family of
//! blocks ([`llama`]: the Llama decoder and its configured variants Mistral and Qwen2; [`opt`]),
//! and the [`REGISTRY`] that maps the names a checkpoint goes by (Hugging Face `model_type`, GGUF
//! `general.architecture`) to an architecture and its builder.
//!
//! Adding an architecture whose block is a configured Llama decoder takes a variant of
//! [`Architecture`], its configuration in [`llama`] and one row here; a new kind of block takes a
//! file beside `llama.rs` that implements [`BlockLm`] and a `Family`.
pub mod block_lm;
pub mod llama;
pub mod opt;

pub use block_lm::{
    forward, forward_cached, forward_masked, hidden_states, run_blocks, Architecture, AttnContext, BlockLm, KvCache,
    LayerCache, ModelInfo, BlockParts, MlpOutProjection,
};

use crate::error::{ModelError, Result};
use candle_nn::VarBuilder;
use std::path::Path;
use std::sync::Arc;

/// Which block implementation an architecture uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// [`llama::Llama`] configured by [`llama::LlamaConfig`].
    Llama,
    /// [`opt::Opt`] configured by [`opt::OptConfig`].
    Opt,
}

/// One supported architecture and the names its checkpoints use.
#[derive(Clone, Copy, Debug)]
pub struct ArchSpec {
    pub architecture: Architecture,
    pub family: Family,
    /// `model_type` in a Hugging Face `config.json`.
    pub model_type: &'static str,
    /// The `architectures` class written into saved configs (what transformers instantiates).
    pub hf_class: &'static str,
    /// `general.architecture` of GGUF files evop reads as this architecture (metadata keys are
    /// prefixed with it: `qwen2.block_count`).
    pub gguf_arch: Option<&'static str>,
    /// llama.cpp's converter permutes Q/K rows for interleaved RoPE for the `llama` architecture
    /// only; such rows are un-permuted on load.
    pub gguf_permutes_qk: bool,
}

/// Every architecture evop implements.
pub const REGISTRY: &[ArchSpec] = &[
    ArchSpec {
        architecture: Architecture::Llama,
        family: Family::Llama,
        model_type: "llama",
        hf_class: "LlamaForCausalLM",
        gguf_arch: Some("llama"),
        gguf_permutes_qk: true,
    },
    ArchSpec {
        architecture: Architecture::Mistral,
        family: Family::Llama,
        model_type: "mistral",
        hf_class: "MistralForCausalLM",
        gguf_arch: None,
        gguf_permutes_qk: false,
    },
    ArchSpec {
        architecture: Architecture::Qwen2,
        family: Family::Llama,
        model_type: "qwen2",
        hf_class: "Qwen2ForCausalLM",
        gguf_arch: Some("qwen2"),
        gguf_permutes_qk: false,
    },
    ArchSpec {
        architecture: Architecture::Opt,
        family: Family::Opt,
        model_type: "opt",
        hf_class: "OPTForCausalLM",
        gguf_arch: None,
        gguf_permutes_qk: false,
    },
];

/// The registry row of `architecture`.
pub fn spec(architecture: Architecture) -> &'static ArchSpec {
    REGISTRY.iter().find(|s| s.architecture == architecture).expect("every architecture has a registry row")
}

/// The architecture of a Hugging Face `model_type`.
pub fn by_model_type(model_type: &str) -> Option<&'static ArchSpec> {
    REGISTRY.iter().find(|s| s.model_type == model_type)
}

/// The architecture of a GGUF `general.architecture`.
pub fn by_gguf_arch(arch: &str) -> Option<&'static ArchSpec> {
    REGISTRY.iter().find(|s| s.gguf_arch == Some(arch))
}

/// The names accepted, for error messages: `"llama, mistral, qwen2, opt"`.
pub fn supported_names() -> String {
    REGISTRY.iter().map(|s| s.model_type).collect::<Vec<_>>().join(", ")
}

/// Builds the block-level model of `architecture` from a Hugging Face `config.json` value and
/// weights named as in Hugging Face checkpoints; `config_path` names the config in errors.
pub fn build(
    architecture: Architecture,
    config: &serde_json::Value,
    vb: VarBuilder,
    config_path: &Path,
) -> Result<Arc<dyn BlockLm>> {
    let config_err = |e: serde_json::Error| ModelError::Config { path: config_path.to_path_buf(), message: e.to_string() };
    Ok(match spec(architecture).family {
        Family::Llama => {
            let cfg: llama::LlamaConfig = serde_json::from_value(config.clone()).map_err(config_err)?;
            Arc::new(llama::Llama::new(&cfg, architecture, vb)?)
        }
        Family::Opt => {
            let cfg: opt::OptConfig = serde_json::from_value(config.clone()).map_err(config_err)?;
            Arc::new(opt::Opt::new(&cfg, vb)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_each_architecture_once_and_errors_list_them() {
        assert_eq!(supported_names(), crate::error::SUPPORTED_ARCHITECTURES);
        for s in REGISTRY {
            assert_eq!(spec(s.architecture).model_type, s.model_type);
            assert_eq!(by_model_type(s.model_type).unwrap().architecture, s.architecture);
            assert_eq!(s.architecture.to_string(), s.model_type);
        }
        assert_eq!(by_gguf_arch("qwen2").unwrap().architecture, Architecture::Qwen2);
        assert!(by_gguf_arch("gemma3").is_none());
    }
}
