//! Candidate evaluations per second over a real search's candidate stream, the figure a user
//! waits on during a search: SLEB's greedy steps (Song et al. ICML 2024) and an EvoP GA run (Wu et
//! et al. 2025, arXiv 2502.14910), on any model, device and dtype, with seeded random calibration
//! tokens (the forward's time does not depend on their values).
//!
//! Paths: `reuse` (the evaluator's defaults: dense boundary states, persistent prefix cache,
//! stacking) and `naive` (a full masked forward per candidate, what a plain loop does). Counts are
//! distinct candidates evaluated (the search's memo answers repeats on both paths). One untimed
//! warm-up forward runs first (on a GPU the first forward JIT-compiles the kernels), as the
//! PyTorch loop does. `--cache-mib` overrides the prefix cache's budget (default: sized for the
//! device, `evop::model::default_cache_budget`). docs/gpu.md, "Search throughput against the
//! PyTorch loop", has the figures.
//!
//! `--masks-out DIR` writes `DIR/evop-checkpoint.json` (every mask the EvoP run evaluated), the
//! candidate stream `scripts/torch_search_loop.py --masks` scores with the PyTorch loop on the same
//! model shape and tokens; SLEB's stream is the loop's own `--stream sleb:N` (the same number of
//! candidates per step whatever the losses).
//!
//! ```text
//! cargo run --release --features cuda --example search_rate -- --model synthetic:llama2-7b \
//!     --device cuda --dtype bf16 --windows 8 --seqlen 512 --n 6 --masks-out out/rate --json out/rate.jsonl
//! ```
use anyhow::{bail, Context, Result};
use clap::Parser;
use evop::baselines::{Pruner, Sleb};
use evop::model::{load, EvaluatorOptions, LoadOptions, LossKind};
use evop::{GaOperators, SearchJob, SearchSpec};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// A GGUF file, a Hugging Face directory, a known asset name or synthetic:NAME.
    #[arg(long, default_value = "synthetic:smollm2-135m")]
    model: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Calibration windows x tokens per window.
    #[arg(long, default_value_t = 8)]
    windows: usize,
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Blocks removed.
    #[arg(long, default_value_t = 6)]
    n: usize,
    /// Methods (comma-separated: sleb, evop).
    #[arg(long, value_delimiter = ',', default_value = "sleb,evop")]
    methods: Vec<String>,
    /// Paths (comma-separated: reuse, naive).
    #[arg(long, value_delimiter = ',', default_value = "reuse")]
    paths: Vec<String>,
    /// Loss: nll or kl.
    #[arg(long, default_value = "nll")]
    loss: String,
    /// EvoP's GA: population, generations (all run: no stall rule, so every path and the PyTorch
    /// loop see a stream of the same length).
    #[arg(long, default_value_t = 32)]
    population: usize,
    #[arg(long, default_value_t = 6)]
    generations: u64,
    /// The GA's variation operators: uniform (the default) or block-order.
    #[arg(long, default_value = "uniform")]
    operators: String,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Byte budget of the evaluator's persistent prefix cache, MiB (default: the evaluator's).
    #[arg(long)]
    cache_mib: Option<usize>,
    /// Tokens a stacked block forward may reach (0: no more than --batch-size windows; default:
    /// the evaluator's, sized for the device by `evop::model::default_stack_tokens`).
    #[arg(long)]
    stack_tokens: Option<usize>,
    /// Folder for the EvoP run's checkpoint (its evaluated masks).
    #[arg(long)]
    masks_out: Option<PathBuf>,
    /// Append one JSON line per (method, path) here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    evop::model::retain_freed_host_memory();
    let a = Args::parse();
    let loss = match a.loss.as_str() {
        "nll" => LossKind::Nll,
        "kl" => LossKind::KlToDense,
        other => bail!("--loss {other}: expected nll or kl"),
    };
    let operators = match a.operators.as_str() {
        "uniform" => GaOperators::Uniform,
        "one-point" => GaOperators::OnePoint,
        "block-order" => GaOperators::BlockOrder,
        other => bail!("--operators {other}: expected uniform, one-point or block-order"),
    };
    if let Some(dir) = a.json.as_ref().and_then(|p| p.parent()).filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let opts = LoadOptions { device: evop::model::parse_device(&a.device)?, dtype: evop::model::parse_dtype(&a.dtype)? };
    let t = Instant::now();
    let model = load(std::path::Path::new(&a.model), &opts).with_context(|| format!("loading {}", a.model))?;
    let lm = model.lm.clone();
    eprintln!("{}: {} blocks, loaded in {:.1}s", a.model, lm.num_blocks(), t.elapsed().as_secs_f64());
    let vocab = lm.info().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let windows: Vec<Vec<u32>> = (0..a.windows).map(|_| (0..a.seqlen).map(|_| rng.random_range(0..vocab)).collect()).collect();
    // Warm-up, not timed (the PyTorch loop does the same): the first forward loads and JIT-compiles
    // the GPU kernels.
    let t = Instant::now();
    let warm = evop::model::CalibrationEvaluator::new(lm.clone(), &windows[..a.batch_size.min(windows.len())], EvaluatorOptions::naive(a.batch_size))?;
    warm.window_losses(&evop::model::BlockMask::dense(lm.num_blocks()))?;
    drop(warm);
    eprintln!("warm-up (one dense forward and loss): {:.2}s", t.elapsed().as_secs_f64());
    let cache_budget = a.cache_mib.map(|m| m << 20);
    for method in &a.methods {
        for path in &a.paths {
            let evaluator = match path.as_str() {
                "reuse" => EvaluatorOptions { batch_size: a.batch_size, loss, cache_budget, stack_tokens: a.stack_tokens, ..Default::default() },
                "naive" => EvaluatorOptions { loss, ..EvaluatorOptions::naive(a.batch_size) },
                other => bail!("--paths {other}: expected reuse or naive"),
            };
            // The budget as resolved now (an evaluator resolves `None` when it is created).
            let budget_mib = if path == "reuse" { cache_budget.unwrap_or_else(|| evop::model::default_cache_budget(&lm.info().device)) >> 20 } else { 0 };
            let stack_tokens = if path == "reuse" { a.stack_tokens.unwrap_or_else(|| evop::model::default_stack_tokens(&lm.info().device)) } else { 0 };
            let t = Instant::now();
            let (removed, counts) = match method.as_str() {
                "sleb" => {
                    let r = Sleb { evaluator, ..Sleb::default() }.prune(&lm, &windows, a.n)?;
                    (r.removed(), r.counts)
                }
                "evop" => {
                    let checkpoint = match &a.masks_out {
                        Some(dir) if path == "reuse" => {
                            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                            let file = dir.join("evop-checkpoint.json");
                            if file.exists() {
                                bail!("{} exists: choose another --masks-out", file.display());
                            }
                            Some((file, false))
                        }
                        _ => None,
                    };
                    let search = SearchSpec { population: a.population, generations: a.generations, stalled: None, operators, ..SearchSpec::default() };
                    let job = SearchJob { search, evaluator, checkpoint, ..SearchJob::new(a.n, a.seed) };
                    let r = job.run(lm.clone(), &windows, None)?;
                    (r.removed, r.counts)
                }
                other => bail!("--methods {other}: expected sleb or evop"),
            };
            let seconds = t.elapsed().as_secs_f64();
            let rate = counts.candidates as f64 / seconds;
            println!(
                "{method} {path}: {} candidates in {seconds:.2} s = {rate:.2} evaluations/s ({} block, {} head forwards, cache {budget_mib} MiB, stacking to {stack_tokens} tokens), removed {removed:?}",
                counts.candidates, counts.block_forwards, counts.head_forwards
            );
            if let Some(p) = &a.json {
                let row = serde_json::json!({
                    "model": a.model, "device": a.device, "dtype": a.dtype, "windows": a.windows, "seqlen": a.seqlen,
                    "n": a.n, "loss": a.loss, "method": method, "operators": a.operators, "generations": a.generations, "path": path, "candidates": counts.candidates,
                    "block_forwards": counts.block_forwards, "head_forwards": counts.head_forwards,
                    "seconds": seconds, "cache_mib": budget_mib, "stack_tokens": stack_tokens, "evaluations_per_s": rate, "removed": removed,
                });
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?;
                writeln!(f, "{row}")?;
            }
        }
    }
    Ok(())
}
