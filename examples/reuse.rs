//! Fast candidate evaluation measured against the naive path (a full masked forward per candidate,
//! as the reference implementations do), on the same model, data, seed and result: SLEB at n and a
//! seeded EvoP search (the GA) at n. Paths:
//! - `naive`: `EvaluatorOptions::naive` (embeddings -> every kept block -> head, per candidate),
//!   and for EvoP the search's memo cache off (`SearchSpec::memoize`): every mask the GA asks for
//!   is evaluated, repeats of earlier masks included, as the reference search loops do;
//! - `per-call`: dense boundary states + a prefix tree within each call (the first reuse version);
//! - `reuse`: the defaults: that, plus the persistent prefix cache across calls and stacking of
//!   tree nodes that need the same block into one forward batch.
//!
//! `per-call` and `reuse` keep the memo cache on. Counts are per *requested* candidate (every mask
//! the method asked for, the naive path's count), so the memo's saving is part of the ratio.
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
//!
//! With `--screening`, instead: the EvoP search per seed on the naive path, on the reuse path
//! (exact: same mask) and screened (approximate: the GA ranks candidates on the first
//! `--screen-windows` calibration windows with the loss over every `--screen-stride`-th position,
//! then the `--finalists` best of its final population are compared at full fidelity), with the
//! evaluation-split perplexity of each answer on the first `--eval-windows` windows of the
//! evaluation split:
//!
//! ```text
//! cargo run --release --example reuse -- --screening --windows 8 --seqlen 128 --n 6 --seeds 0,1,2
//! ```
use anyhow::{ensure, Result};
use candle_core::Tensor;
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
    /// Stop the GA after this many generations without improvement (default: run them all).
    #[arg(long)]
    stalled: Option<u64>,
    /// GA: fraction of each generation replaced by random masks (default: EvoP's, 0).
    #[arg(long)]
    immigrants: Option<f64>,
    /// Calibration loss: `nll` (mean token NLL) or `kl` (mean KL divergence to the dense model).
    #[arg(long, default_value = "nll")]
    loss: String,
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
    /// Paths to run (comma-separated: naive, per-call, reuse, reuse-no-stack); the table needs
    /// exactly `naive,per-call,reuse`.
    #[arg(long, default_value = "naive,per-call,reuse")]
    paths: String,
    /// Budget of the persistent prefix cache in MiB (default: the evaluator's, 1 GiB).
    #[arg(long)]
    cache_mib: Option<usize>,
    /// Run the screening comparison instead.
    #[arg(long)]
    screening: bool,
    /// Screening: windows ranked on, leading tokens of each, position stride, finalists,
    /// generations (default: as the unscreened search), seeds, evaluation windows, and which
    /// paths to run (naive, reuse, screened).
    #[arg(long, default_value_t = 2)]
    screen_windows: usize,
    #[arg(long)]
    screen_tokens: Option<usize>,
    #[arg(long, default_value_t = 1)]
    screen_stride: usize,
    #[arg(long, default_value_t = 4)]
    finalists: usize,
    #[arg(long)]
    screen_generations: Option<u64>,
    #[arg(long, default_value = "0,1,2")]
    seeds: String,
    #[arg(long, default_value_t = 32)]
    eval_windows: usize,
    #[arg(long, default_value = "naive,reuse,screened")]
    screen_paths: String,
}

/// The pruner of `method` on one path; `memoize: false` is the naive path's search.
fn pruner(a: &Args, method: &str, opts: &EvaluatorOptions, memoize: bool) -> Result<Box<dyn Pruner>> {
    Ok(match method {
        "sleb" => Box::new(Sleb { evaluator: opts.clone(), ..Sleb::default() }),
        "evop" => Box::new(EvopPruner {
            search: SearchSpec { population: a.population, generations: a.generations, stalled: a.stalled, memoize, immigrants: a.immigrants.or(SearchSpec::default().immigrants), ..Default::default() },
            evaluator: opts.clone(),
            seed: a.seed,
            ..Default::default()
        }),
        other => anyhow::bail!("unknown method {other} (expected sleb or evop)"),
    })
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

/// CPU seconds (user + system, all threads) this process has used so far, from `/proc/self/stat`
/// (Linux; NaN elsewhere). Less sensitive than wall time to other work on a shared machine.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
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
    if a.screening {
        return screening(&a, &model, &split, &windows);
    }
    let loss = loss_kind(&a)?;
    let batches = windows.len().div_ceil(a.batch_size) as f64;
    let cache_budget = a.cache_mib.map(|m| m << 20);
    let paths = [
        ("naive", EvaluatorOptions { loss, ..EvaluatorOptions::naive(a.batch_size) }),
        ("per-call", EvaluatorOptions { loss, ..EvaluatorOptions::per_call(a.batch_size) }),
        ("reuse", EvaluatorOptions { batch_size: a.batch_size, cache_budget, loss, ..Default::default() }),
    ];
    let only: Vec<&str> = a.paths.split(',').collect();
    if only != ["naive", "per-call", "reuse"] {
        // A partial run (profiling, ablations): no table. `reuse-no-stack`: the reuse path
        // without stacking.
        let extra = [("reuse-no-stack", EvaluatorOptions { batch_size: a.batch_size, cache_budget, stacking: false, ..Default::default() })];
        for method in a.methods.split(',') {
            for (label, opts) in paths.iter().chain(&extra).filter(|(l, _)| only.contains(l)) {
                let pruner = pruner(&a, method, opts, *label != "naive")?;
                let t = Instant::now();
                let r = pruner.prune(&model.lm, &windows, a.n)?;
                // EvoP's report: masks requested = evaluated + answered by the memo.
                let asked = match &r.trace {
                    evop::baselines::Trace::External { detail, .. } => detail["evaluations"].as_u64().zip(detail["cache_hits"].as_u64()).map(|(e, h)| e + h),
                    _ => None,
                };
                println!("{method} {label}: {:.1} s, removed {:?}, {:?}, requested {asked:?}", t.elapsed().as_secs_f64(), r.removed(), r.counts);
            }
        }
        return Ok(());
    }
    let methods: Vec<&str> = a.methods.split(',').collect();
    println!(
        "SmolLM2, {} x {} calibration tokens, n = {}, batch size {}, device {}, {} repetition(s)\n",
        a.windows, a.seqlen, a.n, a.batch_size, a.device, a.reps
    );
    // wall[method][path] over repetitions; the rest from the last repetition.
    let mut wall = vec![vec![Vec::new(); paths.len()]; methods.len()];
    let mut cpu = vec![vec![Vec::new(); paths.len()]; methods.len()];
    let mut rows = vec![vec![String::new(); paths.len()]; methods.len()];
    let mut reuse_blocks = vec![0.0; methods.len()];
    for rep in 0..a.reps {
        for (mi, method) in methods.iter().enumerate() {
            let mut masks = Vec::new();
            let mut counts = Vec::new();
            for (pi, (label, opts)) in paths.iter().enumerate() {
                let pruner = pruner(&a, method, opts, *label != "naive")?;
                let (t, c0) = (Instant::now(), cpu_seconds());
                let r = pruner.prune(&model.lm, &windows, a.n)?;
                let (secs, cpu_s) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
                cpu[mi][pi].push(cpu_s);
                eprintln!("rep {rep} {method} {label}: {secs:.1} s wall, {cpu_s:.1} s CPU, removed {:?}, {:?}", r.removed(), r.counts);
                wall[mi][pi].push(secs);
                counts.push(r.counts);
                masks.push(r.removed());
            }
            ensure!(masks.iter().all(|m| *m == masks[0]), "{method}: the paths chose different masks: {masks:?}");
            // Every path asks for the same candidates (same trajectory); the naive path evaluates
            // each request, so its count is the number requested.
            let requested = counts[0].candidates.max(1) as f64;
            for (pi, (label, _)) in paths.iter().enumerate() {
                let c = counts[pi];
                let per = |x: u64| x as f64 / requested / batches;
                if *label == "reuse" {
                    reuse_blocks[mi] = per(c.block_forwards);
                }
                rows[mi][pi] =
                    format!("| {method} | {label} | {:?} | {requested} | {} | {:.2} | {:.2} |", masks[pi], c.candidates, per(c.block_forwards), per(c.head_forwards));
            }
        }
    }
    println!("| method | path | removed | candidates requested | evaluated | block fwd / candidate | head fwd / candidate | wall s | naive / path (wall) | CPU s | naive / path (CPU) |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (mi, _) in methods.iter().enumerate() {
        let (naive, naive_cpu) = (median(&wall[mi][0]), median(&cpu[mi][0]));
        for pi in 0..paths.len() {
            let (m, c) = (median(&wall[mi][pi]), median(&cpu[mi][pi]));
            println!("{} {m:.1} | {:.2}x | {c:.1} | {:.2}x |", rows[mi][pi], naive / m, naive_cpu / c);
        }
    }
    println!("(wall and CPU seconds: medians over {} repetition(s))", a.reps);

    // The limit: blocks after the first divergence and one head, each at the matmul throughput
    // measured here on its own shape (projection GEMMs at the stacked batch's rows, the head GEMM
    // at one calibration batch's predicted positions).
    let lm = model.lm.as_ref();
    let info = lm.info();
    let (h, v) = (info.hidden_size, info.vocab_size);
    let batch_windows = a.windows.min(a.batch_size);
    let block_rows = a.batch_size.max(batch_windows) * a.seqlen;
    let head_rows = batch_windows * (a.seqlen - 1);
    let ffn = model.weights.get("model.layers.0.mlp.up_proj.weight").map_or(4 * h, |t| t.dims()[0]);
    let block_params: usize =
        model.weights.iter().filter(|(k, _)| k.starts_with("model.layers.0.") && k.ends_with("proj.weight")).map(|(_, t)| t.elem_count()).sum();
    // Per calibration batch: projections (2 FLOP per weight per token) and attention as computed
    // (scores and weighted values over the full square).
    let block_flop = (2 * block_params + 4 * a.seqlen * h) as f64 * (batch_windows * a.seqlen) as f64;
    let head_flop = 2.0 * (h * v) as f64 * head_rows as f64;
    let gemm = |m: usize, k: usize, n: usize| -> Result<f64> {
        let x = Tensor::randn(0f32, 1.0, (m, k), &device)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &device)?;
        let secs = time(5, || {
            x.matmul(&w.t()?)?;
            Ok(())
        })?;
        Ok(2.0 * (m * k * n) as f64 / secs / 1e9)
    };
    let block_rate = gemm(block_rows, h, ffn)?;
    let head_rate = gemm(head_rows, h, v)?;
    let ids = Tensor::from_vec(windows.iter().take(batch_windows).flatten().copied().collect::<Vec<u32>>(), (batch_windows, a.seqlen), &device)?;
    let ctx = evop::model::AttnContext::new(info, a.seqlen, 0)?;
    let hs = lm.embed(&ids, 0)?;
    let block_s = time(7, || {
        lm.block(10, &hs, &ctx, None)?;
        Ok(())
    })?;
    let head_s = time(5, || {
        lm.head(&hs)?;
        Ok(())
    })?;
    // The whole head as the evaluator runs it (final norm, logits, fused loss): the dense mask
    // again on an evaluator whose dense states are pinned runs no block, only the head.
    let ev = evop::model::CalibrationEvaluator::new(model.lm.clone(), &windows[..batch_windows], EvaluatorOptions::default())?;
    let dense = evop::model::BlockMask::dense(lm.num_blocks());
    ev.window_losses(&dense)?;
    let fused_s = time(5, || {
        ev.window_losses(&dense)?;
        Ok(())
    })?;
    let old_s = time(5, || {
        evop::model::perplexity::token_nll_from_hidden(lm, &hs, &ids)?.mean(1)?;
        Ok(())
    })?;
    println!(
        "\nmatmul throughput: {block_rate:.0} GFLOP/s at {block_rows} x {h} x {ffn}, {head_rate:.0} GFLOP/s at {head_rows} x {h} x {v}. \
         One calibration batch ({batch_windows} x {}): block {:.1} ms measured ({:.1} ms at that rate), head logits {:.1} ms measured ({:.1} ms at that rate)",
        a.seqlen,
        block_s * 1e3,
        block_flop / block_rate / 1e6,
        head_s * 1e3,
        head_flop / head_rate / 1e6
    );
    println!(
        "Head with loss per calibration batch: {:.1} ms with the fused loss (the evaluator, every path), {:.1} ms with tensor-op log-sum-exp (`perplexity::token_nll_from_hidden`)",
        fused_s * 1e3,
        old_s * 1e3
    );
    for (mi, method) in methods.iter().enumerate() {
        let limit = (reuse_blocks[mi] * block_flop / block_rate + head_flop / head_rate) / 1e9 * batches;
        let cands: f64 = rows[mi][2].split('|').nth(4).and_then(|s| s.trim().parse().ok()).unwrap_or(f64::NAN);
        println!(
            "{method}: the limit {:.3} s per candidate ({:.2} blocks after the first divergence + 1 head, at those rates); measured: reuse {:.3} s, naive {:.3} s",
            limit,
            reuse_blocks[mi],
            median(&wall[mi][2]) / cands,
            median(&wall[mi][0]) / cands
        );
    }
    Ok(())
}

/// The calibration loss of every path (`--loss`).
fn loss_kind(a: &Args) -> Result<evop::model::LossKind> {
    Ok(match a.loss.as_str() {
        "nll" => evop::model::LossKind::Nll,
        "kl" => evop::model::LossKind::KlToDense,
        other => anyhow::bail!("unknown --loss `{other}` (expected nll or kl)"),
    })
}

/// The screening comparison: per seed, the naive, reuse and screened EvoP searches, their
/// full-fidelity calibration loss, evaluation-split perplexity and wall time.
fn screening(a: &Args, model: &evop::model::LoadedModel, split: &evop::data::CorpusSplit, windows: &[Vec<u32>]) -> Result<()> {
    use evop::{Screening, SearchJob};
    let eval = evop::EvalSet::from_split(model, split, a.seqlen, Some(a.eval_windows), Some(0))?;
    ensure!(eval.windows.len() == a.eval_windows, "not enough evaluation text");
    let seeds: Vec<u64> = a.seeds.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let generations = a.screen_generations.unwrap_or(a.generations);
    let sc = Screening { windows: a.screen_windows, tokens: a.screen_tokens, position_stride: a.screen_stride, finalists: a.finalists };
    println!(
        "SmolLM2, EvoP GA (population {}, {} generations) at n = {} on {} x {} calibration tokens; screened: {:?}, {} generations; \
         evaluation: {} x {} tokens of the evaluation split\n",
        a.population, a.generations, a.n, a.windows, a.seqlen, sc, generations, eval.windows.len(), a.seqlen
    );
    let dense = evop::evaluate(model.lm.as_ref(), &eval, &evop::model::BlockMask::dense(model.lm.num_blocks()), a.batch_size)?;
    println!("dense model: evaluation perplexity {:.3}\n", dense.overall.perplexity);
    println!("| seed | path | removed | evaluations | block fwd | calibration loss | eval ppl | wall s | naive / path (wall) | CPU s | naive / path (CPU) |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut sums = [(0.0, 0.0, 0.0); 3];
    for &seed in &seeds {
        let loss = loss_kind(a)?;
        let runs = [
            ("naive", EvaluatorOptions { loss, ..EvaluatorOptions::naive(a.batch_size) }, None, a.generations),
            ("reuse", EvaluatorOptions { batch_size: a.batch_size, loss, ..Default::default() }, None, a.generations),
            ("screened", EvaluatorOptions { batch_size: a.batch_size, loss, ..Default::default() }, Some(sc.clone()), generations),
        ];
        let selected: Vec<&str> = a.screen_paths.split(',').collect();
        let runs: Vec<_> = runs.into_iter().filter(|r| selected.contains(&r.0)).collect();
        let mut times = vec![(Vec::new(), Vec::new()); runs.len()];
        let mut reports = Vec::new();
        for rep in 0..a.reps {
            for (i, (label, opts, screening, generations)) in runs.iter().enumerate() {
                let job = SearchJob {
                    search: SearchSpec {
                        population: a.population,
                        generations: *generations,
                        stalled: a.stalled,
                        screening: screening.clone(),
                        memoize: *label != "naive",
                        ..Default::default()
                    },
                    evaluator: opts.clone(),
                    ..SearchJob::new(a.n, seed)
                };
                let (t, c0) = (Instant::now(), cpu_seconds());
                let r = job.run(model.lm.clone(), windows, None)?;
                let (secs, cpu_s) = (t.elapsed().as_secs_f64(), cpu_seconds() - c0);
                eprintln!("seed {seed} rep {rep} {label}: {secs:.1} s wall, {cpu_s:.1} s CPU, removed {:?}", r.removed);
                times[i].0.push(secs);
                times[i].1.push(cpu_s);
                if rep == 0 {
                    reports.push(r);
                } else {
                    ensure!(r.removed == reports[i].removed, "seed {seed} {label}: not deterministic");
                }
            }
        }
        let find = |label: &str| runs.iter().position(|r| r.0 == label);
        if let (Some(n), Some(r)) = (find("naive"), find("reuse")) {
            ensure!(reports[r].removed == reports[n].removed, "seed {seed}: the reuse path chose {:?}, the naive path {:?}", reports[r].removed, reports[n].removed);
        }
        let (naive_s, naive_cpu) = find("naive").map_or((f64::NAN, f64::NAN), |n| (median(&times[n].0), median(&times[n].1)));
        for (j, r) in reports.iter().enumerate() {
            let i = ["naive", "reuse", "screened"].iter().position(|l| *l == runs[j].0).expect("known path");
            let ppl = evop::evaluate(model.lm.as_ref(), &eval, &r.mask()?, a.batch_size)?.overall.perplexity;
            let (w, c) = (median(&times[j].0), median(&times[j].1));
            sums[i].0 += ppl;
            sums[i].1 += naive_s / w;
            sums[i].2 += naive_cpu / c;
            println!(
                "| {seed} | {} | {:?} | {} | {} | {:.4} | {ppl:.3} | {w:.1} | {:.2}x | {c:.1} | {:.2}x |",
                runs[j].0, r.removed, r.evaluations, r.counts.block_forwards, r.objective_value, naive_s / w, naive_cpu / c
            );
        }
    }
    let k = seeds.len() as f64;
    for (i, label) in ["naive", "reuse", "screened"].iter().enumerate() {
        println!("mean over seeds, {label}: eval ppl {:.3}, speedup {:.2}x wall, {:.2}x CPU", sums[i].0 / k, sums[i].1 / k, sums[i].2 / k);
    }
    Ok(())
}
