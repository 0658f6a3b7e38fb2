//! The block-level interface every architecture implements ([`BlockLm`]), and the forward passes
//! built on it.
//!
//! Unlike candle-transformers' models, blocks are public steps: a caller can embed tokens, run any
//! subset of blocks in order, inspect the hidden state at every block boundary and apply the head
//! to every position. Skipping block `i` means it is the identity on the residual stream.
use crate::error::{ModelError, Result};
use crate::mask::BlockMask;
pub use crate::kernels::AttnContext;
use crate::kernels::{causal_mask, needs_mask};
use candle_core::{DType, Device, Tensor};

/// The architectures this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama: RMSNorm, RoPE, grouped-query attention, SwiGLU.
    Llama,
    /// Mistral: Llama with sliding-window attention.
    Mistral,
    /// Qwen2: Llama with biases on the query, key and value projections.
    Qwen2,
    /// OPT: learned positions, LayerNorm with bias, biased linears, ReLU MLP.
    Opt,
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Opt => "opt",
        })
    }
}

/// Sizes and facts about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub architecture: Architecture,
    pub num_blocks: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// Longest sequence the position encoding supports.
    pub max_positions: usize,
    /// Mistral's attention window; `None` for full causal attention.
    pub sliding_window: Option<usize>,
    pub dtype: DType,
    pub device: Device,
}

impl AttnContext {
    /// Builds the context for a chunk of `seq_len` tokens starting at `offset`.
    pub fn new(info: &ModelInfo, seq_len: usize, offset: usize) -> Result<Self> {
        if offset + seq_len > info.max_positions {
            return Err(ModelError::Input(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                offset + seq_len,
                info.max_positions
            )));
        }
        let mask = if needs_mask(seq_len, offset, info.sliding_window) {
            Some(causal_mask(seq_len, offset, info.sliding_window, info.dtype, &info.device)?)
        } else {
            None
        };
        Ok(Self { offset, seq_len, mask, sliding_window: info.sliding_window })
    }
}

/// Cached keys and values of one block, for generation.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Appends this step's keys and values (`(b, h_kv, s, d)`) and returns the full ones.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A KV cache for a whole (possibly masked) model: one slot per block.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_blocks: usize) -> Self {
        Self { layers: vec![LayerCache::default(); num_blocks] }
    }

    /// Number of tokens already processed.
    pub fn offset(&self) -> usize {
        self.layers.iter().map(LayerCache::len).max().unwrap_or(0)
    }
}

/// The two summands of a pre-norm block's output: `output = after_attention + mlp_out`, where
/// `after_attention` is the residual stream after the attention sub-block (the input of the
/// post-attention norm) and `mlp_out` the MLP's output projection (bias included), each
/// `(b, s, h)`. A linear map folded into that projection (`W <- T^T W`, `b <- T^T b`) turns
/// `mlp_out` into `mlp_out · T`: what a training-free healer fits.
#[derive(Clone, Debug)]
pub struct BlockParts {
    pub after_attention: Tensor,
    pub mlp_out: Tensor,
}

/// The Hugging Face names of a block's MLP output projection: the weight `(h, ffn)` and its bias
/// `(h,)` where the architecture has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpOutProjection {
    pub weight: String,
    pub bias: Option<String>,
}

/// An error unless `index` names one of `num_blocks` blocks (for the architectures' block accessors).
pub(crate) fn check_block_index(index: usize, num_blocks: usize) -> Result<()> {
    if index >= num_blocks {
        return Err(ModelError::Input(format!("block {index} does not exist: the model has {num_blocks} blocks")));
    }
    Ok(())
}

/// Block-level forward of a decoder-only language model. Implemented by every architecture.
pub trait BlockLm: Send + Sync {
    /// Sizes, dtype and device.
    fn info(&self) -> &ModelInfo;

    /// Token ids `(b, s)` (u32) at absolute positions `offset..offset + s` to the residual stream `(b, s, h)`.
    fn embed(&self, input_ids: &Tensor, offset: usize) -> Result<Tensor>;

    /// Runs block `index` on hidden states `(b, s, h)`. With a cache, appends this chunk's keys and values.
    fn block(
        &self,
        index: usize,
        hidden: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor>;

    /// Block `index` on `hidden` split into the stream after attention and the MLP output (see
    /// [`BlockParts`]); their sum is [`BlockLm::block`]'s output. An error where the block's
    /// output is not such a sum (a norm after the residual add, as in post-norm OPT).
    fn block_parts(&self, index: usize, hidden: &Tensor, ctx: &AttnContext) -> Result<BlockParts> {
        let _ = (index, hidden, ctx);
        Err(ModelError::Input(format!("{}: blocks cannot be split into attention and MLP parts", self.info().architecture)))
    }

    /// The weight names of block `index`'s MLP output projection, where a linear map on the MLP
    /// output can be folded into it (see [`BlockParts`]); an error naming the reason otherwise.
    fn mlp_out_projection(&self, index: usize) -> Result<MlpOutProjection> {
        let _ = index;
        Err(ModelError::Input(format!("{}: no foldable MLP output projection", self.info().architecture)))
    }

    /// The final normalisation (and projection, where the architecture has one) before the head.
    fn final_norm(&self, hidden: &Tensor) -> Result<Tensor>;

    /// The language-model head on normalised states: `(b, s, h') -> (b, s, vocab)`.
    fn lm_head(&self, normed: &Tensor) -> Result<Tensor>;

    /// The head as a plain linear map, when it is one: weight `(vocab, h')` and optional bias
    /// `(vocab,)`, with [`BlockLm::lm_head`] equal to `normed w^T + bias`. The calibration loss
    /// then applies it one vocabulary slice at a time, so the full logits never reach memory.
    /// Default `None`: the loss uses [`BlockLm::lm_head`]'s logits.
    fn lm_head_linear(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        None
    }

    /// Number of decoder blocks, L.
    fn num_blocks(&self) -> usize {
        self.info().num_blocks
    }

    /// Final norm then head: logits for every position.
    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head(&self.final_norm(hidden)?)
    }
}

/// Runs the kept blocks of `mask` with index in `from..` on `hidden`.
pub fn run_blocks(
    lm: &dyn BlockLm,
    hidden: Tensor,
    from: usize,
    mask: &BlockMask,
    ctx: &AttnContext,
) -> Result<Tensor> {
    mask.check_len(lm.num_blocks())?;
    let mut h = hidden;
    for i in (from..lm.num_blocks()).filter(|&i| mask.is_kept(i)) {
        h = lm.block(i, &h, ctx, None)?;
    }
    Ok(h)
}

fn check_ids(_lm: &dyn BlockLm, input_ids: &Tensor) -> Result<(usize, usize)> {
    let (b, s) = input_ids
        .dims2()
        .map_err(|_| ModelError::Input(format!("token ids must be (batch, seq), got {:?}", input_ids.shape())))?;
    if s == 0 || b == 0 {
        return Err(ModelError::Input("empty batch or sequence".into()));
    }
    Ok((b, s))
}

/// Logits `(b, s, vocab)` for every position of the model with `mask` applied.
pub fn forward_masked(lm: &dyn BlockLm, input_ids: &Tensor, mask: &BlockMask) -> Result<Tensor> {
    let (_, s) = check_ids(lm, input_ids)?;
    let ctx = AttnContext::new(lm.info(), s, 0)?;
    let h = lm.embed(input_ids, 0)?;
    let h = run_blocks(lm, h, 0, mask, &ctx)?;
    lm.head(&h)
}

/// Logits of the dense model for every position.
pub fn forward(lm: &dyn BlockLm, input_ids: &Tensor) -> Result<Tensor> {
    forward_masked(lm, input_ids, &BlockMask::dense(lm.num_blocks()))
}

/// The dense residual stream at every block boundary: element `i` is the input of block `i`, the
/// last element the output of the last block (before the final norm). `L + 1` tensors `(b, s, h)`.
pub fn hidden_states(lm: &dyn BlockLm, input_ids: &Tensor) -> Result<Vec<Tensor>> {
    let (_, s) = check_ids(lm, input_ids)?;
    let ctx = AttnContext::new(lm.info(), s, 0)?;
    let mut states = Vec::with_capacity(lm.num_blocks() + 1);
    let mut h = lm.embed(input_ids, 0)?;
    for i in 0..lm.num_blocks() {
        let next = lm.block(i, &h, &ctx, None)?;
        states.push(h);
        h = next;
    }
    states.push(h);
    Ok(states)
}

/// One step of cached decoding for the masked model: feeds `input_ids` `(b, s)` after the cached
/// tokens and returns the logits of the chunk's last position `(b, vocab)`.
pub fn forward_cached(
    lm: &dyn BlockLm,
    input_ids: &Tensor,
    mask: &BlockMask,
    cache: &mut KvCache,
) -> Result<Tensor> {
    let (_, s) = check_ids(lm, input_ids)?;
    mask.check_len(lm.num_blocks())?;
    let offset = cache.offset();
    let ctx = AttnContext::new(lm.info(), s, offset)?;
    let mut h = lm.embed(input_ids, offset)?;
    for i in mask.kept().collect::<Vec<_>>() {
        h = lm.block(i, &h, &ctx, Some(&mut cache.layers[i]))?;
    }
    let last = h.narrow(1, s - 1, 1)?;
    Ok(lm.head(&last)?.squeeze(1)?.to_dtype(DType::F32)?)
}
