//! all-MiniLM-L6-v2 sentence embeddings on candle-transformers' BERT, matching
//! `sentence-transformers`: WordPiece with `[CLS] ... [SEP]`, truncation to `max_length` tokens
//! (128, the model's `max_seq_length`), mean of the last hidden states over real tokens (attention
//! mask), L2-normalised.
//!
//! The shipped `tokenizer.json` pads every input to 128 and truncates at 128; both are set here
//! explicitly instead: truncation at [`MiniLmOptions::max_length`] (longest first, from the right)
//! and padding to the longest sequence of each batch (right, `[PAD]`), which gives the same
//! embeddings with less work. Windows are embedded through their text: the target tokenizer decodes
//! the window's real ids ([`MiniLm::with_window_tokenizer`]).
use super::{masked_mean, Embedder};
use crate::error::{DataError, Result};
use crate::window::Window;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use ndarray::Array2;
use std::path::Path;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// How to run MiniLM.
#[derive(Clone, Debug)]
pub struct MiniLmOptions {
    /// Truncation length in MiniLM tokens, including `[CLS]` and `[SEP]`.
    pub max_length: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    pub device: Device,
}

impl Default for MiniLmOptions {
    /// `max_length = 128`, `batch_size = 32`, CPU.
    fn default() -> Self {
        Self { max_length: 128, batch_size: 32, device: Device::Cpu }
    }
}

/// The all-MiniLM-L6-v2 sentence embedder.
pub struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    window_tokenizer: Option<Tokenizer>,
    options: MiniLmOptions,
    dim: usize,
}

impl MiniLm {
    /// Loads `model.safetensors`, `config.json`, `tokenizer.json` and checks `1_Pooling/config.json`
    /// (mean pooling) from the directory of `evop_assets::AssetStore::minilm_dir`.
    pub fn load(dir: &Path, options: MiniLmOptions) -> Result<Self> {
        if options.max_length < 2 {
            return Err(DataError::param("MiniLM max_length", options.max_length, "must hold [CLS] and [SEP]"));
        }
        if options.batch_size == 0 {
            return Err(DataError::param("MiniLM batch_size", 0, "must be at least 1"));
        }
        let cfg_path = dir.join("config.json");
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| DataError::io(&cfg_path, e))?;
        let config: Config =
            serde_json::from_str(&cfg_text).map_err(|e| DataError::parse(&cfg_path, None, e.to_string()))?;
        if options.max_length > config.max_position_embeddings {
            return Err(DataError::param(
                "MiniLM max_length",
                options.max_length,
                format!("exceeds the model's {} positions", config.max_position_embeddings),
            ));
        }
        let pool_path = dir.join("1_Pooling").join("config.json");
        if pool_path.is_file() {
            let text = std::fs::read_to_string(&pool_path).map_err(|e| DataError::io(&pool_path, e))?;
            let pool: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| DataError::parse(&pool_path, None, e.to_string()))?;
            if pool.get("pooling_mode_mean_tokens").and_then(|v| v.as_bool()) != Some(true) {
                return Err(DataError::parse(&pool_path, None, "`pooling_mode_mean_tokens` is not true; only mean pooling is implemented"));
            }
        }
        let weights_path = dir.join("model.safetensors");
        let weights = candle_core::safetensors::load(&weights_path, &options.device)
            .map_err(|e| DataError::parse(&weights_path, None, format!("not a readable safetensors file ({e})")))?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &options.device);
        let model = BertModel::load(vb, &config)
            .map_err(|e| DataError::parse(&weights_path, None, format!("not a BERT checkpoint ({e})")))?;

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| DataError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let (pad_id, pad_token) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => (0, "[PAD]".to_string()),
        };
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        Ok(Self { model, tokenizer, window_tokenizer: None, dim: config.hidden_size, options })
    }

    /// Sets the tokenizer that turns window ids back into text (the target model's tokenizer).
    pub fn with_window_tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.window_tokenizer = Some(tokenizer);
        self
    }

    /// The options in use.
    pub fn options(&self) -> &MiniLmOptions {
        &self.options
    }

    /// Embeds texts, `batch_size` at a time: `(texts.len(), 384)`, rows L2-normalised.
    ///
    /// Batches run concurrently on rayon's pool: candle's CPU matrix products are threaded but its
    /// element-wise ops (GELU's erf, softmax's exp, layer norm) are not, so one batch at a time
    /// leaves all cores but one idle for about half of each forward. Each batch's numbers do not
    /// depend on what runs beside it, so the embeddings are the same either way.
    pub fn embed_texts<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Array2<f32>> {
        use rayon::prelude::*;
        let batches: Vec<Array2<f32>> =
            texts.par_chunks(self.options.batch_size).map(|chunk| self.embed_batch(chunk)).collect::<Result<_>>()?;
        let mut out = Array2::zeros((texts.len(), self.dim));
        for (c, pooled) in batches.iter().enumerate() {
            let start = c * self.options.batch_size;
            out.slice_mut(ndarray::s![start..start + pooled.nrows(), ..]).assign(pooled);
        }
        Ok(out)
    }

    /// One forward pass over at most `batch_size` texts: `(chunk.len(), 384)`, rows L2-normalised.
    fn embed_batch<S: AsRef<str>>(&self, chunk: &[S]) -> Result<Array2<f32>> {
        let inputs: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
        let enc = self.tokenizer.encode_batch(inputs, true).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        let (b, s) = (enc.len(), enc[0].len());
        let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let mask: Vec<u32> = enc.iter().flat_map(|e| e.get_attention_mask().iter().copied()).collect();
        let n_tokens: Vec<usize> = enc.iter().map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count()).collect();
        let dev = &self.options.device;
        let ids = Tensor::from_vec(ids, (b, s), dev)?;
        let mask = Tensor::from_vec(mask, (b, s), dev)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Right padding: real tokens are the first n_tokens positions.
        masked_mean(&hidden, &n_tokens, true)
    }

    /// The text MiniLM sees for a window: its real ids decoded by the window tokenizer.
    pub fn window_text(&self, window: &Window) -> Result<String> {
        let tok = self.window_tokenizer.as_ref().ok_or_else(|| {
            DataError::Tokenizer("MiniLM needs the target model's tokenizer to embed windows (MiniLm::with_window_tokenizer)".into())
        })?;
        tok.decode(window.real_ids(), true).map_err(|e| DataError::Tokenizer(format!("decoding a window: {e}")))
    }
}

impl Embedder for MiniLm {
    fn name(&self) -> String {
        format!("all-MiniLM-L6-v2 (mean pooling, L2-normalised, max_length {})", self.options.max_length)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, windows: &[Window]) -> Result<Array2<f32>> {
        let texts = windows.iter().map(|w| self.window_text(w)).collect::<Result<Vec<_>>>()?;
        self.embed_texts(&texts)
    }
}
