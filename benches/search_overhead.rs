//! The search's own cost per generation, fitness excluded: selection, crossover, mutation, duplicate
//! avoidance, immigrants, memo lookups and inserts, sorting, best-so-far, diversity and the report. The
//! fitness is a trivial additive cost (a few nanoseconds per mask), so the time is the library's overhead.
//! No checkpoint is written (that cost is I/O and grows with the memo).
//!
//! ```text
//! cargo bench --bench search_overhead
//! ```
//!
//! Each sample starts from a fresh run advanced 20 generations (untimed), then times one generation.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use evop::search::{FnFitness, GaParams, Mask, MaskSpace, OnePlusLambdaParams, Search, Termination};

fn trivial(len: usize) -> FnFitness<impl Fn(&Mask) -> f64> {
    let costs: Vec<f64> = (0..len).map(|i| ((i * 7919) % 97) as f64 / 97.0).collect();
    FnFitness(move |m: &Mask| m.removed().map(|i| costs[i]).sum())
}

fn ga_generation(c: &mut Criterion) {
    let mut g = c.benchmark_group("ga_generation_pop64");
    for len in [32usize, 80, 256] {
        let space = MaskSpace::new(len, len / 4, [0, len - 1]).unwrap();
        let ga = GaParams::new().population(64).check().unwrap();
        let f = trivial(len);
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter_batched(
                || {
                    let mut run = Search::new(space.clone(), ga.clone()).seed(1).until(Termination::MaxGenerations(u64::MAX)).start(&f).unwrap();
                    for _ in 0..20 {
                        run.step().unwrap();
                    }
                    run
                },
                |mut run| {
                    run.step().unwrap();
                    run
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn one_plus_lambda_generation(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_plus_lambda_generation_lambda64");
    let len = 80usize;
    let space = MaskSpace::new(len, len / 4, [0, len - 1]).unwrap();
    let opl = OnePlusLambdaParams::new().lambda(64).check().unwrap();
    let f = trivial(len);
    g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
        b.iter_batched(
            || {
                let mut run = Search::new(space.clone(), opl.clone()).seed(1).until(Termination::MaxGenerations(u64::MAX)).start(&f).unwrap();
                for _ in 0..20 {
                    run.step().unwrap();
                }
                run
            },
            |mut run| {
                run.step().unwrap();
                run
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ga_generation, one_plus_lambda_generation);
criterion_main!(benches);
