//! Exact computation reuse in candidate evaluation, measured against the naive path (a full
//! masked forward per candidate, as the reference implementations do), on the same model, data,
//! seed and result: SLEB at n and a seeded EvoP search at n. Prints block / head forwards per
//! candidate and wall time for both, and checks that both paths choose the same mask.
//!
//! ```text
//! cargo run --release --example reuse -- --windows 2 --seqlen 128 --n 6
//! ```
use anyhow::{ensure, Result};
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
}

fn main() -> Result<()> {
    let a = Args::parse();
    let store = evop::assets::AssetStore::from_env();
    let model = load(&store.smollm2_gguf()?, &LoadOptions { device: evop::model::parse_device(&a.device)?, ..Default::default() })?;
    let corpus = evop::data::read_wikipedia_leads(&store.wikipedia_leads()?)?;
    let split = evop::data::SplitRule::default().split(&corpus)?;
    let text: String = split.calibration.texts().iter().take(200).copied().collect::<Vec<_>>().join("\n\n");
    let mut windows = cut_windows(&encode(model.tokenizer()?, &text)?, a.seqlen);
    windows.truncate(a.windows);
    ensure!(windows.len() == a.windows, "not enough text");
    let paths = [("naive", EvaluatorOptions::naive(a.batch_size)), ("reuse", EvaluatorOptions { batch_size: a.batch_size, ..Default::default() })];
    println!("SmolLM2, {} x {} calibration tokens, n = {}, device {}\n", a.windows, a.seqlen, a.n, a.device);
    println!("| method | path | removed | candidates | block fwd / candidate | head fwd / candidate | wall s |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for method in ["sleb", "evop"] {
        let mut masks = Vec::new();
        let mut times = Vec::new();
        for (label, opts) in &paths {
            let pruner: Box<dyn Pruner> = if method == "sleb" {
                Box::new(Sleb { evaluator: opts.clone(), ..Sleb::default() })
            } else {
                Box::new(EvopPruner {
                    search: SearchSpec { population: a.population, generations: a.generations, stalled: None, ..Default::default() },
                    evaluator: opts.clone(),
                    seed: a.seed,
                    ..Default::default()
                })
            };
            let t = Instant::now();
            let r = pruner.prune(&model.lm, &windows, a.n)?;
            let secs = t.elapsed().as_secs_f64();
            let c = r.counts;
            let per = |x: u64| x as f64 / c.candidates.max(1) as f64 / windows.len().div_ceil(a.batch_size) as f64;
            println!("| {method} | {label} | {:?} | {} | {:.2} | {:.2} | {secs:.1} |", r.removed(), c.candidates, per(c.block_forwards), per(c.head_forwards));
            masks.push(r.removed());
            times.push(secs);
        }
        ensure!(masks[0] == masks[1], "{method}: the naive and the reuse path chose different masks");
        println!("| {method} | speedup | | | | | {:.2}x |", times[0] / times[1]);
    }
    Ok(())
}
