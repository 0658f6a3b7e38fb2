//! Tiny random-weight Llama, Mistral, Qwen2 and OPT checkpoints against Hugging Face transformers'
//! logits (fixtures written by `scripts/make_fixtures.py`), dense and with blocks removed.
use evop_model::{forward_masked, load, BlockMask, LoadOptions, Tensor};
use std::path::PathBuf;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Every model is loaded on `EVOP_TEST_DEVICE` (default cpu).
fn opts() -> LoadOptions {
    LoadOptions { device: evop_model::device::test_device().expect("EVOP_TEST_DEVICE"), ..LoadOptions::default() }
}

fn check_fixture(name: &str) {
    let dir = fixture_dir(name);
    let opts = opts();
    let tol = evop_model::device::logit_tolerance(&opts.device);
    let model = load(&dir, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &candle_core::Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = expected["input_ids"].to_dtype(candle_core::DType::U32).unwrap().to_device(&opts.device).unwrap();
    let l = model.lm.num_blocks();
    let mut cases = vec![("logits_dense".to_string(), BlockMask::dense(l))];
    for (key, removed) in meta["masks"].as_object().unwrap() {
        let removed: Vec<usize> = removed.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        cases.push((key.clone(), BlockMask::from_removed(l, &removed).unwrap()));
    }
    for (key, mask) in cases {
        let got = forward_masked(model.lm.as_ref(), &ids, &mask).unwrap().to_device(&candle_core::Device::Cpu).unwrap();
        let want: &Tensor = &expected[&key];
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < tol, "{name} {key}: max abs diff {diff}");
    }
}

#[test]
fn llama_matches_transformers() {
    check_fixture("llama");
}

#[test]
fn llama_with_tied_head_matches_transformers() {
    check_fixture("llama_tied");
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check_fixture("mistral");
}

#[test]
fn qwen2_with_qkv_biases_matches_transformers() {
    check_fixture("qwen2");
}

#[test]
fn opt_pre_norm_matches_transformers() {
    check_fixture("opt_pre");
}

#[test]
fn opt_post_norm_matches_transformers() {
    check_fixture("opt_post");
}

#[test]
fn opt_with_projections_matches_transformers() {
    check_fixture("opt_proj");
}

#[test]
fn cached_generation_equals_full_forward() {
    // Feeding tokens one at a time through the KV cache gives the full forward's logits, for every
    // architecture (Mistral's window is shorter than the sequence) and with blocks removed.
    for name in ["llama", "mistral", "qwen2", "opt_proj"] {
        let opts = opts();
        let tol = evop_model::device::logit_tolerance(&opts.device);
        let model = load(&fixture_dir(name), &opts).unwrap();
        let lm = model.lm.as_ref();
        let dev = &opts.device;
        let mask = BlockMask::from_removed(lm.num_blocks(), &[1]).unwrap();
        let ids: Vec<u32> = (4..24).collect();
        let full = forward_masked(lm, &Tensor::new(ids.as_slice(), dev).unwrap().unsqueeze(0).unwrap(), &mask).unwrap();
        let mut cache = evop_model::KvCache::new(lm.num_blocks());
        // A prompt chunk of 5, then single tokens.
        let prompt = Tensor::new(&ids[..5], dev).unwrap().unsqueeze(0).unwrap();
        evop_model::forward_cached(lm, &prompt, &mask, &mut cache).unwrap();
        for (t, &tok) in ids.iter().enumerate().skip(5) {
            let x = Tensor::new(&[tok], dev).unwrap().unsqueeze(0).unwrap();
            let step = evop_model::forward_cached(lm, &x, &mask, &mut cache).unwrap();
            let want = full.get(0).unwrap().get(t).unwrap().unsqueeze(0).unwrap();
            let diff = (step - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < tol, "{name} position {t}: {diff}");
        }
    }
}

fn write_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    dir
}

#[test]
fn bad_inputs_give_clear_errors() {
    let llama = fixture_dir("llama");
    let config = std::fs::read(llama.join("config.json")).unwrap();
    let weights = std::fs::read(llama.join("model.safetensors")).unwrap();
    let opts = LoadOptions::default();

    let missing = load(&PathBuf::from("/nonexistent/model"), &opts).err().unwrap();
    assert!(missing.to_string().contains("/nonexistent/model"), "{missing}");

    let no_weights = write_dir(&[("config.json", &config)]);
    let e = load(no_weights.path(), &opts).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");

    let corrupt = write_dir(&[("config.json", &config), ("model.safetensors", b"not a safetensors file")]);
    let e = load(corrupt.path(), &opts).err().unwrap().to_string();
    assert!(e.contains("safetensors"), "{e}");

    let mut cfg: serde_json::Value = serde_json::from_slice(&config).unwrap();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    let no_field = write_dir(&[("config.json", cfg.to_string().as_bytes()), ("model.safetensors", &weights)]);
    let e = load(no_field.path(), &opts).err().unwrap().to_string();
    assert!(e.contains("hidden_size"), "{e}");

    let mut cfg: serde_json::Value = serde_json::from_slice(&config).unwrap();
    cfg["model_type"] = "gpt_neox".into();
    let unknown = write_dir(&[("config.json", cfg.to_string().as_bytes()), ("model.safetensors", &weights)]);
    let e = load(unknown.path(), &opts).err().unwrap().to_string();
    assert!(e.contains("unsupported architecture `gpt_neox`"), "{e}");

    let mut cfg: serde_json::Value = serde_json::from_slice(&config).unwrap();
    cfg["intermediate_size"] = 161.into();
    let shape = write_dir(&[("config.json", cfg.to_string().as_bytes()), ("model.safetensors", &weights)]);
    let e = load(shape.path(), &opts).err().unwrap().to_string();
    assert!(e.contains("shape"), "{e}");

    let not_gguf = write_dir(&[("model.gguf", b"GGUF but not really")]);
    let e = load(&not_gguf.path().join("model.gguf"), &opts).err().unwrap().to_string();
    assert!(e.contains("GGUF"), "{e}");
}

#[test]
fn mistral_path_runs_llama_weights() {
    // With a window longer than the sequence, the Mistral path equals the Llama path.
    let model = load(&fixture_dir("llama"), &LoadOptions::default()).unwrap();
    let mistral = evop_model::load::as_mistral(&model, 64).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 17, 33, 65, 100]], &candle_core::Device::Cpu).unwrap();
    let mask = BlockMask::dense(4);
    let a = forward_masked(model.lm.as_ref(), &ids, &mask).unwrap();
    let b = forward_masked(mistral.as_ref(), &ids, &mask).unwrap();
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}
