//! Block-skippable causal language models on candle.
//!
//! Depth pruning (SLEB, Song et al. ICML 2024; EvoP, Wu et al. 2025, arXiv 2502.14910) removes
//! whole decoder blocks. This crate makes that a first-class operation: every architecture
//! implements [`BlockLm`], whose blocks are public steps, so a caller can run any subset of
//! blocks, read the hidden state at every block boundary and get logits for every position.
//!
//! The crate reads in four layers, each depending only on those before it:
//! - [`kernels`]: numerics every architecture shares (attention, rotary tables, elementwise ops),
//!   each fast CPU/CUDA kernel beside the reference it is tested against;
//! - [`arch`]: the [`BlockLm`] trait, one file per family of blocks (Llama, with Mistral and
//!   Qwen2 as configurations of it; OPT) and the registry of supported architectures;
//! - [`io`]: GGUF files and their embedded tokenizers, Hugging Face directories, synthetic
//!   random-weight shapes, saving pruned models;
//! - [`calibration`] and [`perplexity`]: the calibration evaluator with exact prefix reuse and
//!   the standard perplexity protocol.
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
pub mod arch;
pub mod calibration;
pub mod device;
pub mod error;
pub mod io;
pub mod kernels;
pub mod mask;
pub mod perplexity;

pub use arch::{
    forward, forward_cached, forward_masked, hidden_states, run_blocks, Architecture, AttnContext, BlockLm, KvCache,
    LayerCache, ModelInfo, BlockParts, MlpOutProjection,
};
pub use calibration::{CalibrationEvaluator, EvaluatorOptions, ForwardCounts, LossKind, DEFAULT_CACHE_BUDGET};
pub use calibration::{default_cache_budget, default_stack_tokens};
pub use device::{parse_device, parse_dtype, retain_freed_host_memory};
pub use error::{ModelError, Result};
pub use io::load::{load, load_placed, LoadOptions, LoadedModel};
pub use io::save::save_pruned;
pub use io::tokenizer::encode;
pub use io::{gguf, load, save, synthetic, tokenizer};
pub use mask::BlockMask;
pub use candle_core::{DType, Device, Tensor};
