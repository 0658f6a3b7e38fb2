//! Fast candidate evaluation measured against the naive path (a full masked forward per candidate,
//! as the reference implementations do), on the same model, data, seed and result: SLEB at n and a
//! seeded EvoP search (the GA) at n. Paths:
//! - `naive`: `EvaluatorOptions::naive` (embeddings -> every kept block -> head, per candidate);
//! - `per-call`: dense boundary states + a prefix tree within each call (the first reuse version);
//! - `reuse`: the defaults: that, plus the persistent prefix cache across calls and stacking of
//!   tree nodes that need the same block into one forward batch.
//!
//! All paths share the model code and the fused loss. Each repetition runs every path once, in
//! turn, so machine load hits them alike; the table gives per-path medians over repetitions, block
//! / head forwards per candidate, and checks that every path chose the same mask. Then "the limit":
//! the time per candidate if only the blocks after the candidate's first divergence from
//! everything computed before (the `reuse` path's count) and its head ran at the matmul
//! throughput measured here.
//!
//! ```text
//! cargo run --release --example reuse -- --windows 2 --seqlen 128 --n 6 --reps 3
//! ```
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use evop::baselines::{Pruner, Sleb};
use evop::model::perplexity::cut_windows;
use evop::model::{encode, load, EvaluatorOptions, LoadOptions};
use evop::{EvopPruner, SearchSpec};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Calibration windows (from the calibration split, in file order).
    #[arg(long, default_value_t = 2)]
    windows: usize,
    #[arg(long, default_value_t = 128)]
    seqlen: usize,
    /// Blocks to remove.
    #[arg(long, default_value_t = 6)]
    n: usize,
    /// EvoP population / generations.
    #[arg(long, default_value_t = 12)]
    population: usize,
    #[arg(long, default_value_t = 6)]
    generations: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Repetitions (each runs every path once).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Methods to run (comma-separated: sleb, evop).
    #[arg(long, default_value = "sleb,evop")]
    methods: String,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median seconds of `f` over `reps` runs.
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(&t))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let store = evop::assets::AssetStore::from_env();
    let device = evop::model::parse_device(&a.device)?;
    let model = load(&store.smollm2_gguf()?, &LoadOptions { device: device.clone(), ..Default::default() })?;
    let corpus = evop::data::read_wikipedia_leads(&store.wikipedia_leads()?)?;
    let split = evop::data::SplitRule::default().split(&corpus)?;
    let text: String = split.calibration.texts().iter().take(200).copied().collect::<Vec<_>>().join("\n\n");
    let mut windows = cut_windows(&encode(model.tokenizer()?, &text)?, a.seqlen);
    windows.truncate(a.windows);
    ensure!(windows.len() == a.windows, "not enough text");
    let batches = windows.len().div_ceil(a.batch_size) as f64;
    let paths = [
        ("naive", EvaluatorOptions::naive(a.batch_size)),
        ("per-call", EvaluatorOptions::per_call(a.batch_size)),
        ("reuse", EvaluatorOptions { batch_size: a.batch_size, ..Default::default() }),
    ];
    let methods: Vec<&str> = a.methods.split(',').collect();
    println!(
        "SmolLM2, {} x {} calibration tokens, n = {}, batch size {}, device {}, {} repetition(s)\n",
        a.windows, a.seqlen, a.n, a.batch_size, a.device, a.reps
    );
    // wall[method][path] over repetitions; the rest from the last repetition.
    let mut wall = vec![vec![Vec::new(); paths.len()]; methods.len()];
    let mut rows = vec![vec![String::new(); paths.len()]; methods.len()];
    let mut reuse_blocks = vec![0.0; methods.len()];
    for rep in 0..a.reps {
        for (mi, method) in methods.iter().enumerate() {
            let mut masks = Vec::new();
            for (pi, (label, opts)) in paths.iter().enumerate() {
                let pruner: Box<dyn Pruner> = match *method {
                    "sleb" => Box::new(Sleb { evaluator: opts.clone(), ..Sleb::default() }),
                    "evop" => Box::new(EvopPruner {
                        search: SearchSpec { population: a.population, generations: a.generations, stalled: None, ..Default::default() },
                        evaluator: opts.clone(),
                        seed: a.seed,
                        ..Default::default()
                    }),
                    other => anyhow::bail!("unknown method {other}"),
                };
                let t = Instant::now();
                let r = pruner.prune(&model.lm, &windows, a.n)?;
                let secs = t.elapsed().as_secs_f64();
                eprintln!("rep {rep} {method} {label}: {secs:.1} s, removed {:?}, {:?}", r.removed(), r.counts);
                let c = r.counts;
                let per = |x: u64| x as f64 / c.candidates.max(1) as f64 / batches;
                if *label == "reuse" {
                    reuse_blocks[mi] = per(c.block_forwards);
                }
                wall[mi][pi].push(secs);
                rows[mi][pi] = format!(
                    "| {method} | {label} | {:?} | {} | {:.2} | {:.2} |",
                    r.removed(),
                    c.candidates,
                    per(c.block_forwards),
                    per(c.head_forwards)
                );
                masks.push(r.removed());
            }
            ensure!(masks.iter().all(|m| *m == masks[0]), "{method}: the paths chose different masks: {masks:?}");
        }
    }
    println!("| method | path | removed | candidates | block fwd / candidate | head fwd / candidate | wall s (median) | naive / path |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (mi, _) in methods.iter().enumerate() {
        let naive = median(&wall[mi][0]);
        for pi in 0..paths.len() {
            let m = median(&wall[mi][pi]);
            println!("{} {m:.1} | {:.2}x |", rows[mi][pi], naive / m);
        }
    }

    // The limit: blocks after the first divergence and one head, at the measured matmul throughput.
    let lm = model.lm.as_ref();
    let info = lm.info();
    let tokens = a.windows.min(a.batch_size) * a.seqlen;
    let block_params: usize = model.weights.iter().filter(|(k, _)| k.starts_with("model.layers.0.") && k.contains("proj")).map(|(_, t)| t.elem_count()).sum();
    let block_flop = 2.0 * block_params as f64 * tokens as f64 + 4.0 * (a.seqlen as f64 / 2.0) * info.hidden_size as f64 * tokens as f64;
    let head_flop = 2.0 * (info.hidden_size * info.vocab_size) as f64 * (tokens - tokens / a.seqlen) as f64;
    let x = Tensor::randn(0f32, 1.0, (tokens, info.hidden_size), &device)?;
    let w = Tensor::randn(0f32, 1.0, (info.hidden_size, 1536), &device)?;
    let secs = time(7, || {
        x.matmul(&w)?;
        Ok(())
    })?;
    let gflops = 2.0 * (tokens * info.hidden_size * 1536) as f64 / secs / 1e9;
    let ids = Tensor::from_vec(windows.iter().take(a.batch_size).flatten().copied().collect::<Vec<u32>>(), (a.windows.min(a.batch_size), a.seqlen), &device)?;
    let ctx = evop::model::AttnContext::new(info, a.seqlen, 0)?;
    let h = lm.embed(&ids, 0)?;
    let block_s = time(7, || {
        lm.block(10, &h, &ctx, None)?;
        Ok(())
    })?;
    let head_s = time(5, || {
        lm.head(&h)?;
        Ok(())
    })?;
    println!(
        "\nmatmul {tokens} x {} x 1536: {gflops:.0} GFLOP/s; one block at {tokens} tokens: {:.1} ms measured, {:.1} ms at that rate; head (logits): {:.1} ms measured, {:.1} ms at that rate",
        info.hidden_size,
        block_s * 1e3,
        block_flop / gflops / 1e6,
        head_s * 1e3,
        head_flop / gflops / 1e6
    );
    for (mi, method) in methods.iter().enumerate() {
        let limit = (reuse_blocks[mi] * block_flop + head_flop) / gflops / 1e9 * batches;
        let last_row = &rows[mi][2];
        let cands: f64 = last_row.split('|').nth(4).and_then(|s| s.trim().parse().ok()).unwrap_or(f64::NAN);
        println!(
            "{method}: limit {:.3} s per candidate ({:.2} blocks after the first divergence + 1 head at {gflops:.0} GFLOP/s); measured reuse {:.3} s, naive {:.3} s",
            limit,
            reuse_blocks[mi],
            median(&wall[mi][2]) / cands,
            median(&wall[mi][0]) / cands
        );
    }
    let _ = Device::Cpu;
    Ok(())
}
