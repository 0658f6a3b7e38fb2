//! The files of a Hugging Face directory: sharded safetensors (`model.safetensors.index.json`
//! and its shards, as the hub serves models over a few GB) load to the same logits as the single
//! file, a missing shard or a broken index is an error naming the file, and a saved pruned model's
//! files get the mode the umask gives new files.
use evop_model::{forward, load, save_pruned, BlockMask, LoadOptions, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The Llama fixture in `dir` with its weights split over two shards and an index.
fn sharded_llama(dir: &Path) {
    let src = fixture_dir("llama");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let s = usize::from(!(name.contains("embed") || name.contains("layers.0.") || name.contains("layers.1.")));
        weight_map.insert(name.clone(), format!("model-0000{}-of-00002.safetensors", s + 1).into());
        shards[s].insert(name, t);
    }
    for (s, shard) in shards.iter().enumerate() {
        assert!(!shard.is_empty());
        candle_core::safetensors::save(shard, dir.join(format!("model-0000{}-of-00002.safetensors", s + 1))).unwrap();
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn logits(dir: &Path) -> Tensor {
    let model = load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let ids = Tensor::new(&[[1u32, 5, 9, 17, 33, 2, 64, 100]], &candle_core::Device::Cpu).unwrap();
    forward(model.lm.as_ref(), &ids).unwrap()
}

#[test]
fn sharded_safetensors_load_like_the_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    sharded_llama(tmp.path());
    let diff: f32 = (logits(tmp.path()) - logits(&fixture_dir("llama")))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn missing_shard_or_broken_index_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    sharded_llama(tmp.path());
    let shard = tmp.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let err = load(tmp.path(), &LoadOptions::default()).err().expect("a missing shard is an error").to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    std::fs::write(tmp.path().join("model.safetensors.index.json"), "{\"metadata\": {}}").unwrap();
    let err = load(tmp.path(), &LoadOptions::default()).err().expect("an index without weight_map is an error").to_string();
    assert!(err.contains("model.safetensors.index.json") && err.contains("weight_map"), "{err}");
}

#[cfg(unix)]
#[test]
fn saved_files_get_the_mode_of_new_files() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let model = load(&fixture_dir("llama"), &LoadOptions::default()).unwrap();
    let out = tmp.path().join("pruned");
    save_pruned(&model, &BlockMask::from_removed(4, &[1]).unwrap(), &out).unwrap();
    // What the umask gives a file created here now (0644 under the usual 022).
    let probe = tmp.path().join("probe");
    let want = std::fs::File::create(&probe).unwrap().metadata().unwrap().permissions().mode() & 0o777;
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{f}: mode {mode:o}, new files get {want:o}");
    }
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')), "a probe or temporary file was left");
}
