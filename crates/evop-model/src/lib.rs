//! Block-skippable causal language models on candle.
//!
//! Depth pruning (SLEB, Song et al. ICML 2024; EvoP, Wu et al. 2025, arXiv 2502.14910) removes
//! whole decoder blocks. This crate makes that a first-class operation: every architecture
//! implements [`BlockLm`], whose blocks are public steps, so a caller can run any subset of
//! blocks, read the hidden state at every block boundary and get logits for every position.
//!
//! - Architectures: Llama and Mistral ([`llama`]), OPT ([`opt`]), sharing one attention
//!   implementation ([`numerics`]).
//! - Loading: Hugging Face directories and llama GGUF files ([`load`]); the GGUF's embedded BPE
//!   tokenizer is rebuilt ([`tokenizer`]).
//! - Evaluation: per-token NLL and perplexity with the standard protocol ([`perplexity`]).
//! - Saving a pruned model as a Hugging Face directory ([`save`]).
//!
//! ```no_run
//! use evop_model::{load, BlockMask, LoadOptions, perplexity};
//! # fn main() -> Result<(), evop_model::ModelError> {
//! let model = load(std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"), &LoadOptions::default())?;
//! let ids = evop_model::encode(model.tokenizer()?, "The quick brown fox jumps over the lazy dog.")?;
//! let mask = BlockMask::from_removed(model.lm.num_blocks(), &[16, 17, 18])?;
//! let ppl = perplexity::perplexity(model.lm.as_ref(), &[ids], &mask, 1)?;
//! println!("{:.3}", ppl.perplexity);
//! # Ok(()) }
//! ```
pub mod block_ops;
pub mod calibration;
pub mod cpu_attention;
#[cfg(feature = "cuda")]
mod cuda_kernels;
pub mod device;
pub mod error;
pub mod flash_attention;
pub mod gguf;
pub mod llama;
pub mod load;
pub mod mask;
pub mod masked_softmax;
pub mod model;
pub mod numerics;
pub mod opt;
pub mod perplexity;
pub mod save;
pub mod synthetic;
pub mod tokenizer;

#[cfg(test)]
mod test_util;

pub use calibration::{CalibrationEvaluator, EvaluatorOptions, ForwardCounts, LossKind};
pub use device::{parse_device, parse_dtype};
pub use error::{ModelError, Result};
pub use load::{load, load_placed, LoadOptions, LoadedModel};
pub use mask::BlockMask;
pub use model::{
    forward, forward_cached, forward_masked, hidden_states, run_blocks, Architecture, AttnContext, BlockLm, KvCache,
    LayerCache, ModelInfo,
};
pub use save::save_pruned;
pub use tokenizer::encode;
pub use candle_core::{DType, Device, Tensor};
