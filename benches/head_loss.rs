//! The calibration head with its loss (final norm, LM head, NLL or KL to the dense model), as the
//! evaluator runs it once per candidate and calibration batch: the sliced head (logits produced
//! and reduced one vocabulary slice at a time, the default for linear heads on the CPU) against the
//! full logits reduced row by row (what a model without `BlockLm::lm_head_linear` gets, and the
//! previous path). SmolLM2-135M shape (576 x 49,152 head; random weights,
//! `synthetic:smollm2-135m`, so nothing is downloaded), batches of WINDOWSx128 tokens.
//!
//! ```text
//! cargo bench --bench head_loss
//! EVOP_BENCH_WINDOWS=4,8 cargo bench --bench head_loss
//! ```
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use evop::model::{load, AttnContext, BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions, LayerCache, LoadOptions, LossKind, ModelInfo, Tensor};
use std::sync::Arc;
use std::time::Duration;

/// A model that hides its head's linear map, so the loss reduces the head's full logits.
struct FullLogits(Arc<dyn BlockLm>);

impl BlockLm for FullLogits {
    fn info(&self) -> &ModelInfo {
        self.0.info()
    }
    fn embed(&self, input_ids: &Tensor, offset: usize) -> evop::model::Result<Tensor> {
        self.0.embed(input_ids, offset)
    }
    fn block(&self, index: usize, hidden: &Tensor, ctx: &AttnContext, cache: Option<&mut LayerCache>) -> evop::model::Result<Tensor> {
        self.0.block(index, hidden, ctx, cache)
    }
    fn final_norm(&self, hidden: &Tensor) -> evop::model::Result<Tensor> {
        self.0.final_norm(hidden)
    }
    fn lm_head(&self, normed: &Tensor) -> evop::model::Result<Tensor> {
        self.0.lm_head(normed)
    }
}

fn head_loss(c: &mut Criterion) {
    let model = load("synthetic:smollm2-135m".as_ref(), &LoadOptions::default()).expect("synthetic SmolLM2");
    let sliced: Arc<dyn BlockLm> = model.lm.clone();
    let full: Arc<dyn BlockLm> = Arc::new(FullLogits(model.lm.clone()));
    let counts = std::env::var("EVOP_BENCH_WINDOWS").unwrap_or_else(|_| "4".into());
    let mut group = c.benchmark_group("head_loss");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for windows in counts.split(',').map(|w| w.trim().parse::<usize>().expect("EVOP_BENCH_WINDOWS: window counts")) {
        let ids: Vec<Vec<u32>> = (0..windows).map(|w| (0..128).map(|i| ((i * 7919 + w * 104_729) % 40_000 + 100) as u32).collect()).collect();
        let dense = BlockMask::dense(sliced.num_blocks());
        for (loss, name) in [(LossKind::Nll, "nll"), (LossKind::KlToDense, "kl")] {
            for (path, lm) in [("sliced", &sliced), ("full_logits", &full)] {
                // One calibration batch; the dense states stay pinned, so the dense mask runs the head only.
                let opts = EvaluatorOptions { loss, batch_size: windows, ..Default::default() };
                let ev = CalibrationEvaluator::new(lm.clone(), &ids, opts).expect("evaluator");
                ev.window_losses(&dense).expect("warm");
                let blocks = ev.counts().block_forwards;
                group.bench_with_input(BenchmarkId::new(format!("{name}/{path}"), format!("{windows}x128")), &(), |b, _| {
                    b.iter(|| ev.window_losses(&dense).expect("head"))
                });
                assert_eq!(ev.counts().block_forwards, blocks, "the timed calls must run the head only");
            }
        }
    }
    group.finish();
}

criterion_group!(benches, head_loss);
criterion_main!(benches);
