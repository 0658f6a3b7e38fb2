//! The scorer on the real SmolLM2-135M-Instruct GGUF and the committed BIG-bench excerpts
//! (`tests/fixtures/`, Apache-2.0, see its README): per-option log-likelihoods equal an independent
//! computation from the model's full logits (one unpadded `forward_masked` per option, log-softmax
//! summed by hand in f64), the prediction is their argmax, and batching, masks and saved models
//! leave the scores unchanged.
use evop_eval::{
    encode_pair, evaluate_prepared, load_bigbench, prepare_task, score_prepared, BigBenchFormat, McItem, McTask,
    PreparedTask, Request, TokenCache,
};
use evop_model::{encode, forward_masked, load, BlockLm, BlockMask, LoadOptions, LoadedModel, Tensor};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let gguf = evop_assets::AssetStore::from_env().smollm2_gguf().expect("fetch SmolLM2");
        load(&gguf, &LoadOptions::default()).expect("load SmolLM2")
    })
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn prepared(file: &str) -> PreparedTask {
    let m = model();
    let task = load_bigbench(&fixture(file), file, BigBenchFormat::Auto).unwrap();
    prepare_task(&task, m.tokenizer().unwrap(), &mut TokenCache::new(), m.lm.info().max_positions).unwrap()
}

/// Independent reference: full logits of the unpadded sequence, log-softmax in f64 by hand.
fn reference_loglik(lm: &dyn BlockLm, r: &Request, mask: &BlockMask) -> f64 {
    let input = &r.tokens[..r.tokens.len() - 1];
    let ids = Tensor::from_vec(input.to_vec(), (1, input.len()), &lm.info().device).unwrap();
    let logits: Vec<Vec<f32>> = forward_masked(lm, &ids, mask).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    let mut sum = 0f64;
    for p in input.len() + 1 - r.cont_len..=input.len() {
        let row = &logits[p - 1];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        sum += row[r.tokens[p] as usize] as f64 - lse;
    }
    sum
}

fn check_against_reference(file: &str, mask: &BlockMask, batch_size: usize) {
    let m = model();
    let lm = m.lm.as_ref();
    let p = prepared(file);
    let scores = score_prepared(lm, &p, mask, batch_size).unwrap();
    assert_eq!(scores.len(), p.task.len());
    let mut max_diff = 0f64;
    for r in &p.requests {
        let got = scores[r.item].loglik[r.choice];
        let want = reference_loglik(lm, r, mask);
        max_diff = max_diff.max((got - want).abs());
        assert!(got < 0.0 && got.is_finite());
    }
    eprintln!("{file}: {} requests, max abs difference {max_diff:.2e}", p.requests.len());
    assert!(max_diff < 5e-4, "{file}: max |scorer - reference| = {max_diff}");
    for s in &scores {
        let best = s.loglik.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(s.loglik[s.pred], best, "{file} item {}: pred is not the argmax", s.id);
        let normed: Vec<f64> = s.loglik.iter().zip(&s.norm_chars).map(|(l, &c)| l / c as f64).collect();
        let best_norm = normed.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(normed[s.pred_norm], best_norm, "{file} item {}: pred_norm is not the argmax", s.id);
    }
}

#[test]
fn science_logliks_equal_full_logits_dense() {
    check_against_reference("science.json", &BlockMask::dense(30), 8);
}

#[test]
fn winogrande_logliks_equal_full_logits_pruned() {
    check_against_reference("winogrande.json", &BlockMask::from_removed(30, &[3, 17, 18, 25]).unwrap(), 5);
}

#[test]
fn step_inference_logliks_equal_full_logits_dense() {
    check_against_reference("step_inference.json", &BlockMask::dense(30), 16);
}

#[test]
fn batch_size_does_not_change_scores() {
    let lm = model().lm.as_ref();
    let p = prepared("science.json");
    let mask = BlockMask::dense(30);
    let one = score_prepared(lm, &p, &mask, 1).unwrap();
    let many = score_prepared(lm, &p, &mask, 13).unwrap();
    for (a, b) in one.iter().zip(&many) {
        for (x, y) in a.loglik.iter().zip(&b.loglik) {
            assert!((x - y).abs() < 1e-3, "item {}: {x} vs {y}", a.id);
        }
    }
}

#[test]
fn pair_encoding_follows_lm_evaluation_harness() {
    let tok = model().tokenizer().unwrap();
    let mut cache = TokenCache::new();
    // The continuation's tokens are those of the whole text after the context's tokens.
    let (ctx, cont) = encode_pair(tok, &mut cache, "The capital of France is", " Paris").unwrap();
    let whole = encode(tok, "The capital of France is Paris").unwrap();
    assert_eq!([ctx.clone(), cont.clone()].concat(), whole);
    assert_eq!(cont, encode(tok, " Paris").unwrap());
    // Trailing context whitespace moves to the continuation.
    let (ctx2, cont2) = encode_pair(tok, &mut cache, "The capital of France is ", "Paris").unwrap();
    assert_eq!((ctx2, cont2), (ctx, cont));
    assert!(cache.hits() >= 2, "repeated texts are served from the cache");
}

#[test]
fn length_normalisation_on_a_hand_made_item() {
    // A long, fluent option against a short one: normalised accuracy divides by 1 vs 33 characters.
    let m = model();
    let item = McItem::shared(0, "The capital of France is", &["x", "Paris, a large city on the Seine."], vec![1]);
    let task = McTask::new("hand", vec![item]).unwrap();
    let p = prepare_task(&task, m.tokenizer().unwrap(), &mut TokenCache::new(), 8192).unwrap();
    let s = &score_prepared(m.lm.as_ref(), &p, &BlockMask::dense(30), 4).unwrap()[0];
    assert_eq!(s.norm_chars, vec![1, 33]);
    let normed = [s.loglik[0] / 1.0, s.loglik[1] / 33.0];
    let expect_norm = if normed[1] > normed[0] { 1 } else { 0 };
    assert_eq!(s.pred_norm, expect_norm);
    assert_eq!(s.pred, if s.loglik[1] > s.loglik[0] { 1 } else { 0 });
    // The long option has the lower total but the higher per-character log-likelihood.
    assert!(s.loglik[1] < s.loglik[0], "{:?}", s.loglik);
    assert_eq!((s.pred, s.pred_norm), (0, 1));
}

#[test]
fn saved_pruned_model_scores_like_the_masked_model() {
    let m = model();
    let mask = BlockMask::from_removed(30, &[5, 20, 21]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    evop_model::save_pruned(m, &mask, &out).unwrap();
    let reloaded = load(&out, &LoadOptions::default()).unwrap();
    let mut p = prepared("winogrande.json");
    p.task.items.truncate(4);
    p.requests.retain(|r| r.item < 4);
    let a = evaluate_prepared(m.lm.as_ref(), &p, &mask, 8).unwrap();
    let dense = BlockMask::dense(reloaded.lm.num_blocks());
    let b = evaluate_prepared(reloaded.lm.as_ref(), &p, &dense, 8).unwrap();
    assert_eq!((a.acc, a.acc_norm), (b.acc, b.acc_norm));
    let sa = score_prepared(m.lm.as_ref(), &p, &mask, 8).unwrap();
    let sb = score_prepared(reloaded.lm.as_ref(), &p, &dense, 8).unwrap();
    for (x, y) in sa.iter().flat_map(|s| &s.loglik).zip(sb.iter().flat_map(|s| &s.loglik)) {
        assert!((x - y).abs() < 1e-3, "{x} vs {y}");
    }
    assert_eq!(a.removed_blocks, vec![5, 20, 21]);
}

#[test]
fn mask_of_the_wrong_length_is_an_error() {
    let p = prepared("science.json");
    let e = score_prepared(model().lm.as_ref(), &p, &BlockMask::dense(12), 4).unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
}

#[test]
fn long_requests_lose_context_from_the_left() {
    let m = model();
    let task = load_bigbench(&fixture("science.json"), "science", BigBenchFormat::Auto).unwrap();
    let mut cache = TokenCache::new();
    let full = prepare_task(&task, m.tokenizer().unwrap(), &mut cache, 8192).unwrap();
    let short = prepare_task(&task, m.tokenizer().unwrap(), &mut cache, 12).unwrap();
    for (a, b) in full.requests.iter().zip(&short.requests) {
        assert!(b.tokens.len() <= 13 && b.cont_len == a.cont_len);
        assert!(a.tokens.ends_with(&b.tokens));
    }
    let mask = BlockMask::dense(30);
    let scores = score_prepared(m.lm.as_ref(), &short, &mask, 8).unwrap();
    let r = &short.requests[5];
    assert!((scores[r.item].loglik[r.choice] - reference_loglik(m.lm.as_ref(), r, &mask)).abs() < 2e-3);
    let e = prepare_task(&task, m.tokenizer().unwrap(), &mut cache, 1).unwrap_err();
    assert!(e.to_string().contains("max_len"), "{e}");
}
