//! Faithfulness on the real model: SmolLM2-135M-Instruct truncated to its first blocks, against
//! the independent HF transformers computation of `scripts/reference_baselines.py`
//! (`tests/fixtures/smollm2_reference.json`). Token ids come from evop's tokenizer
//! (`tests/fixtures/smollm2_windows.json`, checked here; written with `EVOP_WRITE_FIXTURES=1`).
use evop_baselines::*;
use evop_model::perplexity::{cut_windows, join_texts};
use evop_model::{encode, load, AttnContext, BlockLm, LayerCache, LoadOptions, ModelInfo, Tensor};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

const BLOCKS: usize = 10;
const WINDOWS: usize = 2;
const SEQLEN: usize = 64;

/// The first `info.num_blocks` blocks of a model, followed by its final norm and head.
struct Truncated {
    inner: Arc<dyn BlockLm>,
    info: ModelInfo,
}

impl BlockLm for Truncated {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn embed(&self, ids: &Tensor, offset: usize) -> evop_model::Result<Tensor> {
        self.inner.embed(ids, offset)
    }
    fn block(&self, i: usize, h: &Tensor, ctx: &AttnContext, cache: Option<&mut LayerCache>) -> evop_model::Result<Tensor> {
        self.inner.block(i, h, ctx, cache)
    }
    fn final_norm(&self, h: &Tensor) -> evop_model::Result<Tensor> {
        self.inner.final_norm(h)
    }
    fn lm_head(&self, h: &Tensor) -> evop_model::Result<Tensor> {
        self.inner.lm_head(h)
    }
}

struct Fixture {
    model: evop_model::LoadedModel,
    truncated: Arc<dyn BlockLm>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let gguf = evop_assets::AssetStore::from_env().smollm2_gguf().expect("fetch SmolLM2");
        let model = load(&gguf, &LoadOptions::default()).expect("load SmolLM2");
        let mut info = model.lm.info().clone();
        info.num_blocks = BLOCKS;
        let truncated: Arc<dyn BlockLm> = Arc::new(Truncated { inner: model.lm.clone(), info });
        Fixture { model, truncated }
    })
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join("smollm2_reference.json")).expect("run scripts/reference_baselines.py");
    serde_json::from_str(&text).unwrap()
}

fn ref_windows(r: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(r["windows"].clone()).unwrap()
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= abs + rel * b.abs()
}

/// The calibration windows: the first WINDOWS * SEQLEN tokens of the Wikipedia leads joined with
/// "\n\n", tokenized by evop.
#[test]
fn windows_are_our_tokenization() {
    let wiki = evop_assets::AssetStore::from_env().wikipedia_leads().expect("fetch Wikipedia leads");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(wiki).unwrap()).unwrap();
    let extracts: Vec<String> = json.as_object().unwrap().values().map(|v| v["extract"].as_str().unwrap().to_string()).collect();
    let head: String = join_texts(&extracts).chars().take(4000).collect();
    let ids = encode(fixture().model.tokenizer().unwrap(), &head).unwrap();
    let windows = cut_windows(&ids[..WINDOWS * SEQLEN], SEQLEN);
    let spec = serde_json::json!({ "blocks": BLOCKS, "windows": windows });
    let path = fixtures_dir().join("smollm2_windows.json");
    if std::env::var("EVOP_WRITE_FIXTURES").is_ok_and(|v| v == "1") {
        std::fs::write(&path, serde_json::to_string(&spec).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored, spec);
    assert_eq!(ref_windows(&reference()), windows, "the reference was computed on other ids: rerun the script");
}

#[test]
fn sleb_matches_transformers() {
    let r = reference();
    let n = r["sleb"]["n"].as_u64().unwrap() as usize;
    let result = Sleb::default().prune(&fixture().truncated, &ref_windows(&r), n).unwrap();
    let Trace::Sleb(trace) = &result.trace else { panic!("sleb trace") };
    let dense = r["dense_loss"].as_f64().unwrap();
    assert!(close(trace.dense_loss, dense, 1e-4, 0.0), "dense loss {} vs {dense}", trace.dense_loss);
    let steps = r["sleb"]["steps"].as_array().unwrap();
    assert_eq!(trace.steps.len(), steps.len());
    let mut worst = 0f64;
    for (ours, theirs) in trace.steps.iter().zip(steps) {
        let cands = theirs["candidates"].as_array().unwrap();
        assert_eq!(ours.candidates.len(), cands.len());
        for (c, t) in ours.candidates.iter().zip(cands) {
            let (block, loss) = (t["block"].as_u64().unwrap() as usize, t["loss"].as_f64().unwrap());
            assert_eq!(c.block, block);
            assert!(close(c.loss, loss, 1e-3, 0.0), "step {:?} block {block}: {} vs {loss}", ours.removed_before, c.loss);
            worst = worst.max((c.loss - loss).abs() / loss);
        }
        assert_eq!(ours.removed, theirs["removed"].as_u64().unwrap() as usize);
    }
    let order: Vec<usize> = serde_json::from_value(r["sleb"]["removal_order"].clone()).unwrap();
    assert_eq!(trace.removal_order, order);
    eprintln!("SLEB on SmolLM2[..{BLOCKS}]: order {order:?}, worst relative difference {worst:.2e}");
}

#[test]
fn shortgpt_matches_transformers() {
    let r = reference();
    let (scores, _) = shortgpt::block_influence(fixture().truncated.as_ref(), &ref_windows(&r), 8).unwrap();
    let theirs: Vec<f64> = serde_json::from_value(r["shortgpt_scores"].clone()).unwrap();
    assert_eq!(scores.len(), theirs.len());
    for (i, (a, b)) in scores.iter().zip(&theirs).enumerate() {
        assert!(close(*a, *b, 1e-3, 1e-5), "block {i}: {a} vs {b}");
    }
    let n = 3;
    let result = ShortGpt::default().prune(&fixture().truncated, &ref_windows(&r), n).unwrap();
    let mut order: Vec<usize> = (0..theirs.len()).collect();
    order.sort_by(|&a, &b| theirs[a].partial_cmp(&theirs[b]).unwrap());
    let mut expected = order[..n].to_vec();
    expected.sort();
    assert_eq!(result.removed(), expected);
}

#[test]
fn one_shot_and_angular_match_transformers() {
    let r = reference();
    let w = ref_windows(&r);
    let result = OneShotPpl::default().prune(&fixture().truncated, &w, 2).unwrap();
    let Trace::OneShotPpl(t) = &result.trace else { panic!() };
    for (ours, theirs) in t.removals.iter().zip(r["one_shot"].as_array().unwrap()) {
        assert_eq!(ours.block, theirs["block"].as_u64().unwrap() as usize);
        let loss = theirs["loss"].as_f64().unwrap();
        assert!(close(ours.loss, loss, 1e-3, 0.0), "block {}: {} vs {loss}", ours.block, ours.loss);
    }
    let n = r["angular"]["n"].as_u64().unwrap() as usize;
    let result = Angular::default().prune(&fixture().truncated, &w, n).unwrap();
    let Trace::Angular(t) = &result.trace else { panic!() };
    let runs = r["angular"]["runs"].as_array().unwrap();
    assert_eq!(t.runs.len(), runs.len());
    for (ours, theirs) in t.runs.iter().zip(runs) {
        let d = theirs["distance"].as_f64().unwrap();
        assert!(close(ours.distance, d, 1e-3, 1e-5), "run {}: {} vs {d}", ours.start, ours.distance);
    }
}
