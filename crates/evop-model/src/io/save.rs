//! Saving a pruned model as a Hugging Face directory: kept blocks renumbered from 0,
//! `config.json` with `num_hidden_layers` updated, `tokenizer.json`, and `model.safetensors`.
//! Everything is written into a temporary sibling directory that is renamed into place at the
//! end, so an interrupted save never leaves a partial model where a complete one was expected,
//! and an existing non-empty directory is never overwritten. Every file gets the mode the umask
//! gives new files (0644 under the usual 022).
use crate::error::{ModelError, Result};
use crate::io::load::LoadedModel;
use crate::mask::BlockMask;
use crate::arch::Architecture;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// `config.json` arrays with one entry per block.
const PER_BLOCK_CONFIG_KEYS: &[&str] = &["layer_types"];

/// Prefix of block weights for an architecture (`model.layers.` or `model.decoder.layers.`).
pub fn block_prefix(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => "model.layers.",
        Architecture::Opt => "model.decoder.layers.",
    }
}

/// The weights of the pruned model, kept blocks renumbered from 0.
pub fn pruned_weights(model: &LoadedModel, mask: &BlockMask) -> Result<HashMap<String, Tensor>> {
    mask.check_len(model.lm.num_blocks())?;
    let prefix = block_prefix(model.architecture());
    let new_index: HashMap<usize, usize> = mask.kept().enumerate().map(|(new, old)| (old, new)).collect();
    let tied = model.hf_config.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);
    let mut out = HashMap::new();
    for (name, t) in &model.weights {
        if tied && name == "lm_head.weight" {
            continue;
        }
        match name.strip_prefix(prefix) {
            Some(rest) => {
                let (idx, tail) = rest.split_once('.').ok_or_else(|| ModelError::Weight {
                    name: name.clone(),
                    message: "block weight without a block index".into(),
                })?;
                let idx: usize = idx.parse().map_err(|_| ModelError::Weight {
                    name: name.clone(),
                    message: "block index is not a number".into(),
                })?;
                if let Some(new) = new_index.get(&idx) {
                    out.insert(format!("{prefix}{new}.{tail}"), t.clone());
                }
            }
            None => {
                out.insert(name.clone(), t.clone());
            }
        }
    }
    Ok(out)
}

/// Writes the pruned model to `dir` (created; must not exist or be empty).
pub fn save_pruned(model: &LoadedModel, mask: &BlockMask, dir: &Path) -> Result<()> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?.next().is_some();
        if non_empty {
            return Err(ModelError::WouldOverwrite { path: dir.to_path_buf() });
        }
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let result = write_into(model, mask, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))
}

/// Gives `path` the permissions a file newly created in `dir` gets (mode 0666 under the umask on
/// Unix: 0644 under the usual 022): the safetensors writer goes through a temporary file of mode
/// 0600, which would leave the model readable by its owner only.
fn give_new_file_mode(path: &Path, dir: &Path) -> Result<()> {
    let probe = dir.join(".mode-probe");
    let created = std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).and_then(|f| f.metadata());
    let _ = std::fs::remove_file(&probe);
    let perms = created.map_err(|e| ModelError::io(&probe, e))?.permissions();
    std::fs::set_permissions(path, perms).map_err(|e| ModelError::io(path, e))
}

fn write_into(model: &LoadedModel, mask: &BlockMask, dir: &Path) -> Result<()> {
    let weights = pruned_weights(model, mask)?;
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights, &st).map_err(|e| ModelError::Weight {
        name: st.display().to_string(),
        message: e.to_string(),
    })?;
    give_new_file_mode(&st, dir)?;
    let mut cfg = model.hf_config.clone();
    let obj = cfg.as_object_mut().ok_or_else(|| ModelError::Config {
        path: model.source.clone(),
        message: "config is not a JSON object".into(),
    })?;
    obj.insert("num_hidden_layers".into(), serde_json::json!(mask.num_blocks() - mask.num_removed()));
    // Per-block config arrays (transformers >= 5 writes `layer_types` for Qwen2 and others) keep
    // the kept blocks' entries: transformers refuses a config whose arrays disagree with
    // `num_hidden_layers`.
    for key in PER_BLOCK_CONFIG_KEYS {
        if let Some(serde_json::Value::Array(items)) = obj.get(*key) {
            if items.len() != mask.num_blocks() {
                return Err(ModelError::Config {
                    path: model.source.clone(),
                    message: format!("`{key}` has {} entries for {} blocks", items.len(), mask.num_blocks()),
                });
            }
            let kept: Vec<serde_json::Value> = mask.kept().map(|i| items[i].clone()).collect();
            obj.insert((*key).into(), serde_json::Value::Array(kept));
        }
    }
    let dtype = match model.lm.info().dtype {
        candle_core::DType::F16 => "float16",
        candle_core::DType::BF16 => "bfloat16",
        _ => "float32",
    };
    obj.insert("torch_dtype".into(), serde_json::json!(dtype));
    obj.insert(
        "evop".into(),
        serde_json::json!({ "source": model.source.display().to_string(), "removed_blocks": mask.removed().collect::<Vec<_>>(), "original_num_blocks": mask.num_blocks() }),
    );
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).expect("json")).map_err(|e| ModelError::io(&cfg_path, e))?;
    if let Some(tok) = &model.tokenizer {
        let tok_path = dir.join("tokenizer.json");
        tok.save(&tok_path, false).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    }
    Ok(())
}
