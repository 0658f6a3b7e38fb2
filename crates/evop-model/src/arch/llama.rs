//! The Llama decoder block (Touvron et al. 2023) and its configured variants, written to read next
//! to Hugging Face's `modeling_llama.py`, `modeling_mistral.py` and `modeling_qwen2.py`:
//! - Mistral (Jiang et al. 2023) is Llama plus a sliding attention window (`sliding_window`);
//! - Qwen2 (Yang et al. 2024) is Llama with biases on the query, key and value projections
//!   (none on the output projection), its own rope base and epsilon, and usually an untied head.
//!
//! The variants differ only in [`AttentionLayout::of`].
use crate::error::{ModelError, Result};
use super::block_lm::{check_block_index, Architecture, AttnContext, BlockLm, BlockParts, LayerCache, MlpOutProjection, ModelInfo};
use crate::kernels::{self, split_heads, RotaryTable};
use candle_core::{Device, Module, Tensor};
use crate::kernels::Linear;
use candle_nn::{rms_norm, Embedding, RmsNorm, VarBuilder};
use serde::{Deserialize, Serialize};

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    4096
}

/// The fields of a Hugging Face `config.json` for `llama` and `mistral` that the forward needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Mistral only: each query attends at most this many most recent keys.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Llama configs: biases on all four attention projections (`attention_bias` in
    /// `config.json`). Qwen2 has q/k/v biases whatever this says.
    #[serde(default)]
    pub attention_bias: bool,
    /// Qwen2 configs: whether `sliding_window` applies (Qwen2.5 checkpoints set `false`).
    #[serde(default)]
    pub use_sliding_window: bool,
}

/// What distinguishes the variants' attention: which projections carry a bias and whether a
/// sliding window applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionLayout {
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub sliding_window: Option<usize>,
}

impl AttentionLayout {
    /// The layout of `architecture` under `cfg`.
    pub fn of(architecture: Architecture, cfg: &LlamaConfig) -> Result<Self> {
        Ok(match architecture {
            Architecture::Mistral => Self { qkv_bias: false, o_bias: false, sliding_window: cfg.sliding_window },
            Architecture::Qwen2 => {
                if cfg.use_sliding_window {
                    return Err(ModelError::Input(
                        "Qwen2 with `use_sliding_window: true` (windowed attention in the upper layers) is not implemented".into(),
                    ));
                }
                Self { qkv_bias: true, o_bias: false, sliding_window: None }
            }
            Architecture::Llama => {
                Self { qkv_bias: cfg.attention_bias, o_bias: cfg.attention_bias, sliding_window: None }
            }
            Architecture::Opt => {
                return Err(ModelError::Input("OPT blocks are not Llama blocks: use arch::opt".into()));
            }
        })
    }
}

/// A linear layer with or without a bias.
fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> candle_core::Result<Linear> {
    Ok(Linear::from(if bias { candle_nn::linear(in_dim, out_dim, vb)? } else { candle_nn::linear_no_bias(in_dim, out_dim, vb)? }))
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    scale: f64,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    mlp: Mlp,
}

/// A Llama or Mistral model whose blocks can be run one at a time.
pub struct Llama {
    info: ModelInfo,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    /// Device of every stage; stage 0 holds the embedding, final norm and head.
    devices: Vec<Device>,
    /// Stage of every block.
    block_stage: Vec<usize>,
    /// One rotary table per stage.
    rotary: Vec<RotaryTable>,
}

impl Llama {
    /// Builds the model from weights named as in Hugging Face checkpoints (`model.layers.0.…`).
    pub fn new(cfg: &LlamaConfig, architecture: Architecture, vb: VarBuilder) -> Result<Self> {
        Self::new_placed(cfg, architecture, &[vb], &vec![0; cfg.num_hidden_layers])
    }

    /// Builds the model with its blocks spread over devices (pipeline placement, for models that
    /// do not fit one device): `stages[s]` reads weights onto stage `s`'s device and block `i`
    /// lives on stage `block_stage[i]`. The embedding, final norm and head live on stage 0, where
    /// the token ids and the logits are; hidden states move between stages as the forward
    /// crosses them.
    pub fn new_placed(
        cfg: &LlamaConfig,
        architecture: Architecture,
        stages: &[VarBuilder],
        block_stage: &[usize],
    ) -> Result<Self> {
        if stages.is_empty() || block_stage.len() != cfg.num_hidden_layers || block_stage.iter().any(|&s| s >= stages.len()) {
            return Err(ModelError::Input(format!(
                "placement of {} blocks on {} stages is invalid: {block_stage:?}",
                cfg.num_hidden_layers,
                stages.len()
            )));
        }
        let layout = AttentionLayout::of(architecture, cfg)?;
        let vb = &stages[0];
        let head_dim = cfg.head_dim();
        let (h, heads, kv_heads) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_kv_heads());
        let m = vb.pp("model");
        let embed_w = m.pp("embed_tokens").get((cfg.vocab_size, h), "weight")?;
        let embed = Embedding::new(embed_w.clone(), h);
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = stages[block_stage[i]].pp("model").pp("layers").pp(i);
            let a = b.pp("self_attn");
            let p = b.pp("mlp");
            blocks.push(Block {
                input_norm: rms_norm(h, cfg.rms_norm_eps, b.pp("input_layernorm"))?,
                attn: Attention {
                    q: linear(h, heads * head_dim, layout.qkv_bias, a.pp("q_proj"))?,
                    k: linear(h, kv_heads * head_dim, layout.qkv_bias, a.pp("k_proj"))?,
                    v: linear(h, kv_heads * head_dim, layout.qkv_bias, a.pp("v_proj"))?,
                    o: linear(heads * head_dim, h, layout.o_bias, a.pp("o_proj"))?,
                    heads,
                    kv_heads,
                    scale: 1.0 / (head_dim as f64).sqrt(),
                },
                post_attn_norm: rms_norm(h, cfg.rms_norm_eps, b.pp("post_attention_layernorm"))?,
                mlp: Mlp {
                    gate: Linear::from(candle_nn::linear_no_bias(h, cfg.intermediate_size, p.pp("gate_proj"))?),
                    up: Linear::from(candle_nn::linear_no_bias(h, cfg.intermediate_size, p.pp("up_proj"))?),
                    down: Linear::from(candle_nn::linear_no_bias(cfg.intermediate_size, h, p.pp("down_proj"))?),
                },
            });
        }
        let norm = rms_norm(h, cfg.rms_norm_eps, m.pp("norm"))?;
        let head = if cfg.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
            Linear::new(embed_w, None)
        } else {
            Linear::from(candle_nn::linear_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))?)
        };
        let rotary = stages
            .iter()
            .map(|st| RotaryTable::new(head_dim, cfg.max_position_embeddings, cfg.rope_theta, st.dtype(), st.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let devices = stages.iter().map(|st| st.device().clone()).collect();
        let info = ModelInfo {
            architecture,
            num_blocks: cfg.num_hidden_layers,
            hidden_size: h,
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
            sliding_window: layout.sliding_window,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        };
        Ok(Self { info, embed, blocks, norm, head, devices, block_stage: block_stage.to_vec(), rotary })
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryTable,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let q = split_heads(&self.q.forward(x)?, self.heads)?;
        let k = split_heads(&self.k.forward(x)?, self.kv_heads)?;
        let v = kernels::split_heads_contiguous(&self.v.forward(x)?, self.kv_heads)?;
        let (q, k) = rotary.apply(&q, &k, ctx.offset)?;
        let (k, v) = match cache {
            Some(c) => c.append(k, v)?,
            None => (k, v),
        };
        let out = kernels::causal_attention(&q, &k, &v, ctx, self.scale)?;
        self.o.forward(&out)
    }
}

/// Copies `t` to another device. Between two GPUs the copy goes through host memory: candle 0.11
/// issues a GPU-to-GPU copy on the destination's stream with no ordering against the source's
/// stream (neither before the copy, when the producer may still be writing, nor after it, when
/// the source buffer may be freed and reused). Synchronising the source first was not enough: on
/// 2 x H200 the placed model's logits still differed from one GPU's by up to 9.97 and a later
/// launch failed (docs/gpu.md). The host copy is synchronous on both sides (a 2048-token
/// hidden state of Llama-2-7B is 16 MB).
fn move_to(t: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
    if t.device().is_cuda() && device.is_cuda() && !t.device().same_device(device) {
        return t.to_device(&Device::Cpu)?.to_device(device);
    }
    t.to_device(device)
}

impl Llama {
    /// Block `index`'s output as its two summands: the stream after attention and the MLP output.
    fn block_summands(
        &self,
        index: usize,
        hidden: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<(Tensor, Tensor)> {
        check_block_index(index, self.blocks.len())?;
        let b = &self.blocks[index];
        let stage = self.block_stage[index];
        let device = &self.devices[stage];
        // Under pipeline placement the hidden state and the mask may live on another stage.
        let (moved, moved_ctx);
        let hidden = if hidden.device().same_device(device) {
            hidden
        } else {
            moved = move_to(hidden, device)?;
            &moved
        };
        let ctx = match &ctx.mask {
            Some(m) if !m.device().same_device(device) => {
                moved_ctx = AttnContext { mask: Some(move_to(m, device)?), ..ctx.clone() };
                &moved_ctx
            }
            _ => ctx,
        };
        let x = kernels::add(hidden, &b.attn.forward(&b.input_norm.forward(hidden)?, &self.rotary[stage], ctx, cache)?)?;
        let n = b.post_attn_norm.forward(&x)?;
        let mlp = b.mlp.down.forward(&kernels::silu_mul(&b.mlp.gate.forward(&n)?, &b.mlp.up.forward(&n)?)?)?;
        Ok((x, mlp))
    }
}

impl BlockLm for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, input_ids: &Tensor, _offset: usize) -> Result<Tensor> {
        Ok(self.embed.forward(input_ids)?)
    }

    fn block(
        &self,
        index: usize,
        hidden: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (x, mlp) = self.block_summands(index, hidden, ctx, cache)?;
        Ok(kernels::add(&x, &mlp)?)
    }

    fn block_parts(&self, index: usize, hidden: &Tensor, ctx: &AttnContext) -> Result<BlockParts> {
        let (after_attention, mlp_out) = self.block_summands(index, hidden, ctx, None)?;
        Ok(BlockParts { after_attention, mlp_out })
    }

    fn mlp_out_projection(&self, index: usize) -> Result<MlpOutProjection> {
        check_block_index(index, self.blocks.len())?;
        Ok(MlpOutProjection { weight: format!("model.layers.{index}.mlp.down_proj.weight"), bias: None })
    }

    fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        if !hidden.device().same_device(&self.devices[0]) {
            return Ok(self.norm.forward(&move_to(hidden, &self.devices[0])?)?);
        }
        Ok(self.norm.forward(hidden)?)
    }

    fn lm_head(&self, normed: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(normed)?)
    }

    fn lm_head_linear(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        Some((self.head.weight(), self.head.bias()))
    }
}
