//! The guard on the real SmolLM2-135M (fetched into the asset cache), mask [13..18]: a patch
//! fitted on nonsense (uniformly random token ids) makes held-back Wikipedia windows worse and is
//! refused; a patch fitted on Wikipedia windows lowers the loss of other Wikipedia windows and is
//! kept. In both cases the decision agrees with the reported guard losses.
use evop_heal::{HealData, Healer, LinearPatch, RunDecision};
use evop_model::{encode, load, BlockMask, LoadOptions, LoadedModel};
use rand::{Rng, SeedableRng};

fn model_and_text() -> (LoadedModel, Vec<Vec<u32>>) {
    let store = evop_assets::AssetStore::from_env();
    let model = load(&store.smollm2_gguf().expect("fetch SmolLM2-135M"), &LoadOptions::default()).unwrap();
    let corpus = evop_data::read_wikipedia_leads(&store.wikipedia_leads().expect("fetch the Wikipedia leads")).unwrap();
    let pool = evop_data::SplitRule::default().split(&corpus).unwrap().calibration;
    let text = pool.documents.iter().take(400).map(|d| d.text.as_str()).collect::<Vec<_>>().join("\n\n");
    let ids = encode(model.tokenizer().unwrap(), &text).unwrap();
    let windows = evop_model::perplexity::cut_windows(&ids, 64);
    (model, windows)
}

fn mask(model: &LoadedModel) -> BlockMask {
    BlockMask::from_removed(model.lm.num_blocks(), &[13, 14, 15, 16, 17, 18]).unwrap()
}

#[test]
fn the_guard_refuses_a_patch_fitted_on_nonsense_and_keeps_one_fitted_on_text() {
    let (model, wiki) = model_and_text();
    assert!(wiki.len() >= 40, "{} windows", wiki.len());
    let guard: Vec<Vec<u32>> = wiki[32..40].to_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let vocab = model.lm.info().vocab_size as u32;
    let nonsense: Vec<Vec<u32>> = (0..16).map(|_| (0..64).map(|_| rng.random_range(0..vocab)).collect()).collect();
    let healer = LinearPatch { ridge: 1e-4, ..Default::default() };

    let bad = healer.heal(&model, &mask(&model), &HealData { fit: nonsense, guard: guard.clone() }).unwrap();
    let run = &bad.runs[0];
    let (before, after) = (run.guard_nll_before.unwrap(), run.guard_nll_after.unwrap());
    eprintln!("fitted on random tokens: guard NLL {before:.4} -> {after:.4}");
    assert!(after > before, "a patch fitted on random tokens should hurt text: {before} -> {after}");
    assert_eq!(run.decision, RunDecision::RefusedByGuard);
    assert!(bad.replacements.is_empty(), "a refused patch is not applied");

    let good = healer.heal(&model, &mask(&model), &HealData { fit: wiki[..32].to_vec(), guard }).unwrap();
    let run = &good.runs[0];
    let (before, after) = (run.guard_nll_before.unwrap(), run.guard_nll_after.unwrap());
    eprintln!("fitted on Wikipedia: guard NLL {before:.4} -> {after:.4}");
    assert!(after < before, "{before} -> {after}");
    assert_eq!(run.decision, RunDecision::Patched);
    assert_eq!(good.replacements.len(), 1);
    assert!(good.replacements.contains_key("model.layers.12.mlp.down_proj.weight"));
}
