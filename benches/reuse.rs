//! Candidate evaluation, naive vs reuse, on whole pruning runs: SLEB at n and a seeded EvoP search
//! (GA) at n on SmolLM2, each with the naive evaluator (a full masked forward per candidate, as the
//! reference implementations, and for EvoP the search's memo cache off, so repeated masks are
//! evaluated again), per-call reuse (dense states + a prefix tree per call) and the
//! default (plus the persistent prefix cache and stacked block applications). Same model, data,
//! seed and result: before timing, every (method, path) runs once, prints its mask, forward counts
//! and time, and the bench checks that all paths of a method chose the same mask.
//!
//! ```text
//! cargo bench --bench reuse
//! EVOP_BENCH_WINDOWS=2 EVOP_BENCH_SEQLEN=128 EVOP_BENCH_N=6 EVOP_BENCH_GENERATIONS=6 cargo bench --bench reuse   # the issue's setting (slow)
//! ```
//!
//! Defaults (sized so the whole bench takes minutes on 2 shared CPU cores): 2 windows of 32
//! tokens, n = 2, GA population 12 and 2 generations. Calibration text: the Wikipedia leads of the calibration split
//! (as `examples/reuse.rs`), joined with "\n\n". Text: Wikipedia, CC BY-SA 4.0.
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode};
use evop::baselines::{Pruner, Sleb};
use evop::model::perplexity::cut_windows;
use evop::model::{encode, load, BlockLm, EvaluatorOptions, LoadOptions};
use evop::{EvopPruner, SearchSpec};
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    lm: Arc<dyn BlockLm>,
    windows: Vec<Vec<u32>>,
    n: usize,
    generations: u64,
    label: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn setup() -> Setup {
    let store = evop::assets::AssetStore::from_env();
    let model = load(&store.smollm2_gguf().expect("fetch SmolLM2"), &LoadOptions::default()).expect("load SmolLM2");
    let corpus = evop::data::read_wikipedia_leads(&store.wikipedia_leads().expect("fetch Wikipedia leads")).expect("read");
    let split = evop::data::SplitRule::default().split(&corpus).expect("split");
    let text: String = split.calibration.texts().iter().take(200).copied().collect::<Vec<_>>().join("\n\n");
    let (count, seqlen, n) = (env_usize("EVOP_BENCH_WINDOWS", 2), env_usize("EVOP_BENCH_SEQLEN", 32), env_usize("EVOP_BENCH_N", 2));
    let generations = env_usize("EVOP_BENCH_GENERATIONS", 2) as u64;
    let mut windows = cut_windows(&encode(model.tokenizer().unwrap(), &text).unwrap(), seqlen);
    windows.truncate(count);
    assert_eq!(windows.len(), count, "not enough calibration text");
    let label = format!("smollm2_n{n}_{count}x{seqlen}");
    Setup { lm: model.lm, windows, n, generations, label }
}

fn paths() -> [(&'static str, EvaluatorOptions); 3] {
    [("naive", EvaluatorOptions::naive(8)), ("per_call", EvaluatorOptions::per_call(8)), ("reuse", EvaluatorOptions::default())]
}

/// The pruner of `method` on one path; `memoize: false` is the naive path's search.
fn pruner(method: &str, s: &Setup, opts: EvaluatorOptions, memoize: bool) -> Box<dyn Pruner> {
    match method {
        "sleb" => Box::new(Sleb { evaluator: opts, ..Sleb::default() }),
        _ => Box::new(EvopPruner {
            search: SearchSpec { population: 12, generations: s.generations, stalled: None, memoize, ..Default::default() },
            evaluator: opts,
            seed: 0,
            ..Default::default()
        }),
    }
}

fn bench_method(g: &mut BenchmarkGroup<'_, WallTime>, s: &Setup, method: &str) {
    let mut masks = Vec::new();
    // Candidates requested: the naive path (first) evaluates every request.
    let mut requested = 0;
    for (path, opts) in paths() {
        let p = pruner(method, s, opts, path != "naive");
        let r = p.prune(&s.lm, &s.windows, s.n).expect("prune");
        let c = r.counts;
        if path == "naive" {
            requested = c.candidates.max(1);
        }
        println!(
            "{method} {path} on {}: removed {:?}, {:.2} block / {:.2} head forwards per requested candidate, {requested} requested, {} evaluated, {:.2} s",
            s.label,
            r.removed(),
            c.block_forwards as f64 / requested as f64,
            c.head_forwards as f64 / requested as f64,
            c.candidates,
            r.elapsed.as_secs_f64()
        );
        masks.push(r.removed());
        g.bench_with_input(BenchmarkId::new(format!("{method}/{path}"), &s.label), s, |b, s| {
            b.iter(|| p.prune(&s.lm, &s.windows, s.n).expect("prune"))
        });
    }
    assert!(masks.iter().all(|m| *m == masks[0]), "{method}: the paths chose different masks: {masks:?}");
}

fn reuse(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("reuse");
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(1));
    bench_method(&mut g, &s, "sleb");
    bench_method(&mut g, &s, "evop");
    g.finish();
}

criterion_group!(benches, reuse);
criterion_main!(benches);
