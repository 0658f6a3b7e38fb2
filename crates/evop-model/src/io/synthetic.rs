//! Random-weight models of published shapes, for throughput and scaling measurements where no
//! checkpoint of that size is at hand (a Llama-2-7B-shaped model: 32 blocks, hidden 4096, 32
//! heads, FFN 11008, vocabulary 32000, as in the Llama-2 paper's 7B configuration).
//!
//! Weights are drawn from a counter-based generator (SplitMix64 of seed, tensor and element
//! index), uniform with standard deviation 0.02 as in Hugging Face's initialiser; norms are ones.
//! The same seed gives the same weights on every machine and thread count. Load one with
//! [`load_synthetic`] or with [`crate::load`] on the path `synthetic:NAME`.
use crate::error::{ModelError, Result};
use crate::arch::llama::{Llama, LlamaConfig};
use crate::io::loaded::{LoadOptions, LoadedModel};
use crate::arch::Architecture;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The prefix of a model path that names a synthetic model (`synthetic:llama2-7b`).
pub const PATH_PREFIX: &str = "synthetic:";

/// The shapes known by name.
/// `tiny-32` has the Llama-2-7B depth (32 blocks) at the `tiny` width: a search's candidate stream and
/// reuse counts on the CPU in seconds.
pub const NAMES: [&str; 4] = ["llama2-7b", "smollm2-135m", "tiny", "tiny-32"];

/// The configuration of a named synthetic shape.
pub fn synthetic_config(name: &str) -> Result<LlamaConfig> {
    let base = |vocab, hidden, ffn, layers, heads, kv: Option<usize>, tie| LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: None,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 4096,
        tie_word_embeddings: tie,
        sliding_window: None,
        attention_bias: false,
        use_sliding_window: false,
    };
    match name {
        "llama2-7b" => Ok(base(32_000, 4096, 11_008, 32, 32, None, false)),
        "smollm2-135m" => Ok(base(49_152, 576, 1536, 30, 9, Some(3), true)),
        "tiny" => Ok(base(256, 64, 128, 6, 4, Some(2), false)),
        "tiny-32" => Ok(base(256, 64, 128, 32, 4, Some(2), false)),
        other => Err(ModelError::Config {
            path: PathBuf::from(format!("{PATH_PREFIX}{other}")),
            message: format!("unknown synthetic model `{other}` (known: {})", NAMES.join(", ")),
        }),
    }
}

/// The synthetic model name in a path of the form `synthetic:NAME`, if it is one.
pub fn synthetic_name(path: &std::path::Path) -> Option<&str> {
    path.to_str().and_then(|s| s.strip_prefix(PATH_PREFIX))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` values uniform on [-a, a] with standard deviation `std`, from (seed, stream, index).
fn uniform_values(seed: u64, stream: u64, len: usize, std: f32) -> Vec<f32> {
    let a = std * 3f32.sqrt();
    let key = splitmix64(seed ^ splitmix64(stream.wrapping_mul(0xA24B_AED4_963E_E407)));
    let mut out = vec![0f32; len];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let base = (c as u64) << 16;
        for (i, v) in chunk.iter_mut().enumerate() {
            let r = splitmix64(key ^ (base + i as u64));
            let u = (r >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            *v = (2.0 * u - 1.0) * a;
        }
    });
    out
}

/// The Hugging Face-named weights of `cfg` drawn from `seed`, in `dtype` on `device`.
fn synthetic_weights(cfg: &LlamaConfig, seed: u64, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim(), cfg.num_kv_heads() * cfg.head_dim());
    let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![("model.embed_tokens.weight".into(), vec![v, h], false)];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h], true));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h], true));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![q_out, h], false));
        shapes.push((format!("{p}.self_attn.k_proj.weight"), vec![kv_out, h], false));
        shapes.push((format!("{p}.self_attn.v_proj.weight"), vec![kv_out, h], false));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q_out], false));
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h], false));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![f, h], false));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, f], false));
    }
    shapes.push(("model.norm.weight".into(), vec![h], true));
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![v, h], false));
    }
    let mut weights = HashMap::with_capacity(shapes.len());
    for (stream, (name, shape, is_norm)) in shapes.into_iter().enumerate() {
        let len: usize = shape.iter().product();
        let t = if is_norm {
            Tensor::ones(shape.as_slice(), dtype, device)?
        } else {
            Tensor::from_vec(uniform_values(seed, stream as u64, len, 0.02), shape.as_slice(), &Device::Cpu)?
                .to_device(device)?
                .to_dtype(dtype)?
        };
        weights.insert(name, t);
    }
    Ok(weights)
}

/// Builds the named synthetic Llama-architecture model with weights drawn from `seed`. It has no
/// tokenizer: feed it token ids.
pub fn load_synthetic(name: &str, seed: u64, opts: &LoadOptions) -> Result<LoadedModel> {
    let cfg = synthetic_config(name)?;
    let mut weights = synthetic_weights(&cfg, seed, opts.dtype, &opts.device)?;
    crate::io::layout::cpu_gemm_layout(&mut weights, &opts.device)?;
    let vb = VarBuilder::from_tensors(weights.clone(), opts.dtype, &opts.device);
    let lm = Arc::new(Llama::new(&cfg, Architecture::Llama, vb)?);
    let mut hf_config = serde_json::to_value(&cfg).expect("config serialises");
    let obj = hf_config.as_object_mut().expect("object");
    obj.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
    obj.insert("model_type".into(), serde_json::json!("llama"));
    obj.insert("hidden_act".into(), serde_json::json!("silu"));
    obj.remove("sliding_window");
    Ok(LoadedModel { lm, tokenizer: None, weights, hf_config, source: PathBuf::from(format!("{PATH_PREFIX}{name}")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_other_seed_differs() {
        let opts = LoadOptions::default();
        let a = load_synthetic("tiny", 7, &opts).unwrap();
        let b = load_synthetic("tiny", 7, &opts).unwrap();
        let c = load_synthetic("tiny", 8, &opts).unwrap();
        let name = "model.layers.3.mlp.down_proj.weight";
        let diff = |x: &LoadedModel, y: &LoadedModel| -> f32 {
            (&x.weights[name] - &y.weights[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
        };
        assert_eq!(diff(&a, &b), 0.0);
        assert!(diff(&a, &c) > 0.0);
        assert_eq!(a.lm.info().num_blocks, 6);
    }

    #[test]
    fn weights_have_the_stated_spread() {
        let v = uniform_values(1, 2, 200_000, 0.02);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 2e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "std {}", var.sqrt());
        assert!(v.iter().all(|x| x.abs() <= 0.02 * 3f32.sqrt()));
    }

    #[test]
    fn placement_over_stages_gives_the_same_logits() {
        use crate::arch::forward_masked;
        use crate::mask::BlockMask;
        let path = std::path::Path::new("synthetic:tiny");
        let one = crate::load(path, &LoadOptions::default()).unwrap();
        let placed = crate::io::load::load_placed(path, DType::F32, &[Device::Cpu, Device::Cpu, Device::Cpu]).unwrap();
        let ids = Tensor::new(&[[3u32, 17, 99, 4, 250, 8, 8, 1]], &Device::Cpu).unwrap();
        let mask = BlockMask::from_removed(6, &[2, 4]).unwrap();
        let a = forward_masked(one.lm.as_ref(), &ids, &mask).unwrap();
        let b = forward_masked(placed.lm.as_ref(), &ids, &mask).unwrap();
        let diff: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(diff, 0.0);
        assert!(crate::io::load::load_placed(path, DType::F32, &[]).is_err());
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let err = load_synthetic("llama-9000", 0, &LoadOptions::default()).err().unwrap().to_string();
        assert!(err.contains("llama-9000") && err.contains("llama2-7b"), "{err}");
    }

    #[test]
    fn the_7b_shape_matches_the_published_configuration() {
        let c = synthetic_config("llama2-7b").unwrap();
        let per_block = 4 * c.hidden_size * c.hidden_size + 3 * c.hidden_size * c.intermediate_size;
        let total = c.num_hidden_layers * per_block + 2 * c.vocab_size * c.hidden_size;
        // Llama-2-7B has 6,738,415,616 parameters, of which 32 x 2 x 4096 + 4096 are norm weights.
        assert_eq!(total, 6_738_415_616 - (32 * 2 * 4096 + 4096));
    }
}
