//! The work queue over real MPI (feature `mpi`): the test starts itself under
//! `mpirun -np 3 --oversubscribe` and each rank runs [`rank_main`]. Checked on the root: a GA and a
//! (1+lambda) search through the queue equal the single-process runs, slow and fast ranks share
//! the work dynamically, a worker's failure reaches the root and the queue goes on, and the
//! broadcast, gather and local-rank helpers agree across ranks.
#![cfg(feature = "mpi")]

use std::process::Command;
use std::time::Duration;

use evop_mpi::mpi::rsmpi::traits::*;
use evop_mpi::mpi::{broadcast_bytes, gather_to_root, node_local_rank, MpiRoot, MpiWorker, ROOT};
use evop_mpi::{serve, Backoff, QueueError, QueueFitness};
use evop_search::{BatchFitness, Fidelity, Fitness, GaParams, Mask, MaskSpace, OnePlusLambdaParams, Search, Termination};

const CHILD: &str = "EVOP_MPI_TEST_CHILD";

fn score(m: &Mask, f: Fidelity) -> f64 {
    m.removed().map(|i| ((i * 37 % 11) as f64 - 4.5).powi(2)).sum::<f64>() + 1.0 / (1 + f.0.min(64)) as f64
}

#[derive(Debug, thiserror::Error)]
#[error("rank {rank} refuses fidelity 1234")]
struct Refused {
    rank: i32,
}

/// Rank 1 sleeps 50 ms per mask, the others 2 ms (25x: on a loaded 2-core machine rank 2's tasks
/// took about 9 ms each, and 10x left too little room); rank 2 refuses fidelity 1234 (which only the
/// failure check asks for).
fn fitness(rank: i32) -> impl Fitness + Sync {
    let delay = Duration::from_millis(if rank == 1 { 50 } else { 2 });
    BatchFitness::new(move |b: &[Mask], f| {
        if rank == 2 && f == Fidelity(1234) {
            return Err(Refused { rank });
        }
        std::thread::sleep(delay * b.len() as u32);
        Ok(b.iter().map(|m| score(m, f)).collect())
    })
    .max_fidelity(Fidelity(64))
}

fn rank_main() {
    let (universe, _) = evop_mpi::mpi::rsmpi::initialize_with_threading(evop_mpi::mpi::rsmpi::Threading::Funneled).expect("MPI init");
    let world = universe.world();
    let rank = world.rank();
    assert_eq!(world.size(), 3, "run with -np 3");

    // Helpers: broadcast, gather, local rank.
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let got = broadcast_bytes(&world, ROOT, (rank == ROOT).then_some(&blob[..]));
    assert_eq!(got, blob, "rank {rank}: broadcast");
    let local = node_local_rank(&world).expect("local rank");
    let all = gather_to_root(&world, ROOT, &[local as u64, 10 * rank as u64]);
    if rank == ROOT {
        assert_eq!(all.unwrap(), vec![vec![0, 0], vec![1, 10], vec![2, 20]], "one node: local ranks equal world ranks");
    }

    let space = MaskSpace::new(24, 5, [0, 23]).unwrap();
    let ga = || Search::new(space.clone(), GaParams::new().population(10).check().unwrap()).seed(3).until(Termination::MaxGenerations(6));
    let es = || Search::new(space.clone(), OnePlusLambdaParams::new().lambda(6).check().unwrap()).seed(4).until(Termination::MaxGenerations(4));
    if rank == ROOT {
        let q = QueueFitness::new(MpiRoot::new(&world).unwrap(), fitness(rank)).root_evaluates(false);
        let g = ga().run(&q).unwrap();
        let e = es().run(&q).unwrap();
        // One large batch: the 25x slower rank 1 should get a small share of it.
        let before = q.stats();
        let mut rng = rand::rng();
        let large: Vec<Mask> = (0..48).map(|_| space.sample(&mut rng)).collect();
        q.evaluate(&large, Fidelity(64)).unwrap();
        let stats = q.stats();
        let share = |k: usize| stats.masks_by[k] - before.masks_by[k];
        // The failure check: with two workers and ten tasks, rank 2 (worker 1) surely gets one.
        let batch: Vec<Mask> = (2..12).map(|j| Mask::from_removed(&space, &[1, j, j + 1, j + 2, j + 3]).unwrap()).collect();
        let failed = q.evaluate(&batch, Fidelity(1234));
        let after = q.evaluate(&[space.sample(&mut rand::rng())], Fidelity(64));
        q.shutdown().unwrap();

        let single = fitness(0);
        let (sg, se) = (ga().run(&single).unwrap(), es().run(&single).unwrap());
        assert_eq!((g.best.clone(), g.best_value.to_bits(), g.evaluations), (sg.best, sg.best_value.to_bits(), sg.evaluations));
        assert_eq!((e.best.clone(), e.best_value.to_bits(), e.evaluations), (se.best, se.best_value.to_bits(), se.evaluations));
        assert_eq!(g.population, sg.population);
        assert!(share(2) >= 3 * share(1), "dynamic queue: rank 1 took {}, rank 2 took {}", share(1), share(2));
        assert_eq!(stats.masks_by[0], 0);
        match failed {
            Err(QueueError::Worker { peer: 1, message }) => assert_eq!(message, "rank 2 refuses fidelity 1234"),
            other => panic!("expected rank 2's refusal, got {other:?}"),
        }
        assert!(after.is_ok(), "{after:?}");
        println!(
            "root: identical to one process (GA best {} after {} evaluations); large batch split {}:{}; tasks by rank {:?}; {} bytes sent, {} received",
            g.best, g.evaluations, share(1), share(2), stats.tasks_by, stats.bytes_sent, stats.bytes_received
        );
    } else {
        let w = MpiWorker::new(&world).unwrap();
        let stats = serve(&w, &fitness(rank), Backoff::WORKER).unwrap();
        println!("rank {rank}: served {} tasks, {} failures", stats.tasks, stats.failures);
    }
}

#[test]
fn queue_over_mpirun_matches_one_process() {
    if std::env::var_os(CHILD).is_some() {
        rank_main();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("mpirun")
        .args(["--oversubscribe", "--allow-run-as-root", "-np", "3"])
        .arg(&exe)
        .args(["--exact", "queue_over_mpirun_matches_one_process", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap_or_else(|e| panic!("running mpirun (install Open MPI: apt-get install openmpi-bin libopenmpi-dev): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mpirun failed:\n{text}");
    assert!(text.contains("root: identical to one process"), "{text}");
    assert!(text.contains("rank 1: served") && text.contains("rank 2: served"), "{text}");
    println!("{text}");
}
