//! `evop prune` across the ranks of an MPI job (feature `mpi`): `mpirun -np N evop prune ...` or
//! `srun -n N evop prune ...`. See docs/distributed.md.
//!
//! Rank 0 runs the whole command as a single process would (setup, calibration set, search,
//! baselines, evaluation, outputs, checkpoints); only the EvoP search's fitness batches are spread
//! over the ranks with `evop_mpi::QueueFitness` (a dynamic work queue; rank 0 evaluates too). The
//! other ranks print nothing: each loads the model once on its own device (`--device cuda` becomes
//! `cuda:{local_rank % visible GPUs}`), receives the calibration windows that rank 0 broadcasts,
//! builds the same `CalibrationFitness`, and serves masks until rank 0 says stop.
//!
//! The sequence every rank follows (collectives in the same order on every rank):
//! 1. local rank (launcher environment, else a shared-memory split);
//! 2. broadcast: the model path (rank 0 fetches the default model if needed) or rank 0's error;
//! 3. broadcast: the search job (windows, cluster labels, objective, loss, batch size), or "none"
//!    if rank 0 ended before its search;
//! 4. the queue's communicators (collective), serving, stop;
//! 5. gather: each rank's forward counts, summed into the report.
//!
//! A rank that fails outside the command's own result (a worker that cannot load the model or build
//! its fitness, a broken broadcast) prints its error and aborts the job (MPI_Abort), since the others
//! may be waiting in a collective; a rank that dies ends the job (MPI's default). The search's per-generation checkpoint (`<out>/checkpoint.json`)
//! and `--resume` then continue on whatever ranks are started next, with the same result: the search
//! runs on rank 0 alone and the values do not depend on which rank computed them.
//!
//! The EvoP search here is `evop::SearchJob::search_on` and `SearchJob::report` with the distributed
//! fitness in place of the local one (the same code as a single-process run: space, strategy, seeds,
//! termination, checkpoint and report), so that a run on N ranks follows the single-process
//! trajectory exactly; the CLI's MPI test compares the two.
//! `SearchSpec::screening` (a second, shorter fitness) is not mirrored and is refused.
use crate::common::ModelArgs;
use crate::experiment::{ExperimentArgs, MethodRun, Setup};
use crate::progress::SearchProgress;
use anyhow::{bail, Context, Result};
use evop::model::{EvaluatorOptions, ForwardCounts, LossKind};
use evop::search::Mask;
use evop::{CalibrationFitness, Objective, SearchJob};
use evop_mpi::mpi::rsmpi::topology::SimpleCommunicator;
use evop_mpi::mpi::rsmpi::traits::*;
use evop_mpi::mpi::{broadcast_bytes, gather_to_root, node_local_rank, MpiRoot, MpiWorker, ROOT};
use evop_mpi::{Backoff, QueueFitness, Transport};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Broadcast 1: what every rank loads.
#[derive(Serialize, Deserialize)]
enum Start {
    Model { path: PathBuf },
    Failed { error: String },
}

/// Broadcast 2: what the workers evaluate.
#[derive(Serialize, Deserialize)]
enum Job {
    Search { windows: Vec<Vec<u32>>, groups: Option<Vec<usize>>, objective: Objective, loss: LossKind, batch_size: usize },
    None,
}

/// Rank 0's MPI state while `prune::run` runs; the job broadcast happens at most once.
struct RootState {
    world: SimpleCommunicator,
    job_sent: bool,
}

thread_local! {
    static ROOT_STATE: RefCell<Option<RootState>> = const { RefCell::new(None) };
}

fn bcast_json<T: Serialize + for<'de> Deserialize<'de>>(world: &SimpleCommunicator, value: Option<&T>) -> Result<T> {
    let bytes = value.map(serde_json::to_vec).transpose()?;
    let got = broadcast_bytes(world, ROOT, bytes.as_deref());
    serde_json::from_slice(&got).context("decoding a broadcast from rank 0 (are all ranks running the same evop build?)")
}

/// The device this rank takes: `cuda` is spread over the visible GPUs by local rank.
fn rank_device(model: &ModelArgs, local_rank: usize) -> Result<String> {
    let (gpus, why) = evop_mpi::visible_gpus();
    Ok(evop_mpi::device_for_rank(&model.device, local_rank, gpus, &why)?)
}

/// `evop prune` under a launcher with more than one rank; otherwise exactly `prune::run`.
pub fn prune(args: crate::prune::Args) -> Result<()> {
    if !evop_mpi::launched_by_mpi()? {
        return crate::prune::run(args);
    }
    let (universe, _) = evop_mpi::mpi::rsmpi::initialize_with_threading(evop_mpi::mpi::rsmpi::Threading::Funneled)
        .context("initialising MPI (it was already initialised)")?;
    let world = universe.world();
    if world.size() == 1 {
        return crate::prune::run(args);
    }
    let rank = world.rank();
    if args.method != "evop" {
        // Every rank sees the same arguments; rank 0 reports, the others leave quietly.
        if rank == ROOT {
            bail!("--method {}: only the EvoP search runs across MPI ranks; run baselines without mpirun", args.method);
        }
        return Ok(());
    }
    // Errors of the outer `Result` leave other ranks waiting in a collective: end the job. The
    // inner one is the command's own result, returned once every rank is released.
    let outcome = if rank == ROOT { root(args, world) } else { worker(&args, &world).map(Ok) };
    match outcome {
        Ok(result) => {
            drop(universe);
            result
        }
        Err(e) => {
            eprintln!("evop: rank {rank}: {e:#}");
            universe.world().abort(1)
        }
    }
}

/// Rank 0: resolve the model once (fetching the default if missing), tell the workers, then run the
/// command as a single process would, with [`run_method`] spreading the search.
fn root(mut args: crate::prune::Args, world: SimpleCommunicator) -> Result<Result<()>> {
    let local_rank = node_local_rank(&world)?;
    let device = rank_device(&args.exp.model, local_rank);
    // Settings errors before the model is fetched.
    let path = crate::prune::check_settings(&args).and_then(|()| crate::common::resolve_model_path(args.exp.model.model.as_deref()));
    let (path, device) = match (path, device) {
        (Ok(p), Ok(d)) => (p, d),
        (Err(e), _) | (_, Err(e)) => {
            bcast_json(&world, Some(&Start::Failed { error: format!("{e:#}") }))?;
            return Ok(Err(e));
        }
    };
    bcast_json(&world, Some(&Start::Model { path: path.clone() }))?;
    args.exp.model.model = Some(path);
    args.exp.model.device = device;
    eprintln!("evop: {} MPI ranks; rank 0 on {}", world.size(), args.exp.model.device);
    ROOT_STATE.with(|s| *s.borrow_mut() = Some(RootState { world, job_sent: false }));
    let result = crate::prune::run_with(args, run_method);
    let state = ROOT_STATE.with(|s| s.borrow_mut().take()).expect("root state is set");
    if !state.job_sent {
        // Rank 0 ended before its search (an error, or an interrupted setup): release the workers.
        bcast_json(&state.world, Some(&Job::None))?;
    }
    Ok(result)
}

/// A worker rank: load the model, wait for the job, serve masks until rank 0 says stop.
fn worker(args: &crate::prune::Args, world: &SimpleCommunicator) -> Result<()> {
    let rank = world.rank();
    let local_rank = node_local_rank(world)?;
    let path = match bcast_json::<Start>(world, None)? {
        Start::Model { path } => path,
        // Rank 0 reports its own error and exits non-zero.
        Start::Failed { .. } => return Ok(()),
    };
    let mut model_args = args.exp.model.clone();
    model_args.model = Some(path);
    let loaded = rank_device(&model_args, local_rank).and_then(|d| {
        model_args.device = d;
        model_args.load()
    });
    let model = loaded.context("loading the model")?;
    tracing::info!(rank, device = %model_args.device, "model loaded");
    let Job::Search { windows, groups, objective, loss, batch_size } = bcast_json::<Job>(world, None)? else {
        return Ok(());
    };
    let transport = MpiWorker::new(world)?;
    let options = EvaluatorOptions { batch_size, loss, ..Default::default() };
    let fitness = CalibrationFitness::new(model.lm.clone(), &windows, groups.as_deref(), objective, options)
        .context("building the calibration evaluator")?;
    let served = evop_mpi::serve(&transport, &fitness, Backoff::WORKER)?;
    tracing::info!(rank, tasks = served.tasks, masks = served.masks, busy_s = served.busy_seconds, "worker done");
    let c = fitness.counts();
    gather_to_root(world, ROOT, &[c.block_forwards, c.head_forwards, c.candidates, served.masks]);
    Ok(())
}

/// Tasks go out most expensive first: a candidate starts from the dense state before its first
/// removed block (the evaluator's dense cache), so its cost is the kept blocks after that plus the head.
fn candidate_cost(m: &Mask) -> f64 {
    match m.removed().next() {
        Some(first) => (m.kept().filter(|&i| i > first).count() + 1) as f64,
        None => 1.0,
    }
}

/// `experiment::run_method` with the EvoP search spread over the MPI ranks when rank 0 runs under
/// a launcher (see [`prune`]); otherwise exactly `experiment::run_method`.
#[allow(clippy::too_many_arguments)]
pub fn run_method(
    args: &ExperimentArgs,
    setup: &Setup,
    calib: &evop::data::CalibrationSet,
    method: &str,
    n: usize,
    checkpoint: Option<(PathBuf, bool)>,
    interrupt: Option<Arc<AtomicBool>>,
    plots_dir: Option<&std::path::Path>,
) -> Result<MethodRun> {
    let distributed = method == "evop" && ROOT_STATE.with(|s| s.borrow().as_ref().is_some_and(|st| !st.job_sent));
    if !distributed {
        return crate::experiment::run_method(args, setup, calib, method, n, checkpoint, interrupt, plots_dir);
    }
    let (mut checkpoint, mut interrupt) = (checkpoint, interrupt);
    ROOT_STATE.with(|s| {
        let mut s = s.borrow_mut();
        let state = s.as_mut().expect("root state is set");
        crate::experiment::run_evop(args, setup, calib, n, plots_dir, &mut |spec: evop::SearchSpec| {
            distributed_search(&state.world, &mut state.job_sent, args, setup, calib, n, spec, checkpoint.take(), interrupt.take())
        })
    })
}

/// The search step of [`crate::experiment::run_evop`] over the ranks: broadcasts the job, serves
/// the fitness batches through the queue, gathers the workers' forward counts into the report.
#[allow(clippy::too_many_arguments)]
fn distributed_search(
    world: &SimpleCommunicator,
    job_sent: &mut bool,
    args: &ExperimentArgs,
    setup: &Setup,
    calib: &evop::data::CalibrationSet,
    n: usize,
    spec: evop::SearchSpec,
    checkpoint: Option<(PathBuf, bool)>,
    interrupt: Option<Arc<AtomicBool>>,
) -> Result<(evop::PruneReport, serde_json::Value)> {
    if *job_sent {
        bail!("the distributed search runs once per job (its workers have been released)");
    }
    let lm = setup.model.lm.clone();
    let l = lm.num_blocks();
    let windows = calib.token_windows();
    let start = Instant::now();
    if spec.screening.is_some() {
        // `SearchJob::run`'s screened search (a second, shorter fitness) is not mirrored here yet.
        bail!("screening is not supported by the distributed search: pass --screen-windows 0 (and no --screen-tokens) under mpirun");
    }
    let loss = args.loss_kind()?;
    let job = Job::Search { windows: windows.clone(), groups: calib.clusters.clone(), objective: args.objective, loss, batch_size: args.batch_size };
    bcast_json(world, Some(&job))?;
    *job_sent = true;
    let transport = MpiRoot::new(world)?;
    let workers = transport.workers();
    let options = EvaluatorOptions { batch_size: args.batch_size, loss, ..Default::default() };
    let (search, queue_stats) = match CalibrationFitness::new(lm.clone(), &windows, calib.clusters.as_deref(), args.objective, options.clone()) {
        Ok(local) => {
            let queue = QueueFitness::new(transport, local).order_by_cost(candidate_cost);
            let mut search_job = SearchJob {
                remove: n,
                objective: args.objective,
                search: spec.clone(),
                evaluator: options,
                seed: args.seed,
                checkpoint,
                interrupt,
                observers: vec![Box::new(SearchProgress::new(args.generations, &format!("evop n={n}")))],
            };
            let outcome = search_job.search_on(&queue, l).map(|o| (o, search_job)).map_err(anyhow::Error::from);
            // Always release the workers, even after a failed search: they leave `serve` and join the gather.
            queue.shutdown()?;
            let stats = queue.stats();
            (outcome.map(|o| (o, queue)), stats)
        }
        Err(e) => {
            // The workers are serving already: stop them, then fail.
            let (tag, words) = evop_mpi::Request::Stop.encode();
            for peer in 0..workers {
                let _ = transport.send(peer, tag, &words);
            }
            (Err(anyhow::Error::from(e).context("building rank 0's calibration evaluator")), evop_mpi::QueueStats::default())
        }
    };
    let gathered = gather_to_root(world, ROOT, &[0u64; 4]).expect("rank 0 is the root");
    let ((outcome, search_job), queue) = search?;
    let local = queue.local();
    let mut counts = local.counts();
    for g in &gathered[1..] {
        counts = ForwardCounts {
            block_forwards: counts.block_forwards + g[0],
            head_forwards: counts.head_forwards + g[1],
            candidates: counts.candidates + g[2],
        };
    }
    let report = search_job.report(outcome, local, counts, start.elapsed().as_secs_f64())?;
    let s = &queue_stats;
    eprintln!(
        "evop: search over {} ranks: masks per rank {:?}, busy seconds per rank {:?}, {} messages / {} bytes out, {} / {} in",
        workers + 1,
        s.masks_by,
        s.busy_seconds_by.iter().map(|x| (x * 100.0).round() / 100.0).collect::<Vec<_>>(),
        s.messages_sent,
        s.bytes_sent,
        s.messages_received,
        s.bytes_received
    );
    let distributed = serde_json::json!({
        "ranks": workers + 1,
        "masks_by_rank": s.masks_by,
        "tasks_by_rank": s.tasks_by,
        "busy_seconds_by_rank": s.busy_seconds_by,
        "wall_seconds_in_batches": s.wall_seconds,
        "messages_sent": s.messages_sent,
        "messages_received": s.messages_received,
        "bytes_sent": s.bytes_sent,
        "bytes_received": s.bytes_received,
        "job_bytes": serde_json::to_vec(&job)?.len(),
    });
    Ok((report, distributed))
}

/// Any other command under a launcher with more than one rank is refused (it would run N times).
pub fn single_process_only() -> Result<()> {
    if !evop_mpi::launched_by_mpi()? {
        return Ok(());
    }
    let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"].iter().find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok());
    if size.is_some_and(|n| n > 1) {
        bail!("this command runs on one process; only `evop prune` (EvoP) is spread over MPI ranks");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use evop::search::MaskSpace;

    #[test]
    fn cost_counts_blocks_after_the_first_removed_one() {
        let space = MaskSpace::new(8, 2, []).unwrap();
        let m = |r: &[usize]| Mask::from_removed(&space, r).unwrap();
        assert_eq!(candidate_cost(&m(&[1, 2])), 6.0); // blocks 3..=7 and the head
        assert_eq!(candidate_cost(&m(&[6, 7])), 1.0);
        assert_eq!(candidate_cost(&m(&[0, 7])), 7.0);
    }
}
