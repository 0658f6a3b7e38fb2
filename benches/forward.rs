//! The CPU forward of a SmolLM2-135M-shaped model (30 blocks, hidden 576, 9 heads over 3 KV
//! heads, FFN 1536, vocabulary 49,152; random weights, `synthetic:smollm2-135m`, so nothing is
//! downloaded): the attention alone, fused kernel (`kernels::attention`, the default for f32 on
//! the CPU) vs the tensor ops (`kernels::attention_reference`); the block's projections (GEMMs,
//! throughput in FLOP: criterion's "elem/s" are FLOP/s; `Linear`'s output tiles against candle's
//! matmul) and the LM head (final norm and logits,
//! FLOP of the 576 x 49,152 product); and the full masked forward (logits at every position) in
//! tokens per call.
//!
//! ```text
//! cargo bench --bench forward
//! EVOP_BENCH_SHAPES=128x1,128x8,512x1,512x8 cargo bench --bench forward
//! ```
//!
//! Shapes are SEQxBATCH (default `128x1,512x8`). The real model's figures against PyTorch come from
//! `examples/forward_throughput.rs` (docs/performance.md).
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use candle_core::Module;
use evop::model::kernels::{attention, attention_reference, causal_mask, Linear};
use evop::model::{forward, load, LoadOptions};
use std::hint::black_box;
use std::time::Duration;

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;

fn shapes() -> Vec<(usize, usize)> {
    let spec = std::env::var("EVOP_BENCH_SHAPES").unwrap_or_else(|_| "128x1,512x8".into());
    spec.split(',')
        .map(|s| {
            let (seq, batch) = s.split_once('x').unwrap_or_else(|| panic!("EVOP_BENCH_SHAPES: bad shape `{s}` (want SEQxBATCH)"));
            (seq.trim().parse().expect("sequence length"), batch.trim().parse().expect("batch size"))
        })
        .collect()
}

fn bench_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let dev = Device::Cpu;
    for (s, b) in shapes() {
        let q = Tensor::randn(0f32, 1.0, (b, HEADS, s, HEAD_DIM), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, KV_HEADS, s, HEAD_DIM), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, KV_HEADS, s, HEAD_DIM), &dev).unwrap();
        let mask = (s > 1).then(|| causal_mask(s, 0, None, DType::F32, &dev).unwrap());
        let scale = 1.0 / (HEAD_DIM as f64).sqrt();
        group.throughput(Throughput::Elements((s * b) as u64));
        let id = format!("{s}x{b}");
        group.bench_with_input(BenchmarkId::new("fused", &id), &(), |bench, _| {
            bench.iter(|| black_box(attention(&q, &k, &v, mask.as_ref(), scale).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("tensor_ops", &id), &(), |bench, _| {
            bench.iter(|| black_box(attention_reference(&q, &k, &v, mask.as_ref(), scale).unwrap()))
        });
    }
    group.finish();
}

fn bench_parts(c: &mut Criterion) {
    let model = load("synthetic:smollm2-135m".as_ref(), &LoadOptions::default()).expect("synthetic SmolLM2");
    let lm = model.lm.as_ref();
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("parts");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    // (name, in, out) of one block's projections.
    let projections = [("q_o_proj", 576, 576), ("k_v_proj", 576, 192), ("gate_up_proj", 576, 1536), ("down_proj", 1536, 576)];
    for (s, b) in shapes() {
        let rows = s * b;
        for (name, fan_in, fan_out) in projections {
            let layer = Linear::new(Tensor::randn(0f32, 0.02, (fan_out, fan_in), &dev).unwrap(), None);
            let x = Tensor::randn(0f32, 1.0, (b, s, fan_in), &dev).unwrap();
            group.throughput(Throughput::Elements((2 * rows * fan_in * fan_out) as u64));
            group.bench_with_input(BenchmarkId::new(format!("matmul_{name}"), format!("{s}x{b}")), &(), |bench, _| {
                bench.iter(|| black_box(layer.forward(&x).unwrap()))
            });
            // The same product through candle's matmul (the `gemm` crate's own threading), which
            // `Linear` replaced on the CPU by output tiles (`kernels::cpu_matmul`).
            let (flat, w_t) = (x.reshape((rows, fan_in)).unwrap(), layer.weight().t().unwrap());
            group.bench_with_input(BenchmarkId::new(format!("candle_matmul_{name}"), format!("{s}x{b}")), &(), |bench, _| {
                bench.iter(|| black_box(flat.matmul(&w_t).unwrap()))
            });
        }
        let h = Tensor::randn(0f32, 1.0, (b, s, 576), &dev).unwrap();
        let vocab = lm.info().vocab_size;
        group.throughput(Throughput::Elements((2 * rows * 576 * vocab) as u64));
        group.bench_with_input(BenchmarkId::new("head", format!("{s}x{b}")), &(), |bench, _| {
            bench.iter(|| black_box(lm.head(&h).unwrap()))
        });
    }
    group.finish();
}

fn bench_forward(c: &mut Criterion) {
    let model = load("synthetic:smollm2-135m".as_ref(), &LoadOptions::default()).expect("synthetic SmolLM2");
    let lm = model.lm.as_ref();
    let mut group = c.benchmark_group("forward");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(10));
    for (s, b) in shapes() {
        let ids: Vec<u32> = (0..s * b).map(|i| ((i * 7919) % 40000 + 100) as u32).collect();
        let ids = Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap();
        group.throughput(Throughput::Elements((s * b) as u64));
        group.bench_with_input(BenchmarkId::new("smollm2_135m_f32", format!("{s}x{b}")), &(), |bench, _| {
            bench.iter(|| black_box(forward(lm, &ids).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_attention, bench_parts, bench_forward);
criterion_main!(benches);
