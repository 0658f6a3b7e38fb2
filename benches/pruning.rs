//! Pruning methods side by side on the same model, calibration set and n: the "benchmark against
//! SLEB" users run. One function per method, EvoP's search included.
//!
//! ```text
//! cargo bench --bench pruning
//! EVOP_BENCH_WINDOWS=8 EVOP_BENCH_SEQLEN=128 EVOP_BENCH_N=6 cargo bench --bench pruning   # other sizes
//! ```
//!
//! Model: SmolLM2-135M-Instruct (30 blocks, f32 on the CPU). Calibration: the Wikipedia leads whose
//! article index is not a multiple of 10 (the calibration pool; multiples of 10 are kept for
//! evaluation), joined with "\n\n", tokenized by evop, the first `EVOP_BENCH_WINDOWS` (default 4)
//! windows of `EVOP_BENCH_SEQLEN` (default 128) tokens. n = `EVOP_BENCH_N` (default 6). Before
//! timing, each method runs once and its mask, forward counts and time are printed.
//! Text: Wikipedia, CC BY-SA 4.0.
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode};
use criterion::measurement::WallTime;
use evop::baselines::{Pruner, ShortGpt, Sleb};
use evop::model::perplexity::{cut_windows, join_texts};
use evop::model::{encode, load, BlockLm, LoadOptions};
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    lm: Arc<dyn BlockLm>,
    windows: Vec<Vec<u32>>,
    n: usize,
    label: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn setup() -> Setup {
    let store = evop::assets::AssetStore::from_env();
    let model = load(&store.smollm2_gguf().expect("fetch SmolLM2"), &LoadOptions::default()).expect("load SmolLM2");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(store.wikipedia_leads().expect("fetch Wikipedia leads")).unwrap()).unwrap();
    let (count, seqlen, n) = (env_usize("EVOP_BENCH_WINDOWS", 4), env_usize("EVOP_BENCH_SEQLEN", 128), env_usize("EVOP_BENCH_N", 6));
    let pool: Vec<String> = json
        .as_object()
        .unwrap()
        .values()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, v)| v["extract"].as_str().unwrap().to_string())
        .collect();
    let mut text = String::new();
    let mut windows = Vec::new();
    for chunk in pool.chunks(20) {
        text = if text.is_empty() { join_texts(chunk) } else { format!("{text}\n\n{}", join_texts(chunk)) };
        let ids = encode(model.tokenizer().unwrap(), &text).unwrap();
        windows = cut_windows(&ids, seqlen);
        if windows.len() > count {
            break;
        }
    }
    windows.truncate(count);
    assert_eq!(windows.len(), count, "not enough calibration text");
    let label = format!("smollm2_n{n}_{count}x{seqlen}");
    Setup { lm: model.lm, windows, n, label }
}

/// Runs `pruner` once (printing what it chose), then times it.
fn bench_method(g: &mut BenchmarkGroup<'_, WallTime>, s: &Setup, name: &str, pruner: &dyn Pruner) {
    let r = pruner.prune(&s.lm, &s.windows, s.n).expect("prune");
    println!(
        "{name} on {}: removed {:?}, {} block / {} head forwards, {} candidates, {:.2} s",
        s.label,
        r.removed(),
        r.counts.block_forwards,
        r.counts.head_forwards,
        r.counts.candidates,
        r.elapsed.as_secs_f64()
    );
    g.bench_with_input(BenchmarkId::new(name, &s.label), s, |b, s| b.iter(|| pruner.prune(&s.lm, &s.windows, s.n).expect("prune")));
}

fn sleb(g: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    bench_method(g, s, "sleb", &Sleb::default());
}

fn shortgpt(g: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    bench_method(g, s, "shortgpt", &ShortGpt::default());
}

/// EvoP's search (population 12, at most 8 generations, stop after 4 stalled) on the same windows.
fn evop_search(g: &mut BenchmarkGroup<'_, WallTime>, s: &Setup) {
    let pruner = evop::EvopPruner {
        search: evop::SearchSpec { population: 12, generations: 8, stalled: Some(4), ..Default::default() },
        ..Default::default()
    };
    bench_method(g, s, "evop", &pruner);
}

fn pruning(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("pruning");
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(1));
    shortgpt(&mut g, &s);
    sleb(&mut g, &s);
    evop_search(&mut g, &s);
    g.finish();
}

criterion_group!(benches, pruning);
criterion_main!(benches);
