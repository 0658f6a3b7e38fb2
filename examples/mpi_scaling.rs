//! Candidate evaluations per second of the MPI evaluator (`evop_mpi::QueueFitness`, issue 12): a
//! fixed seeded batch of random masks is scored through the dynamic work queue over every rank of
//! the job (rank 0 evaluates too), as `evop prune` does under mpirun. Every rank loads the model on
//! its own device (`cuda` -> `cuda:{local_rank % visible GPUs}`), rank 0 draws the random token
//! windows and broadcasts them, every rank builds the same `CalibrationFitness`.
//!
//! Rank 0 prints one JSON object: per-rank model-load and evaluator-setup seconds, the timed
//! batches, evaluations per second, per-candidate seconds, message counts and bytes, and a digest
//! of the values (equal digests across runs with 1, 2, 4 ranks mean bit-identical fitness values).
//! With one rank it also times the whole batch in one `evaluate` call (the single-process path,
//! prefix sharing across the batch) and reports how far those values are from the queue's.
//!
//! ```text
//! cargo build --release --features cuda,mpi --example mpi_scaling
//! mpirun -np 4 target/release/examples/mpi_scaling --device cuda --json scaling-4.json
//! ```
use anyhow::{bail, Context, Result};
use clap::Parser;
use evop::model::{load, EvaluatorOptions, LoadOptions};
use evop::search::{Fitness, Mask, MaskSpace};
use evop::{CalibrationFitness, Objective};
use evop_mpi::mpi::rsmpi::traits::*;
use evop_mpi::mpi::{broadcast_bytes, gather_to_root, node_local_rank, MpiRoot, MpiWorker, ROOT};
use evop_mpi::{Backoff, QueueFitness};
use rand::SeedableRng;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model: a GGUF file, an HF directory or `synthetic:NAME` (random weights of a published shape).
    #[arg(long, default_value = "synthetic:llama2-7b")]
    model: std::path::PathBuf,
    /// Device; `cuda` is spread over the visible GPUs by local rank.
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Calibration windows and their length (random token ids drawn by rank 0).
    #[arg(long, default_value_t = 8)]
    windows: usize,
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Windows per forward batch of the evaluator.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Candidates per timed batch (distinct random masks) and blocks removed in each.
    #[arg(long, default_value_t = 64)]
    candidates: usize,
    #[arg(long, default_value_t = 8)]
    remove: usize,
    /// Timed batches, each of fresh masks (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Masks per task of the work queue.
    #[arg(long, default_value_t = 1)]
    chunk: usize,
    /// Seed of the token windows and the masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// FNV-1a over the values' bit patterns.
fn digest(values: &[f64]) -> String {
    let h = values.iter().flat_map(|v| v.to_bits().to_le_bytes()).fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (universe, _) = evop_mpi::mpi::rsmpi::initialize_with_threading(evop_mpi::mpi::rsmpi::Threading::Funneled).context("initialising MPI")?;
    let world = universe.world();
    let result = run(&args, &world);
    if let Err(e) = &result {
        if world.size() > 1 {
            // The other ranks may wait in a collective: end the job rather than hang in MPI_Finalize.
            eprintln!("rank {}: {e:#}", world.rank());
            world.abort(1);
        }
    }
    result
}

fn run(args: &Args, world: &evop_mpi::mpi::rsmpi::topology::SimpleCommunicator) -> Result<()> {
    let (rank, size) = (world.rank(), world.size() as usize);
    let local_rank = node_local_rank(world)?;
    let (gpus, why) = evop_mpi::visible_gpus();
    let device_name = evop_mpi::device_for_rank(&args.device, local_rank, gpus, &why)?;
    let dtype = evop::model::parse_dtype(&args.dtype)?;

    // Every rank loads the model on its device.
    let t = Instant::now();
    let model = load(&args.model, &LoadOptions { dtype, device: evop::model::parse_device(&device_name)? })
        .with_context(|| format!("rank {rank}: loading {} on {device_name}", args.model.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let l = model.lm.num_blocks();
    let vocab = model.lm.info().vocab_size;
    if args.remove + 2 > l || args.windows == 0 || args.seqlen < 2 {
        bail!("--remove {} of {l} blocks (ends protected), --windows {}, --seqlen {}: out of range", args.remove, args.windows, args.seqlen);
    }

    // Rank 0 draws the windows and broadcasts them.
    let t = Instant::now();
    let drawn = (rank == ROOT).then(|| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
        let ids: Vec<u32> = (0..args.windows * args.seqlen).map(|_| rand::Rng::random_range(&mut rng, 0..vocab as u32)).collect();
        ids.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()
    });
    let bytes = broadcast_bytes(world, ROOT, drawn.as_deref());
    let broadcast_s = t.elapsed().as_secs_f64();
    let ids: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let windows: Vec<Vec<u32>> = ids.chunks(args.seqlen).map(<[u32]>::to_vec).collect();

    // Every rank builds the fitness (dense pass) and warms up on one mask of its own.
    let t = Instant::now();
    let options = EvaluatorOptions { batch_size: args.batch_size, ..Default::default() };
    let fitness = CalibrationFitness::new(model.lm.clone(), &windows, None, Objective::MeanNll, options.clone())?;
    let space = MaskSpace::new(l, args.remove, [0, l - 1])?;
    let warm = Mask::from_removed(&space, &(1..=args.remove).map(|i| (i + rank as usize) % (l - 2) + 1).collect::<Vec<_>>())
        .or_else(|_| Mask::from_removed(&space, &(1..=args.remove).collect::<Vec<_>>()))?;
    fitness.evaluate(&[warm], fitness.max_fidelity())?;
    let setup_s = t.elapsed().as_secs_f64();
    let loads = gather_to_root(world, ROOT, &[load_s, setup_s]);

    if rank != ROOT {
        let worker = MpiWorker::new(world)?;
        let served = evop_mpi::serve(&worker, &fitness, Backoff::WORKER)?;
        gather_to_root(world, ROOT, &[served.masks as f64, served.busy_seconds]);
        return Ok(());
    }

    // Rank 0: fresh distinct masks for every timed batch.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed ^ 0x6D61_736B);
    let mut seen = std::collections::HashSet::new();
    let mut batches: Vec<Vec<Mask>> = Vec::new();
    for _ in 0..args.reps.max(1) {
        let mut b = Vec::new();
        if (seen.len() + args.candidates) as u128 > space.size() {
            bail!("the space of {} masks is too small for {} x {} distinct candidates", space.size(), args.reps, args.candidates);
        }
        while b.len() < args.candidates {
            let m = space.sample(&mut rng);
            if seen.insert(m.clone()) {
                b.push(m);
            }
        }
        batches.push(b);
    }
    let full = fitness.max_fidelity();
    let queue = QueueFitness::new(MpiRoot::new(world)?, fitness).chunk(args.chunk);
    let mut times = Vec::new();
    let mut values = Vec::new();
    for b in &batches {
        let t = Instant::now();
        values.extend(queue.evaluate(b, full)?);
        times.push(t.elapsed().as_secs_f64());
    }
    let stats = queue.stats();
    queue.shutdown()?;
    let served = gather_to_root(world, ROOT, &[0.0, 0.0]).expect("root");

    // One rank: the single-process path, the whole batch in one call.
    let direct = if size == 1 {
        // A fresh evaluator, so nothing the queue's run left behind is reused.
        let local = CalibrationFitness::new(model.lm.clone(), &windows, None, Objective::MeanNll, options.clone())?;
        local.evaluate(&[], full)?;
        let t = Instant::now();
        let mut v = Vec::new();
        for b in &batches {
            v.extend(local.evaluate(b, full)?);
        }
        let secs = t.elapsed().as_secs_f64();
        let worst = values.iter().zip(&v).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
        Some(serde_json::json!({
            "seconds": secs,
            "evaluations_per_s": (args.candidates * batches.len()) as f64 / secs,
            "bit_identical": v.iter().zip(&values).all(|(a, b)| a.to_bits() == b.to_bits()),
            "max_relative_difference": worst,
        }))
    } else {
        None
    };

    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let busy: f64 = stats.busy_seconds_by.iter().sum();
    let doc = serde_json::json!({
        "ranks": size,
        "model": args.model, "dtype": args.dtype, "device_rank0": device_name,
        "windows": args.windows, "seqlen": args.seqlen, "batch_size": args.batch_size,
        "candidates": args.candidates, "remove": args.remove, "chunk": args.chunk, "seed": args.seed,
        "load_seconds_by_rank": loads.as_ref().map(|v| v.iter().map(|x| x[0]).collect::<Vec<_>>()),
        "setup_seconds_by_rank": loads.as_ref().map(|v| v.iter().map(|x| x[1]).collect::<Vec<_>>()),
        "broadcast_bytes": bytes.len(), "broadcast_seconds": broadcast_s,
        "batch_seconds": times,
        "evaluations_per_s": args.candidates as f64 / median,
        "per_candidate_busy_seconds": busy / stats.masks as f64,
        "masks_by_rank": stats.masks_by,
        "busy_seconds_by_rank": stats.busy_seconds_by,
        "worker_reports": served,
        "messages_sent": stats.messages_sent, "messages_received": stats.messages_received,
        "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
        "values_digest": digest(&values),
        "direct_single_process": direct,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    println!("{text}");
    if let Some(p) = &args.json {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
