//! Candidate evaluations per second with one model replica per device: the same seeded batch of
//! random masks is scored by a `WorkerPool` of 1, 2, ... `CalibrationFitness` workers (one per
//! device in `--devices`), and every pool must return the same fitness values as the first.
//! The default model is a random-weight Llama-2-7B shape in bf16 with random token windows.
//!
//! ```text
//! cargo run --release --features cuda --example multi_device -- --devices cuda:0,cuda:1
//! ```
use anyhow::{bail, Result};
use clap::Parser;
use evop::search::{Fidelity, Fitness, MaskSpace, WorkerPool};
use evop::{CalibrationFitness, Objective};
use evop::model::{load, EvaluatorOptions, LoadOptions};
use rand::SeedableRng;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model: a GGUF file, an HF directory or `synthetic:NAME`.
    #[arg(long, default_value = "synthetic:llama2-7b")]
    model: std::path::PathBuf,
    /// Devices, one replica each.
    #[arg(long, value_delimiter = ',', default_value = "cuda:0,cuda:1")]
    devices: Vec<String>,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Calibration windows and their length (random token ids).
    #[arg(long, default_value_t = 8)]
    windows: usize,
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Candidates per timed batch and blocks removed in each.
    #[arg(long, default_value_t = 32)]
    candidates: usize,
    #[arg(long, default_value_t = 6)]
    remove: usize,
    /// Timed batches (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dtype = evop::model::parse_dtype(&args.dtype)?;
    let mut workers = Vec::new();
    let mut load_s = Vec::new();
    let mut vocab = 0;
    for d in &args.devices {
        let device = evop::model::parse_device(d)?;
        let t = Instant::now();
        let model = load(&args.model, &LoadOptions { dtype, device })?;
        vocab = model.lm.info().vocab_size;
        let windows: Vec<Vec<u32>> = (0..args.windows)
            .map(|w| (0..args.seqlen).map(|i| ((i * 7919 + w * 104_729) % (vocab - 10) + 5) as u32).collect())
            .collect();
        let fitness = CalibrationFitness::new(model.lm.clone(), &windows, None, Objective::MeanNll, EvaluatorOptions::default())?;
        // Builds the dense cache now, outside the timed batches.
        fitness.evaluate(&[], Fidelity(args.windows as u64))?;
        load_s.push(t.elapsed().as_secs_f64());
        workers.push(fitness);
    }
    if vocab == 0 {
        bail!("--devices is empty");
    }
    let num_blocks = workers[0].model().num_blocks();
    let space = MaskSpace::new(num_blocks, args.remove, [0, num_blocks - 1])?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let batches: Vec<Vec<_>> =
        (0..=args.reps).map(|_| (0..args.candidates).map(|_| space.sample(&mut rng)).collect()).collect();
    println!("{} on {:?}; {} windows x {} tokens; {} candidates per batch; replica load + dense pass {:?} s",
        args.model.display(), args.devices, args.windows, args.seqlen, args.candidates,
        load_s.iter().map(|s| (s * 10.0).round() / 10.0).collect::<Vec<_>>());
    println!("\n| devices | evaluations/s | vs one device |\n|---:|---:|---:|");
    let full = Fidelity(args.windows as u64);
    let mut reference: Option<Vec<f64>> = None;
    let mut rows = Vec::new();
    let mut base = 0.0;
    let mut all: Vec<_> = workers.into_iter().map(Some).collect();
    for k in 1..=all.len() {
        let pool = WorkerPool::new(all.iter_mut().take(k).map(|w| w.take().unwrap()).collect())?;
        let mut times = Vec::new();
        for (b, masks) in batches.iter().enumerate() {
            let t = Instant::now();
            let values = pool.evaluate(masks, full)?;
            if b > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
            match &reference {
                None if b == 0 => reference = Some(values),
                Some(r) if b == 0 => {
                    let worst = r.iter().zip(&values).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
                    if worst > 1e-3 {
                        bail!("{k} devices disagree with one device: relative difference {worst:.2e}");
                    }
                }
                _ => {}
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let rate = args.candidates as f64 / times[times.len() / 2];
        if k == 1 {
            base = rate;
        }
        println!("| {k} | {rate:.2} | {:.2}x |", rate / base);
        rows.push(serde_json::json!({"devices": k, "evaluations_per_s": rate, "speedup": rate / base}));
        // Hand the workers back for the next, larger pool.
        for (slot, w) in all.iter_mut().zip(pool.into_workers()) {
            *slot = Some(w);
        }
    }
    if let Some(p) = &args.json {
        let doc = serde_json::json!({"model": args.model, "devices": args.devices, "dtype": args.dtype,
            "windows": args.windows, "seqlen": args.seqlen, "candidates": args.candidates, "load_s": load_s, "rows": rows});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
