//! Our folded patch against Hugging Face transformers running the same patched weights: for each
//! tiny fixture model, `scripts/make_heal_fixtures.py` folds a seeded patch `T` into block 0's MLP
//! output projection with PyTorch, removes blocks 1 and 2 and records the logits; here evop folds
//! the same `T` with its own code ([`evop_heal::fold`]) and must give those logits, in memory and
//! after saving the healed model as a Hugging Face directory and loading it back.
use candle_core::{DType, Device, Tensor};
use evop_heal::fold::folded_weights;
use evop_model::{forward, forward_masked, load, BlockMask, LoadOptions};
use ndarray::Array2;
use std::path::PathBuf;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check(name: &str) {
    let dir = fixture_dir(name);
    let model = load(&dir, &LoadOptions::default()).unwrap();
    let heal = candle_core::safetensors::load(dir.join("heal.safetensors"), &Device::Cpu).expect("heal.safetensors (scripts/make_heal_fixtures.py)");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("heal.json")).unwrap()).unwrap();
    let block = meta["block"].as_u64().unwrap() as usize;
    let removed: Vec<usize> = meta["removed"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let patch = &heal["patch"];
    let (h, _) = patch.dims2().unwrap();
    let t = Array2::from_shape_vec((h, h), patch.flatten_all().unwrap().to_vec1::<f64>().unwrap()).unwrap();
    let expected = &heal["logits_healed"];
    let ids = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()["input_ids"]
        .to_dtype(DType::U32)
        .unwrap();
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &removed).unwrap();

    let mut healed = model;
    let replacements = folded_weights(&healed, block, &t).unwrap();
    healed.replace_weights(replacements).unwrap();
    let logits = forward_masked(healed.lm.as_ref(), &ids, &mask).unwrap();
    let err = max_abs_diff(&logits, expected);
    assert!(err < 1e-4, "{name}: healed logits differ from transformers' by {err}");

    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("healed");
    evop_model::save_pruned(&healed, &mask, &saved).unwrap();
    let reloaded = load(&saved, &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.lm.num_blocks(), healed.lm.num_blocks() - removed.len());
    let err = max_abs_diff(&forward(reloaded.lm.as_ref(), &ids).unwrap(), expected);
    assert!(err < 1e-4, "{name}: the saved healed model's logits differ from transformers' by {err}");
}

#[test]
fn llama_patch_matches_transformers() {
    check("llama");
}

#[test]
fn llama_tied_patch_matches_transformers() {
    check("llama_tied");
}

#[test]
fn mistral_patch_matches_transformers() {
    check("mistral");
}

#[test]
fn qwen2_patch_matches_transformers() {
    check("qwen2");
}

#[test]
fn opt_patch_with_fc2_bias_matches_transformers() {
    check("opt_pre");
}

#[test]
fn post_norm_opt_refuses_a_fold_and_says_why() {
    let model = load(&fixture_dir("opt_post"), &LoadOptions::default()).unwrap();
    let e = model.lm.mlp_out_projection(0).unwrap_err().to_string();
    assert!(e.contains("post-norm"), "{e}");
}
