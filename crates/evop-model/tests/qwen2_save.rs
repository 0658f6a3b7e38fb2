//! Saving a pruned Qwen2 (the tiny `qwen2` fixture of `scripts/make_fixtures.py`) with
//! `save_pruned` and loading it back gives the masked model's logits, which are transformers'.
//!
//! That transformers itself loads the saved directory as `Qwen2ForCausalLM` with the same logits is
//! checked by hand (tests never run Python): set `EVOP_QWEN2_SAVE_DIR=/some/new/dir`, run this test,
//! then `python3 scripts/make_fixtures.py --check-saved $EVOP_QWEN2_SAVE_DIR/model
//! --expected $EVOP_QWEN2_SAVE_DIR/evop_logits.safetensors --expect-class Qwen2ForCausalLM`
//! (scripts/README.md records the result).
use evop_model::{forward_masked, load, save_pruned, BlockMask, LoadOptions, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn pruned_qwen2_saves_and_reloads_with_the_masked_logits() {
    let dir = fixture_dir();
    let opts = LoadOptions::default(); // CPU, f32
    let model = load(&dir, &opts).unwrap();
    assert_eq!(model.architecture(), evop_model::Architecture::Qwen2);
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &candle_core::Device::Cpu).unwrap();
    let ids = expected["input_ids"].to_dtype(candle_core::DType::U32).unwrap();
    let tol = evop_model::device::logit_tolerance(&candle_core::Device::Cpu);

    // The fixture's `logits_skip_0_2`: blocks 0 and 2 removed.
    let mask = BlockMask::from_removed(4, &[0, 2]).unwrap();
    let masked = forward_masked(model.lm.as_ref(), &ids, &mask).unwrap();
    let vs_hf = max_abs_diff(&masked, &expected["logits_skip_0_2"]);
    assert!(vs_hf < tol, "masked model vs transformers: {vs_hf}");

    let keep = std::env::var_os("EVOP_QWEN2_SAVE_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let root = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root).unwrap();
    let out = root.join("model");
    save_pruned(&model, &mask, &out).unwrap();

    // The directory: 2 blocks renumbered 0 and 1 (old 1 and 3), every q/k/v bias kept, no o_proj bias,
    // the untied head kept, the config still Qwen2.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "qwen2");
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["evop"]["removed_blocks"], serde_json::json!([0, 2]));
    let saved = candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let orig = candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (new, old) in [(0, 1), (1, 3)] {
        for p in ["q_proj.bias", "k_proj.bias", "v_proj.bias", "q_proj.weight", "o_proj.weight"] {
            let a = &saved[&format!("model.layers.{new}.self_attn.{p}")];
            let b = &orig[&format!("model.layers.{old}.self_attn.{p}")];
            assert_eq!(max_abs_diff(a, b), 0.0, "saved block {new} {p} is not old block {old}'s");
        }
        assert!(!saved.contains_key(&format!("model.layers.{new}.self_attn.o_proj.bias")));
    }
    assert!(!saved.keys().any(|k| k.starts_with("model.layers.2.") || k.starts_with("model.layers.3.")));
    assert!(saved.contains_key("lm_head.weight"), "the untied head must be saved");
    assert_eq!(saved.len(), orig.len() - 2 * 12, "{} tensors saved", saved.len());

    // Reloaded dense == the masked original, bit for bit up to the tolerance.
    let reloaded = load(&out, &opts).unwrap();
    assert_eq!(reloaded.architecture(), evop_model::Architecture::Qwen2);
    assert_eq!(reloaded.lm.num_blocks(), 2);
    let again = forward_masked(reloaded.lm.as_ref(), &ids, &BlockMask::dense(2)).unwrap();
    let d = max_abs_diff(&again, &masked);
    assert!(d < tol, "reloaded pruned model vs masked model: {d}");
    println!("masked vs transformers {vs_hf:.2e}; reloaded vs masked {d:.2e}");

    if keep.is_some() {
        let mut t = HashMap::new();
        t.insert("input_ids".to_string(), expected["input_ids"].clone());
        t.insert("logits".to_string(), masked);
        candle_core::safetensors::save(&t, root.join("evop_logits.safetensors")).unwrap();
        println!("kept {} and evop_logits.safetensors for scripts/make_fixtures.py --check-saved", out.display());
    }
}

#[test]
fn pruned_qwen2_config_keeps_the_kept_blocks_layer_types() {
    // transformers 5 validates len(layer_types) == num_hidden_layers when it reads a Qwen2 config, so the
    // saved config must keep the entries of the kept blocks only.
    let model = load(&fixture_dir(), &LoadOptions::default()).unwrap();
    assert_eq!(model.hf_config["layer_types"].as_array().map(Vec::len), Some(4));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    save_pruned(&model, &BlockMask::from_removed(4, &[0, 2]).unwrap(), &out).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["layer_types"], serde_json::json!(["full_attention", "full_attention"]));
}
