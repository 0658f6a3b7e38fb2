//! The linear healer's hot paths at the hidden sizes of the real models (SmolLM2-135M 576,
//! Qwen2.5-Coder-0.5B 896, -1.5B 1536): accumulating the Gram matrices of 1,024 tokens (one
//! batch of 8 x 128) in f64, and solving the regularised normal equations by Cholesky.
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use evop::heal::ridge::{NormalEquations, RidgeScale};

fn random(n: usize, h: usize, seed: u64) -> Tensor {
    let v: Vec<f32> = (0..n * h).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0).collect();
    Tensor::from_vec(v, (n, h), &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("heal");
    g.sample_size(10);
    for h in [576usize, 896, 1536] {
        let (m, d) = (random(1024, h, 1), random(1024, h, 2));
        g.bench_with_input(BenchmarkId::new("accumulate_1024_tokens", h), &h, |b, &h| {
            b.iter(|| {
                let mut eq = NormalEquations::new(h);
                eq.add(&m, &d).unwrap();
                eq
            })
        });
        let mut eq = NormalEquations::new(h);
        for seed in 0..4 {
            eq.add(&random(1024, h, 10 + seed), &random(1024, h, 20 + seed)).unwrap();
        }
        g.bench_with_input(BenchmarkId::new("solve", h), &h, |b, _| b.iter(|| eq.solve(1e-2, RidgeScale::Diagonal).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
