//! Loading a model from a Hugging Face directory (`config.json`, `model.safetensors` or a sharded
//! index, optional `tokenizer.json`) or a llama GGUF file, into one [`LoadedModel`].
use crate::error::{ModelError, Result};
use crate::io::gguf::GgufFile;
use crate::arch::llama::{Llama, LlamaConfig};
use crate::arch::{Architecture, BlockLm, Family};
use crate::io::tokenizer::tokenizer_from_gguf;
pub use crate::io::loaded::{LoadOptions, LoadedModel};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokenizers::Tokenizer;

/// Loads a Hugging Face model directory or a GGUF file.
/// The path `synthetic:NAME` builds a random-weight model of a published shape (seed 0; see
/// [`crate::io::synthetic`]).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    if let Some(name) = crate::io::synthetic::synthetic_name(path) {
        crate::io::synthetic::load_synthetic(name, 0, opts)
    } else if path.is_dir() {
        load_hf_dir(path, opts)
    } else if path.is_file() {
        load_gguf(path, opts)
    } else {
        Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")))
    }
}

/// Loads a Llama or Mistral model with its blocks split evenly, in order, over `devices`
/// (pipeline placement for a model that does not fit one device); the embedding, final norm and
/// head live on the first device. One device is the same as [`load`].
pub fn load_placed(path: &Path, dtype: DType, devices: &[Device]) -> Result<LoadedModel> {
    match devices {
        [] => return Err(ModelError::Input("no device to place the model on".into())),
        [one] => return load(path, &LoadOptions { dtype, device: one.clone() }),
        _ => {}
    }
    let mut host = load(path, &LoadOptions { dtype, device: Device::Cpu })?;
    // The CPU layout (io::layout) is for the CPU GEMM: accelerators get row-major weights back.
    if devices.iter().any(|d| !d.is_cpu()) {
        for t in host.weights.values_mut() {
            *t = t.contiguous()?;
        }
    }
    let arch = host.architecture();
    if crate::arch::spec(arch).family != Family::Llama {
        return Err(ModelError::Input(format!("pipeline placement supports Llama-family models, not {arch}")));
    }
    let cfg: LlamaConfig = serde_json::from_value(host.hf_config.clone())
        .map_err(|e| ModelError::Config { path: host.source.clone(), message: e.to_string() })?;
    let l = cfg.num_hidden_layers;
    let stages: Vec<VarBuilder> =
        devices.iter().map(|d| VarBuilder::from_tensors(host.weights.clone(), dtype, d)).collect();
    let block_stage: Vec<usize> = (0..l).map(|i| i * devices.len() / l).collect();
    let lm: Arc<dyn BlockLm> = Arc::new(Llama::new_placed(&cfg, arch, &stages, &block_stage)?);
    Ok(LoadedModel { lm, ..host })
}

/// Loads a GGUF file of a Llama-family architecture (`llama`, `qwen2`); llama Q/K rows are
/// un-permuted and the embedded tokenizer is rebuilt.
pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let gguf = GgufFile::open(path)?;
    let spec = gguf.arch_spec()?;
    let cfg = gguf.decoder_config()?;
    let mut weights = gguf.hf_tensors(&cfg, opts.dtype, &opts.device)?;
    crate::io::layout::cpu_gemm_layout(&mut weights, &opts.device)?;
    let tokenizer = Some(tokenizer_from_gguf(&gguf)?);
    let vb = VarBuilder::from_tensors(weights.clone(), opts.dtype, &opts.device);
    let lm: Arc<dyn BlockLm> = Arc::new(Llama::new(&cfg, spec.architecture, vb)?);
    let mut hf_config = serde_json::to_value(&cfg).expect("config serialises");
    let obj = hf_config.as_object_mut().expect("object");
    obj.insert("architectures".into(), serde_json::json!([spec.hf_class]));
    obj.insert("model_type".into(), serde_json::json!(spec.model_type));
    obj.insert("hidden_act".into(), serde_json::json!("silu"));
    obj.remove("sliding_window");
    obj.remove("use_sliding_window");
    if spec.architecture != Architecture::Llama {
        obj.remove("attention_bias");
    }
    for (key, hf_key) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
        if let Ok(v) = gguf.meta(key).and_then(|v| v.to_u32().map_err(|e| ModelError::Tokenizer(e.to_string()))) {
            obj.insert(hf_key.into(), serde_json::json!(v));
        }
    }
    Ok(LoadedModel { lm, tokenizer, weights, hf_config, source: path.to_path_buf() })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.to_path_buf(), message: e.to_string() })
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Config {
            path: index.clone(),
            message: "missing field `weight_map`".into(),
        })?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(ModelError::io(
        dir.join("model.safetensors"),
        std::io::Error::new(std::io::ErrorKind::NotFound, "no model.safetensors or model.safetensors.index.json"),
    ))
}

/// Loads a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let mut hf_config = read_json(&cfg_path)?;
    // transformers >= 5 writes `rope_theta` inside `rope_parameters`.
    if hf_config.get("rope_theta").is_none() {
        if let Some(theta) = hf_config.pointer("/rope_parameters/rope_theta").cloned() {
            hf_config.as_object_mut().map(|o| o.insert("rope_theta".into(), theta));
        }
    }
    let model_type = hf_config.get("model_type").and_then(|v| v.as_str()).ok_or_else(|| ModelError::Config {
        path: cfg_path.clone(),
        message: "missing field `model_type`".into(),
    })?;
    let arch = crate::arch::by_model_type(model_type)
        .ok_or_else(|| ModelError::UnsupportedArchitecture { path: cfg_path.clone(), arch: model_type.to_string() })?
        .architecture;
    let mut weights = HashMap::new();
    for file in safetensors_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| ModelError::Config {
            path: file.clone(),
            message: format!("not a readable safetensors file ({e})"),
        })?;
        for (name, t) in loaded {
            weights.insert(name, t.to_dtype(opts.dtype)?.to_device(&opts.device)?);
        }
    }
    crate::io::layout::cpu_gemm_layout(&mut weights, &opts.device)?;
    let vb = VarBuilder::from_tensors(weights.clone(), opts.dtype, &opts.device);
    let lm = crate::arch::build(arch, &hf_config, vb, &cfg_path).map_err(|e| weight_context(e, dir))?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        Some(Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tok_path.display())))?)
    } else {
        None
    };
    Ok(LoadedModel { lm, tokenizer, weights, hf_config, source: dir.to_path_buf() })
}

/// Rewords candle's weight errors (missing tensor, wrong shape) to name the directory.
fn weight_context(e: ModelError, dir: &Path) -> ModelError {
    match e {
        ModelError::Candle(c) => ModelError::Weight { name: dir.display().to_string(), message: c.to_string() },
        other => other,
    }
}

/// Loads a model and runs it through the Mistral code path (sliding window from `window`), for
/// exercising the Mistral path with Llama weights. Results must be labelled as Llama weights.
pub fn as_mistral(model: &LoadedModel, window: usize) -> Result<Arc<dyn BlockLm>> {
    let mut cfg: LlamaConfig = serde_json::from_value(model.hf_config.clone())
        .map_err(|e| ModelError::Config { path: model.source.clone(), message: e.to_string() })?;
    cfg.sliding_window = Some(window);
    let info = model.lm.info();
    let vb = VarBuilder::from_tensors(model.weights.clone(), info.dtype, &info.device);
    Ok(Arc::new(Llama::new(&cfg, Architecture::Mistral, vb)?))
}
