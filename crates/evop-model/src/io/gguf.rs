//! Loading GGUF files (the llama.cpp format) of the Llama-family architectures the registry
//! names (`llama`, `qwen2`): metadata (keys prefixed by `general.architecture`) to a
//! [`LlamaConfig`], tensors dequantised (candle's dequantisers: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, Q2_K..Q6_K, Q8_K) and renamed to Hugging Face names.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.modify_tensors`) permutes each Q/K
//! weight of the `llama` architecture as `w.reshape(heads, 2, head_dim / 2, in).swapaxes(1, 2)`
//! for interleaved RoPE; [`unpermute_rows`] inverts that. Qwen2 is converted unpermuted (NEOX
//! RoPE), so its rows are read as they are.
use crate::error::{ModelError, Result};
use crate::arch::llama::LlamaConfig;
use crate::arch::{by_gguf_arch, ArchSpec};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// An opened GGUF file: its metadata and tensor directory.
pub struct GgufFile {
    pub content: Content,
    path: std::path::PathBuf,
}

impl GgufFile {
    /// Reads the header and metadata of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut f).map_err(|e| ModelError::Gguf {
            path: path.to_path_buf(),
            message: format!("not a readable GGUF file ({e})"),
        })?;
        Ok(Self { content, path: path.to_path_buf() })
    }

    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Gguf { path: self.path.clone(), message: message.into() }
    }

    /// A metadata value, or an error naming the missing key.
    pub fn meta(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| self.err(format!("missing metadata key `{key}`")))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x as usize))
            .map_err(|_| self.err(format!("metadata `{key}` is not an integer")))
    }

    fn meta_f64(&self, key: &str) -> Result<f64> {
        self.meta(key)?
            .to_f32()
            .map(f64::from)
            .map_err(|_| self.err(format!("metadata `{key}` is not a float")))
    }

    /// A string-array metadata value.
    pub fn meta_strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self.meta(key)?.to_vec().map_err(|_| self.err(format!("metadata `{key}` is not an array")))?;
        arr.iter()
            .map(|v| v.to_string().cloned().map_err(|_| self.err(format!("metadata `{key}` holds a non-string"))))
            .collect()
    }

    /// An integer-array metadata value.
    pub fn meta_ints(&self, key: &str) -> Result<Vec<i64>> {
        let arr = self.meta(key)?.to_vec().map_err(|_| self.err(format!("metadata `{key}` is not an array")))?;
        arr.iter()
            .map(|v| {
                v.to_i32()
                    .map(i64::from)
                    .or_else(|_| v.to_u32().map(i64::from))
                    .map_err(|_| self.err(format!("metadata `{key}` holds a non-integer")))
            })
            .collect()
    }

    /// The architecture string (`general.architecture`).
    pub fn architecture(&self) -> Result<String> {
        Ok(self
            .meta("general.architecture")?
            .to_string()
            .map_err(|_| self.err("`general.architecture` is not a string"))?
            .clone())
    }

    /// The registry row of this file's architecture, or an error naming it when evop does not
    /// read GGUF files of that architecture.
    pub fn arch_spec(&self) -> Result<&'static ArchSpec> {
        let arch = self.architecture()?;
        by_gguf_arch(&arch).ok_or_else(|| ModelError::UnsupportedArchitecture { path: self.path.clone(), arch })
    }

    /// The decoder configuration described by the metadata (keys `ARCH.block_count` and so on).
    pub fn decoder_config(&self) -> Result<LlamaConfig> {
        let arch = self.arch_spec()?.gguf_arch.expect("looked up by its GGUF name");
        let key = |k: &str| format!("{arch}.{k}");
        let vocab_size = match self.meta_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => self.meta_strings("tokenizer.ggml.tokens")?.len(),
        };
        let heads = self.meta_usize(&key("attention.head_count"))?;
        let hidden = self.meta_usize(&key("embedding_length"))?;
        Ok(LlamaConfig {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: self.meta_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.meta_usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(self.meta_usize(&key("attention.head_count_kv")).unwrap_or(heads)),
            head_dim: Some(self.meta_usize(&key("rope.dimension_count")).unwrap_or(hidden / heads)),
            rope_theta: self.meta_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_norm_eps: self.meta_f64(&key("attention.layer_norm_rms_epsilon"))?,
            max_position_embeddings: self.meta_usize(&key("context_length")).unwrap_or(2048),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            sliding_window: None,
            attention_bias: false,
            use_sliding_window: false,
        })
    }

    /// Dequantises every tensor to `dtype` under its Hugging Face name.
    pub fn hf_tensors(&self, cfg: &LlamaConfig, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut f = std::fs::File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let mut out = HashMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let hf = hf_name(name).ok_or_else(|| self.err(format!("unexpected tensor `{name}`")))?;
            let permuted = self.arch_spec()?.gguf_permutes_qk;
            let q = self.content.tensor(&mut f, name, &Device::Cpu).map_err(|e| self.err(format!("tensor `{name}`: {e}")))?;
            let mut t = q.dequantize(&Device::Cpu).map_err(|e| self.err(format!("tensor `{name}`: {e}")))?;
            if permuted && name.ends_with("attn_q.weight") {
                t = unpermute_rows(&t, cfg.num_attention_heads)?;
            } else if permuted && name.ends_with("attn_k.weight") {
                t = unpermute_rows(&t, cfg.num_kv_heads())?;
            }
            out.insert(hf, t.to_dtype(dtype)?.to_device(device)?);
        }
        Ok(out)
    }
}

/// GGUF names of the tensors outside the blocks, with their Hugging Face names.
const FIXED_NAMES: [(&str, &str); 3] =
    [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")];

/// GGUF names of a block's tensors (after `blk.{i}.`), with their Hugging Face names (after
/// `model.layers.{i}.`).
const BLOCK_NAMES: [(&str, &str); 13] = [
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
];

/// Maps a GGUF tensor name of a Llama-family model to its Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = FIXED_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, part) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (_, hf) = BLOCK_NAMES.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{idx}.{hf}"))
}

/// The inverse of [`hf_name`]: the GGUF name of a Hugging Face tensor name (block indices in
/// canonical decimal only).
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = FIXED_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, part) = rest.split_once('.')?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) || (idx.len() > 1 && idx.starts_with('0')) {
        return None;
    }
    let idx: usize = idx.parse().ok()?;
    let (gguf, _) = BLOCK_NAMES.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{idx}.{gguf}"))
}

/// Inverts llama.cpp's Q/K row permutation: rows ordered `(head, i, half)` become `(head, half, i)`.
pub fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if rows % (2 * heads) != 0 {
        return Err(ModelError::Weight {
            name: "attn_q/attn_k".into(),
            message: format!("{rows} rows do not split into {heads} heads of even size"),
        });
    }
    Ok(w.reshape((heads, rows / heads / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // Permute as llama.cpp does, then check we get the original back.
        let heads = 2;
        let w = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((8, 2)).unwrap();
        let permuted = w.reshape((heads, 2, 2, 2)).unwrap().transpose(1, 2).unwrap().reshape((8, 2)).unwrap();
        let back = unpermute_rows(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(unpermute_rows(&w, 3).is_err());
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(hf_name("blk.12.ffn_gate.weight").unwrap(), "model.layers.12.mlp.gate_proj.weight");
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("blk.3.attn_k.bias").unwrap(), "model.layers.3.self_attn.k_proj.bias");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
    }
}
