//! evop-data throughput: all-MiniLM-L6-v2 window embedding (windows per second, 64 windows of 128
//! SmolLM2 tokens of Wikipedia calibration text) and k-means on 10,000 x 384 synthetic embeddings
//! (100 Gaussian blobs, rows L2-normalised like sentence embeddings; k by the automatic rule for a
//! 128-window calibration set, i.e. 71).
//!
//! Run: `cargo bench --bench data` (needs the cached assets; see ASSETS.md).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use evop::data::ndarray::Array2;
use evop::data::{auto_k, kmeans, make_windows, read_wikipedia_leads, Corpus, Embedder, KMeansOptions, MiniLm, MiniLmOptions, SplitRule, WindowOptions};
use rand::{Rng, SeedableRng};
use std::hint::black_box;

fn embedding(c: &mut Criterion) {
    let store = evop::assets::AssetStore::from_env();
    let gguf = evop::model::gguf::GgufFile::open(&store.smollm2_gguf().expect("SmolLM2 asset")).expect("gguf");
    let tok = evop::model::tokenizer::tokenizer_from_gguf(&gguf).expect("tokenizer");
    let corpus = read_wikipedia_leads(&store.wikipedia_leads().expect("Wikipedia asset")).expect("leads");
    let split = SplitRule::default().split(&corpus).expect("split");
    let docs = split.calibration.documents[..300].to_vec();
    let pool = make_windows(&Corpus { name: "bench".into(), documents: docs }, &tok, &WindowOptions::new(128)).expect("windows");
    let windows = &pool[..64];
    let minilm = MiniLm::load(&store.minilm_dir().expect("MiniLM asset"), MiniLmOptions::default())
        .expect("MiniLM")
        .with_window_tokenizer(tok);
    let mut group = c.benchmark_group("minilm_embed");
    group.sample_size(10);
    group.throughput(Throughput::Elements(windows.len() as u64));
    group.bench_with_input(BenchmarkId::new("windows_x128_tokens", windows.len()), windows, |b, w| {
        b.iter(|| black_box(minilm.embed(w).expect("embed")))
    });
    group.finish();
}

fn synthetic(n: usize, dim: usize, blobs: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut gauss = move || -> f32 {
        // Box-Muller.
        let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let centres = Array2::from_shape_simple_fn((blobs, dim), &mut gauss);
    let mut x = Array2::from_shape_fn((n, dim), |(i, j)| centres[[i % blobs, j]]);
    for mut row in x.rows_mut() {
        row.mapv_inplace(|v| v + 0.5 * gauss());
        let norm = row.dot(&row).sqrt();
        row /= norm;
    }
    x
}

fn kmeans_bench(c: &mut Criterion) {
    let data = synthetic(10_000, 384, 100, 7);
    let k = auto_k(10_000, 128);
    let mut group = c.benchmark_group("kmeans_10000x384");
    group.sample_size(10);
    // One restart: the default n_runs = 10 costs ten times this (linfa runs restarts one after another),
    // too long for criterion's ten samples on this CPU.
    let n_runs = 1usize;
    let opts = KMeansOptions { n_runs, seed: 1, ..KMeansOptions::default() };
    group.bench_with_input(BenchmarkId::new(format!("k{k}_n_runs"), n_runs), &opts, |b, opts| {
        b.iter(|| black_box(kmeans(data.view(), k, opts).expect("kmeans")))
    });
    group.finish();
}

criterion_group!(benches, embedding, kmeans_bench);
criterion_main!(benches);
