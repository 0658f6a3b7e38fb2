//! `evop_model::io::gguf_write::write_pruned_gguf`: pruned GGUF files of the real SmolLM2-135M
//! (Q4_1, Q8_0, F32 tensors) and Qwen2.5-Coder-0.5B (Q4_K, Q6_K, Q5_0, Q8_0, F32) with 3 blocks
//! removed, and of a small hand-made GGUF v2 with per-block metadata arrays and a 64-byte
//! alignment.
//!
//! Checked on the real files: the block count, the tensor count (source minus the removed blocks'
//! tensors), every tensor's type, shape and raw bytes against the source tensor it was renamed
//! from, every other metadata value unchanged, the provenance keys, and that evop loads the
//! pruned file and its logits on 32 tokens equal the masked source model's (same bytes, same
//! dequantisation, same kernels: they agree exactly; the test allows 1e-5).
//!
//! The models come from the asset cache (fetched if missing).
use candle_core::quantized::gguf_file::{Content, Value};
use evop_model::io::gguf_write::{write_pruned_gguf, ORIGINAL_BLOCK_COUNT_KEY, REMOVED_BLOCKS_KEY, SOURCE_KEY};
use evop_model::{encode, forward, forward_masked, load, BlockMask, LoadOptions, Tensor};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const LOGIT_TOL: f32 = 1e-5;

fn open(path: &Path) -> Content {
    Content::read(&mut std::fs::File::open(path).unwrap()).unwrap()
}

/// The raw bytes of tensor `name`, read by offset and ggml block size.
fn raw_bytes(path: &Path, content: &Content, name: &str) -> Vec<u8> {
    let info = &content.tensor_infos[name];
    let size = info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(content.tensor_data_offset + info.offset)).unwrap();
    let mut buf = vec![0u8; size];
    f.read_exact(&mut buf).unwrap();
    buf
}

fn meta_u64(content: &Content, key: &str) -> u64 {
    content.metadata[key].to_u64().unwrap()
}

/// The source name of a pruned tensor name.
fn source_name(name: &str, kept: &[usize]) -> String {
    match name.strip_prefix("blk.") {
        Some(rest) => {
            let (idx, tail) = rest.split_once('.').unwrap();
            format!("blk.{}.{tail}", kept[idx.parse::<usize>().unwrap()])
        }
        None => name.to_string(),
    }
}

fn check_real_model(source: &Path, removed: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pruned.gguf");
    let src = open(source);
    let arch = src.metadata["general.architecture"].to_string().unwrap().clone();
    let count_key = format!("{arch}.block_count");
    let l = meta_u64(&src, &count_key) as usize;
    let mask = BlockMask::from_removed(l, removed).unwrap();
    let kept: Vec<usize> = mask.kept().collect();
    write_pruned_gguf(source, &mask, &dest).unwrap();

    let out = open(&dest);
    assert_eq!(meta_u64(&out, &count_key) as usize, l - removed.len());
    let removed_tensors = src
        .tensor_infos
        .keys()
        .filter(|n| removed.iter().any(|i| n.starts_with(&format!("blk.{i}."))))
        .count();
    assert!(removed_tensors > 0);
    assert_eq!(out.tensor_infos.len(), src.tensor_infos.len() - removed_tensors);
    let mut dtypes = std::collections::BTreeSet::new();
    for (name, info) in &out.tensor_infos {
        let from = source_name(name, &kept);
        let s = &src.tensor_infos[&from];
        assert_eq!(info.ggml_dtype, s.ggml_dtype, "{name} <- {from}");
        assert_eq!(info.shape, s.shape, "{name} <- {from}");
        assert_eq!(info.offset % 32, 0, "{name}");
        assert!(raw_bytes(&dest, &out, name) == raw_bytes(source, &src, &from), "bytes of {name} differ from {from}");
        dtypes.insert(format!("{:?}", info.ggml_dtype));
    }
    eprintln!("{}: {} tensors compared, types {dtypes:?}", source.display(), out.tensor_infos.len());
    // Every other key unchanged; the provenance keys added.
    for (k, v) in &src.metadata {
        if *k != count_key {
            assert_eq!(format!("{v:?}"), format!("{:?}", out.metadata[k]), "metadata `{k}`");
        }
    }
    let got: Vec<u64> = out.metadata[REMOVED_BLOCKS_KEY].to_vec().unwrap().iter().map(|v| v.to_u64().unwrap()).collect();
    assert_eq!(got, removed.iter().map(|&i| i as u64).collect::<Vec<_>>());
    assert_eq!(meta_u64(&out, ORIGINAL_BLOCK_COUNT_KEY) as usize, l);
    assert_eq!(out.metadata.len(), src.metadata.len() + 3);

    // evop loads it; its logits equal the masked source model's.
    let text = "The quick brown fox jumps over the lazy dog. Depth pruning removes whole decoder blocks from a language model, \
                and the pruned model should still write fluent text about foxes and dogs.";
    let model = load(source, &LoadOptions::default()).unwrap();
    let mut ids = encode(model.tokenizer().unwrap(), text).unwrap();
    ids.truncate(32);
    assert_eq!(ids.len(), 32);
    let input = Tensor::new(ids.as_slice(), &model.lm.info().device).unwrap().unsqueeze(0).unwrap();
    let expected = forward_masked(model.lm.as_ref(), &input, &mask).unwrap();
    drop(model);
    let pruned = load(&dest, &LoadOptions::default()).unwrap();
    assert_eq!(pruned.lm.num_blocks(), l - removed.len());
    assert_eq!(encode(pruned.tokenizer().unwrap(), text).unwrap()[..32], ids[..]);
    let got = forward(pruned.lm.as_ref(), &input).unwrap();
    assert_eq!(got.dims(), expected.dims());
    let diff = (got - &expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("{}: max |logit difference| {diff:e}", source.display());
    assert!(diff <= LOGIT_TOL, "max |logit difference| {diff}");
}

#[test]
fn smollm2_q4_1_pruned_gguf_copies_bytes_and_matches_masked_logits() {
    let path = evop_assets::AssetStore::from_env().smollm2_gguf().expect("fetch SmolLM2-135M");
    check_real_model(&path, &[3, 17, 29]);
}

#[test]
fn qwen2_k_quants_pruned_gguf_copies_bytes_and_matches_masked_logits() {
    let path = evop_assets::AssetStore::from_env().model("qwen2.5-coder-0.5b").expect("fetch Qwen2.5-Coder-0.5B");
    check_real_model(&path, &[0, 10, 23]);
}

/// A metadata value of the hand-made file.
enum V {
    U32(u32),
    Str(&'static str),
    ArrU32(Vec<u32>),
    ArrStr(Vec<&'static str>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF file of `version` with the data section and each tensor aligned to `alignment`.
fn gguf_bytes(version: u32, alignment: usize, kvs: &[(&str, V)], tensors: &[(String, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let mut h = b"GGUF".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut h, k);
        match v {
            V::U32(x) => {
                h.extend_from_slice(&4u32.to_le_bytes());
                h.extend_from_slice(&x.to_le_bytes());
            }
            V::Str(s) => {
                h.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut h, s);
            }
            V::ArrU32(xs) => {
                h.extend_from_slice(&9u32.to_le_bytes());
                h.extend_from_slice(&4u32.to_le_bytes());
                h.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|x| h.extend_from_slice(&x.to_le_bytes()));
            }
            V::ArrStr(xs) => {
                h.extend_from_slice(&9u32.to_le_bytes());
                h.extend_from_slice(&8u32.to_le_bytes());
                h.extend_from_slice(&(xs.len() as u64).to_le_bytes());
                xs.iter().for_each(|s| put_str(&mut h, s));
            }
        }
    }
    let mut offset = 0usize;
    let mut data = Vec::new();
    for (name, dims, dtype, bytes) in tensors {
        put_str(&mut h, name);
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| h.extend_from_slice(&d.to_le_bytes()));
        h.extend_from_slice(&dtype.to_le_bytes());
        h.extend_from_slice(&(offset as u64).to_le_bytes());
        data.extend_from_slice(bytes);
        data.resize(data.len().div_ceil(alignment) * alignment, 0);
        offset = data.len();
    }
    h.resize(h.len().div_ceil(alignment) * alignment, 0);
    h.extend_from_slice(&data);
    h
}

/// A 4-block `llama` GGUF v2 with a 64-byte alignment, per-block arrays and Q8_0 / F32 tensors
/// whose bytes identify their block.
fn small_gguf(dir: &Path) -> std::path::PathBuf {
    let kvs = vec![
        ("general.architecture", V::Str("llama")),
        ("general.alignment", V::U32(64)),
        ("general.tags", V::ArrStr(vec!["a", "b", "c", "d"])),
        ("llama.block_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::ArrU32(vec![10, 11, 12, 13])),
        ("llama.feed_forward_length", V::ArrU32(vec![20, 21, 22, 23])),
        ("llama.rope.dimension_sections", V::ArrU32(vec![1, 2, 3])),
        ("llama.attention.head_count", V::U32(2)),
        (REMOVED_BLOCKS_KEY, V::ArrU32(vec![7])),
        ("tokenizer.ggml.tokens", V::ArrStr(vec!["<s>", "x", "y", "z"])),
    ];
    let f32s = |n: usize, base: f32| (0..n).flat_map(|i| (base + i as f32).to_le_bytes()).collect::<Vec<u8>>();
    let q8 = |block: u8| (0..34u8).map(|i| i.wrapping_mul(7).wrapping_add(block * 31)).collect::<Vec<u8>>();
    let mut tensors = vec![("token_embd.weight".to_string(), vec![4u64, 3], 0u32, f32s(12, 0.0))];
    for b in 0..4u8 {
        tensors.push((format!("blk.{b}.attn_norm.weight"), vec![4], 0, f32s(4, 100.0 * f32::from(b))));
        tensors.push((format!("blk.{b}.ffn_down.weight"), vec![32, 1], 8, q8(b)));
    }
    tensors.push(("output_norm.weight".to_string(), vec![4], 0, f32s(4, -1.0)));
    let path = dir.join("small.gguf");
    std::fs::write(&path, gguf_bytes(2, 64, &kvs, &tensors)).unwrap();
    path
}

fn u32s(v: &Value) -> Vec<u32> {
    v.to_vec().unwrap().iter().map(|x| x.to_u32().unwrap()).collect()
}

#[test]
fn per_block_arrays_filtered_alignment_kept_v3_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let source = small_gguf(dir.path());
    let src = open(&source);
    let dest = dir.path().join("out").join("pruned.gguf");
    let mask = BlockMask::from_removed(4, &[1, 2]).unwrap();
    write_pruned_gguf(&source, &mask, &dest).unwrap();

    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3, "written as GGUF v3");
    let out = open(&dest);
    assert_eq!(out.tensor_data_offset % 64, 0);
    assert_eq!(out.metadata["llama.block_count"].to_u32().unwrap(), 2);
    assert_eq!(u32s(&out.metadata["llama.attention.head_count_kv"]), [10, 13]);
    assert_eq!(u32s(&out.metadata["llama.feed_forward_length"]), [20, 23]);
    assert_eq!(u32s(&out.metadata["llama.rope.dimension_sections"]), [1, 2, 3], "not of block-count length");
    assert_eq!(out.metadata["general.tags"].to_vec().unwrap().len(), 4, "not an `llama.` key");
    assert_eq!(out.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().len(), 4, "not an `llama.` key");
    assert_eq!(out.metadata["general.alignment"].to_u32().unwrap(), 64);
    assert_eq!(u32s(&out.metadata[REMOVED_BLOCKS_KEY]), [1, 2], "the source's provenance is replaced");
    assert_eq!(out.metadata[ORIGINAL_BLOCK_COUNT_KEY].to_u32().unwrap(), 4);
    assert_eq!(out.metadata[SOURCE_KEY].to_string().unwrap(), "small.gguf");
    // Keys keep the source's order, the provenance keys come last.
    let pos = |k: &str| bytes.windows(k.len()).position(|w| w == k.as_bytes()).unwrap();
    let order = ["general.architecture", "general.alignment", "general.tags", "llama.block_count", "llama.attention.head_count_kv", "tokenizer.ggml.tokens", ORIGINAL_BLOCK_COUNT_KEY];
    assert!(order.windows(2).all(|w| pos(w[0]) < pos(w[1])), "key order");

    let renamed: HashMap<&str, &str> = [
        ("token_embd.weight", "token_embd.weight"),
        ("blk.0.attn_norm.weight", "blk.0.attn_norm.weight"),
        ("blk.0.ffn_down.weight", "blk.0.ffn_down.weight"),
        ("blk.1.attn_norm.weight", "blk.3.attn_norm.weight"),
        ("blk.1.ffn_down.weight", "blk.3.ffn_down.weight"),
        ("output_norm.weight", "output_norm.weight"),
    ]
    .into();
    assert_eq!(out.tensor_infos.len(), renamed.len());
    let mut offsets: Vec<u64> = Vec::new();
    for (new, old) in &renamed {
        let info = &out.tensor_infos[*new];
        assert_eq!(info.ggml_dtype, src.tensor_infos[*old].ggml_dtype);
        assert_eq!(info.shape, src.tensor_infos[*old].shape);
        assert_eq!(info.offset % 64, 0, "{new}");
        assert_eq!(raw_bytes(&dest, &out, new), raw_bytes(&source, &src, old), "{new} <- {old}");
        offsets.push(info.offset);
    }
    offsets.sort();
    assert_eq!(offsets, [0, 64, 128, 192, 256, 320], "contiguous, each tensor padded to 64 bytes");
    assert_eq!(bytes.len() as u64, out.tensor_data_offset + 384);
    assert_eq!(out.tensor_infos["blk.1.attn_norm.weight"].offset, 192, "directory order kept");

    // The usual mode (as File::create under this process's umask), and no temporary file left.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let reference = dir.path().join("out").join("reference");
        std::fs::File::create(&reference).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), mode(&reference));
        std::fs::remove_file(&reference).unwrap();
    }
    let names: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["pruned.gguf"]);
}

#[test]
fn refuses_to_overwrite_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = small_gguf(dir.path());
    let dest = dir.path().join("taken.gguf");
    std::fs::write(&dest, "keep me").unwrap();
    let mask = BlockMask::from_removed(4, &[1]).unwrap();
    let err = write_pruned_gguf(&source, &mask, &dest).unwrap_err().to_string();
    assert!(err.contains(&dest.display().to_string()) && err.contains("overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "keep me");
    // The source itself is never a valid destination either.
    assert!(write_pruned_gguf(&source, &mask, &source).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");
}

#[test]
fn mask_of_the_wrong_length_or_removing_everything_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let source = small_gguf(dir.path());
    let dest = dir.path().join("pruned.gguf");
    let err = write_pruned_gguf(&source, &BlockMask::from_removed(5, &[1]).unwrap(), &dest).unwrap_err().to_string();
    assert!(err.contains("small.gguf") && err.contains("5 entries") && err.contains("llama.block_count"), "{err}");
    let err = write_pruned_gguf(&source, &BlockMask::from_removed(4, &[0, 1, 2, 3]).unwrap(), &dest).unwrap_err().to_string();
    assert!(err.contains("removes all 4 blocks"), "{err}");
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
}

#[test]
fn bad_tensor_names_are_errors_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = vec![("general.architecture", V::Str("llama")), ("llama.block_count", V::U32(2))];
    let t = |name: &str| (name.to_string(), vec![4u64], 0u32, vec![0u8; 16]);
    for (bad, want) in [("blk.x.attn_norm.weight", "is not a number"), ("blk.2.attn_norm.weight", "out of range")] {
        let source = dir.path().join("bad.gguf");
        std::fs::write(&source, gguf_bytes(3, 32, &kvs, &[t("blk.0.attn_norm.weight"), t(bad)])).unwrap();
        let err = write_pruned_gguf(&source, &BlockMask::from_removed(2, &[0]).unwrap(), &dir.path().join("o.gguf")).unwrap_err().to_string();
        assert!(err.contains(bad) && err.contains(want) && err.contains("bad.gguf"), "{err}");
        std::fs::remove_file(&source).unwrap();
    }
}

#[test]
fn truncated_tensor_data_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let source = small_gguf(dir.path());
    let data_offset = open(&source).tensor_data_offset;
    // Cut inside `output_norm.weight`, the last tensor (data offset 9 x 64, 16 bytes).
    std::fs::OpenOptions::new().write(true).open(&source).unwrap().set_len(data_offset + 9 * 64 + 10).unwrap();
    let dest = dir.path().join("pruned.gguf");
    let err = write_pruned_gguf(&source, &BlockMask::from_removed(4, &[1]).unwrap(), &dest).unwrap_err().to_string();
    assert!(err.contains("output_norm.weight") && err.contains("past the end") && err.contains("small.gguf"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing written");
}
