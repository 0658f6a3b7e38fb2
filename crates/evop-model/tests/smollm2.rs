//! Integration tests on the real SmolLM2-135M-Instruct GGUF (fetched into the asset cache).
//! Reference figures come from ASSETS.md: an independent NumPy implementation and HF transformers.
use evop_model::perplexity::{cut_windows, join_texts, perplexity};
use evop_model::{encode, forward, forward_masked, hidden_states, load, BlockLm, BlockMask, LoadOptions, Tensor};
use std::sync::OnceLock;

struct Fixture {
    model: evop_model::LoadedModel,
    text: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let store = evop_assets::AssetStore::from_env();
        let gguf = store.smollm2_gguf().expect("fetch SmolLM2");
        let wiki = store.wikipedia_leads().expect("fetch Wikipedia leads");
        // On `EVOP_TEST_DEVICE` (default cpu), so a GPU build runs the same checks.
        let device = evop_model::device::test_device().expect("EVOP_TEST_DEVICE");
        let model = load(&gguf, &LoadOptions { device, ..LoadOptions::default() }).expect("load SmolLM2");
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(wiki).unwrap()).unwrap();
        let extracts: Vec<String> = json
            .as_object()
            .unwrap()
            .values()
            .map(|v| v["extract"].as_str().unwrap().to_string())
            .collect();
        Fixture { model, text: join_texts(&extracts) }
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn tokenizer_matches_reference_ids() {
    let f = fixture();
    let ids = encode(f.model.tokenizer().unwrap(), "Hello world, this is a test.").unwrap();
    assert_eq!(ids, vec![19556, 905, 28, 451, 314, 253, 1028, 30]);
    // Digits are split individually (pre = smollm): ".\n\n2001" gives one "\n\n" token.
    let ids = encode(f.model.tokenizer().unwrap(), ".\n\n2001").unwrap();
    assert_eq!(ids.len(), 6, "{ids:?}");
}

#[test]
fn tokenizer_round_trips_the_whole_wikipedia_text() {
    let f = fixture();
    let tok = f.model.tokenizer().unwrap();
    let ids = encode(tok, &f.text).unwrap();
    assert_eq!(ids.len(), 1_068_340);
    let decoded = tok.decode(&ids, false).unwrap();
    assert!(decoded == f.text, "decoded text differs from the original");
}

#[test]
fn dense_perplexity_matches_reference_within_one_percent() {
    let f = fixture();
    let head: String = f.text.chars().take(4000).collect();
    let ids = encode(f.model.tokenizer().unwrap(), &head).unwrap();
    let windows = cut_windows(&ids[..512], 512);
    let ppl = perplexity(f.model.lm.as_ref(), &windows, &BlockMask::dense(30), 1).unwrap();
    assert_eq!(ppl.tokens, 511);
    let rel = (ppl.perplexity - 14.125).abs() / 14.125;
    assert!(rel < 0.01, "perplexity {} is {:.2}% from 14.125", ppl.perplexity, rel * 100.0);
}

#[test]
fn masks_equal_chaining_blocks_by_hand() {
    let f = fixture();
    let lm: &dyn BlockLm = f.model.lm.as_ref();
    assert_eq!(lm.num_blocks(), 30);
    let ids = encode(f.model.tokenizer().unwrap(), "The Moon is Earth's only natural satellite. It orbits").unwrap();
    let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &lm.info().device).unwrap();
    let dense = forward(lm, &ids).unwrap();
    let all_keep = forward_masked(lm, &ids, &BlockMask::dense(30)).unwrap();
    assert_eq!(max_abs_diff(&dense, &all_keep), 0.0);

    // Skipping blocks 3 and 17 equals running the other blocks by hand from the embeddings.
    let mask = BlockMask::from_removed(30, &[3, 17]).unwrap();
    let masked = forward_masked(lm, &ids, &mask).unwrap();
    let ctx = evop_model::AttnContext::new(lm.info(), ids.dim(1).unwrap(), 0).unwrap();
    let mut h = lm.embed(&ids, 0).unwrap();
    for i in (0..30).filter(|&i| i != 3 && i != 17) {
        h = lm.block(i, &h, &ctx, None).unwrap();
    }
    assert_eq!(max_abs_diff(&masked, &lm.head(&h).unwrap()), 0.0);
    assert!(max_abs_diff(&masked, &dense) > 1e-2, "skipping blocks must change the logits");

    // Boundary states: the last one is the dense output before the head.
    let states = hidden_states(lm, &ids).unwrap();
    assert_eq!(states.len(), 31);
    assert!(max_abs_diff(&lm.head(&states[30]).unwrap(), &dense) < 1e-5);
}

#[test]
fn mask_of_wrong_length_is_an_error() {
    let f = fixture();
    let ids = Tensor::from_vec(vec![1u32, 2, 3], (1, 3), &f.model.lm.info().device).unwrap();
    let err = forward_masked(f.model.lm.as_ref(), &ids, &BlockMask::dense(29)).unwrap_err();
    assert!(err.to_string().contains("29 entries"), "{err}");
}

#[test]
fn saved_pruned_model_reloads_with_identical_logits() {
    let f = fixture();
    let lm: &dyn BlockLm = f.model.lm.as_ref();
    let mask = BlockMask::from_removed(30, &[5, 20, 21]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    evop_model::save_pruned(&f.model, &mask, &out).unwrap();
    let reloaded = load(&out, &LoadOptions { device: lm.info().device.clone(), ..LoadOptions::default() }).unwrap();
    assert_eq!(reloaded.lm.num_blocks(), 27);
    let text = "Paris is the capital of France.";
    let a = encode(f.model.tokenizer().unwrap(), text).unwrap();
    assert_eq!(encode(reloaded.tokenizer().unwrap(), text).unwrap(), a, "saved tokenizer differs");
    let ids = Tensor::from_vec(a.clone(), (1, a.len()), &lm.info().device).unwrap();
    let expected = forward_masked(lm, &ids, &mask).unwrap();
    let got = forward(reloaded.lm.as_ref(), &ids).unwrap();
    assert!(max_abs_diff(&expected, &got) < 1e-5);
    // A second save to the same, now non-empty, directory is refused.
    assert!(evop_model::save_pruned(&f.model, &mask, &out).is_err());
}
