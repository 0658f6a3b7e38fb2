//! The numerics every architecture shares, written once, each fast kernel beside the reference it
//! is tested against:
//!
//! - [`reference`]: masks, `repeat_kv` and attention with plain tensor ops (any device, any dtype);
//! - [`attention`]: the dispatch to the fused CPU kernel ([`cpu_attention`]), FlashAttention-2 on
//!   CUDA ([`flash_attention`]) or the fused masked softmax ([`masked_softmax`]);
//! - [`elementwise`]: SwiGLU gating and residual adds (CPU: vectorised; CUDA: [`block_ops`]);
//! - [`rotary`], [`linear`]: position tables and the projection layer, whose CPU products
//!   [`cpu_matmul`] splits over the threads by output tiles;
//! - [`token_nll`]: the next-token loss of rows of logits in one pass (CUDA kernel);
//! - [`math`]: the vectorisable `exp` the CPU kernels use.
//!
//! Shapes follow the Hugging Face modelling code: hidden states are `(batch, seq, hidden)`,
//! attention tensors `(batch, heads, seq, head_dim)`. Nothing here knows about a model.
pub mod attention;
pub mod block_ops;
pub mod cpu_attention;
pub mod cpu_matmul;
#[cfg(feature = "cuda")]
mod cuda;
pub mod elementwise;
pub mod flash_attention;
pub mod linear;
pub mod masked_softmax;
pub mod math;
pub mod reference;
pub mod rotary;
#[cfg(test)]
mod test_util;
pub mod token_nll;

pub use attention::{
    attention, attention_fused_softmax, causal_attention, split_heads, split_heads_contiguous, AttnContext,
};
pub use elementwise::{add, silu_mul};
pub use linear::Linear;
pub use reference::{attention_reference, causal_mask, needs_mask, repeat_kv};
pub use rotary::RotaryTable;
pub use token_nll::token_nll;

/// candle-nn's RMSNorm, SiLU and softmax ops as the model runs them, re-exported for measurement
/// harnesses (examples and benches have no direct candle-nn dependency).
pub use candle_nn::ops::{rms_norm, silu, softmax_last_dim};
