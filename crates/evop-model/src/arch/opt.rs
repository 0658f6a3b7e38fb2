//! OPT decoder blocks (Zhang et al. 2022), written to read next to Hugging Face's
//! `modeling_opt.py`: learned positions with an offset of 2, LayerNorm with bias, biased linears,
//! ReLU MLP, pre- or post-norm (`do_layer_norm_before`), and `project_in` / `project_out` when the
//! embedding width differs from the hidden size (OPT-350m).
use crate::error::{ModelError, Result};
use super::block_lm::{check_block_index, Architecture, AttnContext, BlockLm, BlockParts, LayerCache, MlpOutProjection, ModelInfo};
use crate::kernels::{causal_attention, split_heads, split_heads_contiguous};
use candle_core::{Module, Tensor};
use crate::kernels::Linear;
use candle_nn::{layer_norm, Embedding, LayerNorm, LayerNormConfig, VarBuilder};
use serde::{Deserialize, Serialize};

/// OPT's learned position table starts at index 2 (Hugging Face `OPTLearnedPositionalEmbedding`).
const POSITION_OFFSET: usize = 2;

fn yes() -> bool {
    true
}

/// The fields of an OPT `config.json` that the forward needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub ffn_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    /// Defaults to `hidden_size`.
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    #[serde(default = "relu")]
    pub activation_function: String,
}

fn relu() -> String {
    "relu".into()
}

impl OptConfig {
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }
}

struct Block {
    attn_norm: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// An OPT model whose blocks can be run one at a time.
pub struct Opt {
    info: ModelInfo,
    pre_norm: bool,
    heads: usize,
    scale: f64,
    embed_tokens: Embedding,
    embed_positions: Embedding,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    final_norm: Option<LayerNorm>,
    head: Linear,
    blocks: Vec<Block>,
}

impl Opt {
    /// Builds the model from weights named as in Hugging Face checkpoints (`model.decoder.layers.0.…`).
    pub fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.activation_function != "relu" {
            return Err(ModelError::Input(format!(
                "OPT activation `{}` is not supported (only relu)",
                cfg.activation_function
            )));
        }
        let h = cfg.hidden_size;
        let e = cfg.embed_dim();
        let d = vb.pp("model").pp("decoder");
        let ln_cfg = LayerNormConfig { eps: 1e-5, affine: cfg.layer_norm_elementwise_affine, ..Default::default() };
        let lin = |i: usize, o: usize, vb: VarBuilder| {
            if cfg.enable_bias {
                candle_nn::linear(i, o, vb).map(Linear::from)
            } else {
                candle_nn::linear_no_bias(i, o, vb).map(Linear::from)
            }
        };
        let embed_w = d.pp("embed_tokens").get((cfg.vocab_size, e), "weight")?;
        let embed_tokens = Embedding::new(embed_w.clone(), e);
        let embed_positions = Embedding::new(
            d.pp("embed_positions").get((cfg.max_position_embeddings + POSITION_OFFSET, h), "weight")?,
            h,
        );
        let (project_in, project_out) = if e != h {
            (Some(Linear::from(candle_nn::linear_no_bias(e, h, d.pp("project_in"))?)), Some(Linear::from(candle_nn::linear_no_bias(h, e, d.pp("project_out"))?)))
        } else {
            (None, None)
        };
        let final_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(layer_norm(h, ln_cfg, d.pp("final_layer_norm"))?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = d.pp("layers").pp(i);
            let a = b.pp("self_attn");
            blocks.push(Block {
                attn_norm: layer_norm(h, ln_cfg, b.pp("self_attn_layer_norm"))?,
                q: lin(h, h, a.pp("q_proj"))?,
                k: lin(h, h, a.pp("k_proj"))?,
                v: lin(h, h, a.pp("v_proj"))?,
                out: lin(h, h, a.pp("out_proj"))?,
                mlp_norm: layer_norm(h, ln_cfg, b.pp("final_layer_norm"))?,
                fc1: lin(h, cfg.ffn_dim, b.pp("fc1"))?,
                fc2: lin(cfg.ffn_dim, h, b.pp("fc2"))?,
            });
        }
        let head = if vb.contains_tensor("lm_head.weight") {
            Linear::from(candle_nn::linear_no_bias(e, cfg.vocab_size, vb.pp("lm_head"))?)
        } else {
            Linear::new(embed_w, None)
        };
        let info = ModelInfo {
            architecture: Architecture::Opt,
            num_blocks: cfg.num_hidden_layers,
            hidden_size: h,
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
            sliding_window: None,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        };
        Ok(Self {
            info,
            pre_norm: cfg.do_layer_norm_before,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((h / cfg.num_attention_heads) as f64).sqrt(),
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            final_norm,
            head,
            blocks,
        })
    }
}

impl Opt {
    fn check_foldable(&self, index: usize) -> Result<()> {
        check_block_index(index, self.blocks.len())?;
        if !self.pre_norm {
            return Err(ModelError::Input(
                "post-norm OPT (do_layer_norm_before: false) normalises after the residual add: a block's output is not \
                 the stream after attention plus the MLP output, so no linear patch can be folded into fc2"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Block `index`'s stream after attention (after its norm, in post-norm blocks) and its MLP
    /// output before the residual add.
    fn block_summands(
        &self,
        index: usize,
        hidden: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<(Tensor, Tensor)> {
        check_block_index(index, self.blocks.len())?;
        let b = &self.blocks[index];
        let norm_in = |x: &Tensor, n: &LayerNorm| if self.pre_norm { n.forward(x) } else { Ok(x.clone()) };
        let norm_out = |x: Tensor, n: &LayerNorm| if self.pre_norm { Ok(x) } else { n.forward(&x) };
        let x = norm_in(hidden, &b.attn_norm)?;
        let q = split_heads(&b.q.forward(&x)?, self.heads)?;
        let k = split_heads_contiguous(&b.k.forward(&x)?, self.heads)?;
        let v = split_heads_contiguous(&b.v.forward(&x)?, self.heads)?;
        let (k, v) = match cache {
            Some(c) => c.append(k, v)?,
            None => (k, v),
        };
        let attn = b.out.forward(&causal_attention(&q, &k, &v, ctx, self.scale)?)?;
        let x = norm_out((hidden + attn)?, &b.attn_norm)?;
        let n = norm_in(&x, &b.mlp_norm)?;
        let mlp = b.fc2.forward(&b.fc1.forward(&n)?.relu()?)?;
        Ok((x, mlp))
    }
}

impl BlockLm for Opt {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, input_ids: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, s) = input_ids.dims2()?;
        let mut x = self.embed_tokens.forward(input_ids)?;
        if let Some(p) = &self.project_in {
            x = p.forward(&x)?;
        }
        let start = (offset + POSITION_OFFSET) as u32;
        let positions = Tensor::arange(start, start + s as u32, input_ids.device())?;
        let pos = self.embed_positions.forward(&positions)?;
        Ok(x.broadcast_add(&pos)?)
    }

    fn block(
        &self,
        index: usize,
        hidden: &Tensor,
        ctx: &AttnContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (x, mlp) = self.block_summands(index, hidden, ctx, cache)?;
        let b = &self.blocks[index];
        Ok(if self.pre_norm { (x + mlp)? } else { b.mlp_norm.forward(&(x + mlp)?)? })
    }

    /// Pre-norm OPT only: post-norm blocks (`do_layer_norm_before: false`, OPT-350m) normalise
    /// after the residual add, so their output is not `after_attention + mlp_out`.
    fn block_parts(&self, index: usize, hidden: &Tensor, ctx: &AttnContext) -> Result<BlockParts> {
        self.check_foldable(index)?;
        let (after_attention, mlp_out) = self.block_summands(index, hidden, ctx, None)?;
        Ok(BlockParts { after_attention, mlp_out })
    }

    fn mlp_out_projection(&self, index: usize) -> Result<MlpOutProjection> {
        self.check_foldable(index)?;
        let prefix = format!("model.decoder.layers.{index}.fc2");
        Ok(MlpOutProjection {
            weight: format!("{prefix}.weight"),
            bias: self.blocks[index].fc2.bias().map(|_| format!("{prefix}.bias")),
        })
    }

    fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut x = match &self.final_norm {
            Some(n) => n.forward(hidden)?,
            None => hidden.clone(),
        };
        if let Some(p) = &self.project_out {
            x = p.forward(&x)?;
        }
        Ok(x)
    }

    fn lm_head(&self, normed: &Tensor) -> Result<Tensor> {
        Ok(self.head.forward(normed)?)
    }

    fn lm_head_linear(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        Some((self.head.weight(), self.head.bias()))
    }
}
