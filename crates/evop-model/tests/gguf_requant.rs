//! `evop_model::io::gguf_write::write_pruned_gguf_patched`: pruned GGUF files with tensors replaced
//! by new values re-quantised to their original ggml type, on the real SmolLM2-135M (Q4_1, Q8_0,
//! F32) and, when it is in the asset cache, Qwen2.5-Coder-0.5B (Q4_K, Q6_K, Q5_0, Q8_0, F32).
//!
//! - A perturbed `ffn_down` (W' = 0.9 W + seeded uniform noise) of a kept block: its bytes in the
//!   written file are exactly `QTensor::quantize(W', type)`'s, its dequantised values are within
//!   about one quantisation step of W' ([`patch_bound`]), every other tensor is byte-identical to
//!   the source tensor it was renumbered from, and `general.evop.patched_tensors` names it.
//! - Re-quantising the dequantised original weights (every tensor of SmolLM2, the llama Q/K weights
//!   included, given in Hugging Face row order; a subset of Qwen's) gives back nearly the source:
//!   the per-type error bounds are measured and asserted below ([`ROUND_TRIP_BOUNDS`]).
//! - Bad input is refused with errors naming the file and the tensor, before anything is written;
//!   an existing destination is never overwritten.
//!
//! Error unit ([`error_in_steps`]): for each group of consecutive elements (a block of 32 of the
//! legacy formats, a super-block of 256 of the K-quants), the largest absolute error divided by
//! `(max - min) / levels`, the step of a uniform grid of `levels` steps spanning the group's
//! reference values; the largest over all groups. Round-to-nearest on such a grid errs by at most
//! 0.5; ggml's formats store scales as f16, symmetric ones may clamp at one end, and the K-quants
//! quantise their sub-block scales and mins, so they may err more.
//!
//! SmolLM2 comes from the asset cache (fetched if missing, like `tests/gguf_write.rs`); Qwen is
//! used only when already cached (`cargo run --release -p evop-cli -- assets fetch
//! qwen2.5-coder-0.5b`), else its cases print a note and pass.
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use evop_model::gguf::GgufFile;
use evop_model::io::gguf_write::{write_pruned_gguf_patched, PATCHED_TENSORS_KEY};
use evop_model::{BlockMask, DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

fn smollm2() -> PathBuf {
    evop_assets::AssetStore::from_env().smollm2_gguf().expect("fetch SmolLM2-135M")
}

/// Qwen2.5-Coder-0.5B's GGUF if it is in the asset cache (never downloaded here).
fn qwen_if_cached() -> Option<PathBuf> {
    let store = evop_assets::AssetStore::from_env();
    let spec = evop_assets::QWEN25_CODER_05B;
    if store.root().join(spec.dir).join(spec.name).is_file() {
        Some(store.model("qwen2.5-coder-0.5b").expect("check the cached Qwen2.5-Coder-0.5B"))
    } else {
        eprintln!("note: Qwen2.5-Coder-0.5B is not in the asset cache; its case is skipped");
        None
    }
}

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

/// Tensor `name` dequantised to f32, in the file's layout (candle's shape: GGUF dims reversed).
fn dequantised(path: &Path, content: &Content, name: &str) -> Tensor {
    let q = content.tensor(&mut std::fs::File::open(path).unwrap(), name, &Device::Cpu).unwrap();
    q.dequantize(&Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
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

fn block_count(content: &Content) -> usize {
    let arch = content.metadata["general.architecture"].to_string().unwrap().clone();
    content.metadata[&format!("{arch}.block_count")].to_u64().unwrap() as usize
}

/// `(levels, group)` of a quantised type for [`error_in_steps`]; `None` for float types.
fn grid(dtype: GgmlDType) -> Option<(f32, usize)> {
    Some(match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => (15.0, 32),
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => (31.0, 32),
        GgmlDType::Q8_0 | GgmlDType::Q8_1 => (254.0, 32),
        // K-quants: measured against the super-block of 256, whose quantised sub-block scales and
        // mins are what limits them (a sub-block of small range next to a large one errs by many
        // of its own steps).
        GgmlDType::Q2K => (3.0, 256),
        GgmlDType::Q3K => (7.0, 256),
        GgmlDType::Q4K => (15.0, 256),
        GgmlDType::Q5K => (31.0, 256),
        GgmlDType::Q6K => (63.0, 256),
        GgmlDType::Q8K => (254.0, 256),
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => return None,
    })
}

/// The largest error of `got` against `reference` in quantisation steps (see the module
/// documentation). Groups whose reference values are all equal are measured against 1e-3 of
/// their magnitude instead.
fn error_in_steps(reference: &[f32], got: &[f32], levels: f32, group: usize) -> f32 {
    assert_eq!(reference.len(), got.len());
    let mut worst = 0f32;
    for (r, g) in reference.chunks(group).zip(got.chunks(group)) {
        let (lo, hi) = r.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let err = r.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let step = if hi > lo { (hi - lo) / levels } else { 1e-3 * hi.abs().max(1e-6) };
        worst = worst.max(err / step);
    }
    worst
}

/// `||got - reference|| / ||reference||`.
fn relative_rms(reference: &[f32], got: &[f32]) -> f64 {
    let num: f64 = reference.iter().zip(got).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = reference.iter().map(|a| f64::from(*a).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Seeded uniform noise in `[-amplitude, amplitude)` (a 64-bit LCG; deterministic everywhere).
fn noise(n: usize, amplitude: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
        })
        .collect()
}

/// W' = 0.9 W + uniform noise of a tenth of W's RMS (seeded).
fn perturbed(w: &Tensor, seed: u64) -> Tensor {
    let v = values(w);
    let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let n = noise(v.len(), 0.1 * rms, seed);
    let out: Vec<f32> = v.iter().zip(&n).map(|(x, e)| 0.9 * x + e).collect();
    Tensor::from_vec(out, w.shape(), &Device::Cpu).unwrap()
}

/// The bound on [`error_in_steps`] of a patched tensor against the value it was given (per type).
/// Measured (2026-12-07, candle 0.11.1) on the perturbed `ffn_down`s: Q4_1 0.507 (SmolLM2 block
/// 12), Q4_K 0.827 and Q6_K 0.839 super-block steps (Qwen blocks 2 and 0).
fn patch_bound(dtype: GgmlDType) -> f32 {
    match dtype {
        // Round to nearest on the block's own grid, plus f16 scale rounding.
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => 0.55,
        // Symmetric grids: the far end of a block may clamp by up to one step.
        GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => 1.05,
        // Sub-block scales and mins quantised to 6 (Q4_K, Q5_K) or 8 bits (Q6_K) against the
        // super-block's f16 scales.
        _ => 1.0,
    }
}

/// Patches one kept block's `ffn_down` of `source` with a perturbation of it, given as `dtype`,
/// and checks the written file (see the module documentation).
fn check_patched_ffn_down(source: &Path, removed: &[usize], block: usize, dtype: DType) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("patched.gguf");
    let src = open(source);
    let l = block_count(&src);
    let mask = BlockMask::from_removed(l, removed).unwrap();
    let kept: Vec<usize> = mask.kept().collect();
    let new_block = kept.iter().position(|&k| k == block).expect("the patched block is kept");
    let src_name = format!("blk.{block}.ffn_down.weight");
    let new_name = format!("blk.{new_block}.ffn_down.weight");
    let qtype = src.tensor_infos[&src_name].ggml_dtype;

    // The Hugging Face down_proj is (hidden, ffn): candle's shape of the GGUF tensor.
    let w = dequantised(source, &src, &src_name);
    let w2 = perturbed(&w, 12_345 + block as u64).to_dtype(dtype).unwrap();
    let hf = format!("model.layers.{block}.mlp.down_proj.weight");
    let patched = HashMap::from([(hf, w2.clone())]);
    write_pruned_gguf_patched(source, &mask, &patched, &dest).unwrap();

    let out = open(&dest);
    let removed_tensors =
        src.tensor_infos.keys().filter(|n| removed.iter().any(|i| n.starts_with(&format!("blk.{i}.")))).count();
    assert_eq!(out.tensor_infos.len(), src.tensor_infos.len() - removed_tensors);
    let w2_f32 = w2.to_dtype(DType::F32).unwrap();
    let expected = QTensor::quantize(&w2_f32, qtype).unwrap();
    let mut types = BTreeMap::new();
    for (name, info) in &out.tensor_infos {
        let from = source_name(name, &kept);
        let s = &src.tensor_infos[&from];
        assert_eq!(info.ggml_dtype, s.ggml_dtype, "{name} <- {from}");
        assert_eq!(info.shape, s.shape, "{name} <- {from}");
        *types.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        let bytes = raw_bytes(&dest, &out, name);
        if *name == new_name {
            assert!(bytes == expected.data().unwrap().as_ref(), "{name}: bytes differ from QTensor::quantize(W')");
            assert!(bytes != raw_bytes(source, &src, &from), "{name}: the patch changed nothing");
            let got = values(&dequantised(&dest, &out, name));
            let want = values(&w2_f32);
            let (levels, group) = grid(qtype).expect("a quantised ffn_down");
            let steps = error_in_steps(&want, &got, levels, group);
            let rel = relative_rms(&want, &got);
            eprintln!(
                "{}: {name} ({qtype:?}, {} elements, given as {dtype:?}): max error {steps:.3} steps, relative RMS error {rel:.4}",
                source.display(),
                want.len()
            );
            assert!(steps <= patch_bound(qtype), "{name}: {steps} steps > {}", patch_bound(qtype));
        } else {
            assert!(bytes == raw_bytes(source, &src, &from), "bytes of {name} differ from {from}");
        }
    }
    eprintln!("{}: {} tensors compared, types {types:?}", source.display(), out.tensor_infos.len());

    // Metadata: the source's keys (block count rewritten), the 3 provenance keys and the patched list.
    let arch = src.metadata["general.architecture"].to_string().unwrap().clone();
    let count_key = format!("{arch}.block_count");
    assert_eq!(out.metadata[&count_key].to_u64().unwrap() as usize, l - removed.len());
    for (k, v) in &src.metadata {
        if *k != count_key {
            assert_eq!(format!("{v:?}"), format!("{:?}", out.metadata[k]), "metadata `{k}`");
        }
    }
    assert_eq!(out.metadata.len(), src.metadata.len() + 4);
    let listed: Vec<String> =
        out.metadata[PATCHED_TENSORS_KEY].to_vec().unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect();
    assert_eq!(listed, vec![new_name]);
}

#[test]
fn smollm2_patched_ffn_down_is_requantised_and_the_rest_copied() {
    check_patched_ffn_down(&smollm2(), &[13, 14, 15, 16, 17, 18], 12, DType::F32);
}

#[test]
fn qwen2_k_quant_patched_ffn_down_is_requantised_and_the_rest_copied() {
    let Some(path) = qwen_if_cached() else { return };
    let src = open(&path);
    // One block per ffn_down type present (Q4_K_M keeps some ffn_down in Q6_K), given as f16.
    let l = block_count(&src);
    let mut seen = BTreeMap::new();
    for b in 0..l {
        let t = src.tensor_infos[&format!("blk.{b}.ffn_down.weight")].ggml_dtype;
        seen.entry(format!("{t:?}")).or_insert(b);
    }
    for (t, &b) in &seen {
        eprintln!("Qwen2.5-Coder-0.5B: patching block {b} ({t} ffn_down)");
        let removed: Vec<usize> = (0..l).filter(|&i| i != b).take(3).collect();
        check_patched_ffn_down(&path, &removed, b, DType::F16);
    }
}

/// Bounds on re-quantising dequantised source weights: (type, max error in steps, max relative
/// RMS error). Measured (2026-12-07, candle 0.11.1; printed by the round-trip tests):
/// - Q4_1, Q5_0, Q8_0 (every SmolLM2 tensor; Qwen's 23 Q5_0 and 2 Q8_0 tensors): byte-identical,
///   error 0. candle's round-to-nearest finds the same scale on a grid's own values.
/// - Q4_K (2 Qwen `ffn_down`s): 0.93 super-block steps, relative RMS 3.39e-2, 78.6% of the bytes
///   identical; Q6_K (2): 1.12 steps, 1.15e-2, 75.4%. The K-quants' scale search
///   (`quantize_row_q*_K_ref`) does not recover the scales the file was made with (llama.cpp's
///   `quantize_q*_K`), so re-quantising an unchanged K-quant tensor adds noise of about half its
///   quantisation error (Q4_K of the perturbed `ffn_down` above: relative RMS 6.5e-2).
const ROUND_TRIP_BOUNDS: [(GgmlDType, f32, f64); 5] = [
    (GgmlDType::Q4_1, 0.01, 1e-5),
    (GgmlDType::Q5_0, 0.01, 1e-5),
    (GgmlDType::Q8_0, 0.01, 1e-5),
    (GgmlDType::Q4K, 1.25, 0.045),
    (GgmlDType::Q6K, 1.5, 0.015),
];

/// Writes `source` with every tensor of `patched` (Hugging Face names, dequantised values in HF
/// layout, as evop loads them) re-quantised, no block removed, and measures each re-quantised
/// tensor against the source per ggml type; returns the worst (steps, relative RMS) per type.
fn round_trip(source: &Path, keep: impl Fn(&str) -> bool) -> BTreeMap<String, (f32, f64)> {
    let gguf = GgufFile::open(source).unwrap();
    let cfg = gguf.decoder_config().unwrap();
    let patched: HashMap<String, Tensor> =
        gguf.hf_tensors(&cfg, DType::F32, &Device::Cpu).unwrap().into_iter().filter(|(k, _)| keep(k)).collect();
    assert!(!patched.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("round-trip.gguf");
    let src = open(source);
    let mask = BlockMask::from_removed(block_count(&src), &[]).unwrap();
    write_pruned_gguf_patched(source, &mask, &patched, &dest).unwrap();

    let out = open(&dest);
    let listed: Vec<String> =
        out.metadata[PATCHED_TENSORS_KEY].to_vec().unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect();
    assert_eq!(listed.len(), patched.len());
    // (worst steps, worst relative RMS, tensors, identical bytes, bytes) per type.
    let mut per_type: BTreeMap<String, (f32, f64, usize, usize, usize)> = BTreeMap::new();
    for name in &listed {
        let info = &src.tensor_infos[name];
        let (a, b) = (raw_bytes(source, &src, name), raw_bytes(&dest, &out, name));
        assert_eq!(a.len(), b.len(), "{name}");
        // Compared in the file's layout: a wrong Q/K permutation would show as a large error.
        let want = values(&dequantised(source, &src, name));
        let got = values(&dequantised(&dest, &out, name));
        let steps = match grid(info.ggml_dtype) {
            Some((levels, group)) => error_in_steps(&want, &got, levels, group),
            None => {
                assert!(a == b, "{name}: a {:?} tensor changed", info.ggml_dtype);
                0.0
            }
        };
        let e = per_type.entry(format!("{:?}", info.ggml_dtype)).or_insert((0.0, 0.0, 0, 0, 0));
        e.0 = e.0.max(steps);
        e.1 = e.1.max(relative_rms(&want, &got));
        e.2 += 1;
        e.3 += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        e.4 += a.len();
    }
    // Unlisted tensors are untouched.
    for name in out.tensor_infos.keys().filter(|n| !listed.contains(n)) {
        assert!(raw_bytes(source, &src, name) == raw_bytes(&dest, &out, name), "{name}");
    }
    for (t, (steps, rel, n, same, total)) in &per_type {
        eprintln!(
            "{}: {t}: {n} tensors re-quantised from their dequantised values: max error {steps:.4} steps, \
             max relative RMS error {rel:.2e}, identical bytes {:.4}%",
            source.display(),
            100.0 * *same as f64 / *total as f64
        );
    }
    per_type.into_iter().map(|(t, (s, r, ..))| (t, (s, r))).collect()
}

fn assert_round_trip_bounds(measured: &BTreeMap<String, (f32, f64)>) {
    for (t, (steps, rel)) in measured {
        if t == "F32" || t == "F16" {
            continue; // byte-identical, checked in round_trip
        }
        let (_, max_steps, max_rel) = ROUND_TRIP_BOUNDS
            .iter()
            .find(|(d, ..)| format!("{d:?}") == *t)
            .unwrap_or_else(|| panic!("no bound for {t}"));
        assert!(steps <= max_steps, "{t}: {steps} steps > {max_steps}");
        assert!(rel <= max_rel, "{t}: relative RMS error {rel} > {max_rel}");
    }
}

#[test]
fn smollm2_requantising_every_dequantised_tensor_round_trips() {
    // Every tensor, llama's permuted attn_q/attn_k included (given in Hugging Face row order).
    let measured = round_trip(&smollm2(), |_| true);
    assert!(measured.contains_key("Q4_1"), "{measured:?}");
    assert_round_trip_bounds(&measured);
}

#[test]
fn qwen2_requantising_dequantised_k_quants_round_trips() {
    let Some(path) = qwen_if_cached() else { return };
    // Every tensor of four blocks (all of Q4_K_M's block types), the embedding and the final norm.
    let blocks = ["model.layers.0.", "model.layers.1.", "model.layers.12.", "model.layers.23."];
    let measured =
        round_trip(&path, |k| blocks.iter().any(|b| k.starts_with(b)) || k == "model.embed_tokens.weight" || k == "model.norm.weight");
    assert_round_trip_bounds(&measured);
}

#[test]
fn bad_patches_are_refused_before_anything_is_written() {
    let source = smollm2();
    let src = open(&source);
    let l = block_count(&src);
    let mask = BlockMask::from_removed(l, &[13, 14, 15, 16, 17, 18]).unwrap();
    let w = dequantised(&source, &src, "blk.12.ffn_down.weight");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.gguf");
    let file = source.file_name().unwrap().to_string_lossy().into_owned();

    let refuse = |name: &str, value: Tensor, wants: &[&str]| {
        let patched = HashMap::from([(name.to_string(), value)]);
        let e = write_pruned_gguf_patched(&source, &mask, &patched, &dest).unwrap_err().to_string();
        eprintln!("{name}: {e}");
        assert!(e.contains(&file) && e.contains(name), "{e}");
        for want in wants {
            assert!(e.contains(want), "`{want}` not in: {e}");
        }
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary file left");
    };
    refuse("model.layers.12.mlp.nope.weight", w.clone(), &["maps to no GGUF tensor name"]);
    refuse("model.layers.12.self_attn.q_proj.bias", w.clone(), &["`blk.12.attn_q.bias`", "not a tensor of the file"]);
    refuse("model.layers.99.mlp.down_proj.weight", w.clone(), &["`blk.99.ffn_down.weight`", "not a tensor of the file"]);
    if !src.tensor_infos.contains_key("output.weight") {
        // Tied embeddings: no output.weight.
        refuse("lm_head.weight", w.clone(), &["`output.weight`", "not a tensor of the file"]);
    }
    refuse("model.layers.14.mlp.down_proj.weight", w.clone(), &["blk.14.ffn_down.weight", "block 14", "removes"]);
    refuse("model.layers.12.mlp.down_proj.weight", w.t().unwrap(), &["blk.12.ffn_down.weight", "shape"]);
    refuse("model.layers.12.mlp.down_proj.weight", w.to_dtype(DType::U32).unwrap(), &["not a float"]);
    let mut v = values(&w);
    v[7] = f32::NAN;
    refuse("model.layers.12.mlp.down_proj.weight", Tensor::from_vec(v, w.shape(), &Device::Cpu).unwrap(), &["element 7", "finite"]);

    // A valid patch never overwrites an existing file.
    std::fs::write(&dest, b"keep me").unwrap();
    let patched = HashMap::from([("model.layers.12.mlp.down_proj.weight".to_string(), w.clone())]);
    let e = write_pruned_gguf_patched(&source, &mask, &patched, &dest).unwrap_err();
    assert!(e.to_string().contains("overwrite"), "{e}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
