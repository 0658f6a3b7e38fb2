//! The work queue over the in-process transport: order, dynamic balance, failures, shutdown, and a
//! search through the queue that follows the single-process trajectory exactly.
use std::time::Duration;

use evop_mpi::wire::Reply;
use evop_mpi::{in_process, serve, Backoff, QueueError, QueueFitness, Request, WorkerTransport};
use evop_search::{
    BatchFitness, Fidelity, Fitness, FnFitness, GaParams, Mask, MaskSpace, OnePlusLambdaParams, Outcome, Search, Termination,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn score(m: &Mask) -> f64 {
    m.removed().map(|i| ((i * 37 % 11) as f64 - 4.5).powi(2)).sum::<f64>() + m.removed().next().unwrap_or(0) as f64 * 0.01
}

fn masks(n: usize, seed: u64) -> Vec<Mask> {
    let space = MaskSpace::new(40, 9, [0, 39]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| space.sample(&mut rng)).collect()
}

/// Runs `root` with `n` in-process workers serving `worker_fitness(k)`; returns root's result and
/// each worker's serve result.
fn with_workers<W, R>(
    n: usize,
    worker_fitness: impl Fn(usize) -> W + Sync,
    root: impl FnOnce(evop_mpi::InProcessRoot) -> R,
) -> (R, Vec<Result<evop_mpi::ServeStats, QueueError>>)
where
    W: Fitness,
{
    let (root_end, ends) = in_process(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .enumerate()
            .map(|(k, end)| {
                let f = &worker_fitness;
                s.spawn(move || serve(&end, &f(k), Backoff::WORKER))
            })
            .collect();
        let r = root(root_end);
        (r, handles.into_iter().map(|h| h.join().unwrap()).collect())
    })
}

#[test]
fn values_come_back_in_batch_order_for_any_chunking() {
    let ms = masks(57, 1);
    let expected: Vec<f64> = ms.iter().map(score).collect();
    for (workers, chunk, root_evaluates, by_cost) in
        [(0, 1, true, false), (1, 1, false, false), (3, 1, true, false), (3, 4, true, true), (2, 100, false, true), (4, 2, true, true)]
    {
        let (got, served) = with_workers(workers, |_| FnFitness(score), |t| {
            let mut q = QueueFitness::new(t, FnFitness(score)).chunk(chunk).root_evaluates(root_evaluates);
            if by_cost {
                q = q.order_by_cost(|m: &Mask| m.removed().next().map_or(0.0, |i| 40.0 - i as f64));
            }
            let a = q.evaluate(&ms, Fidelity::FULL).unwrap();
            let b = q.evaluate(&ms[..5], Fidelity(3)).unwrap();
            let stats = q.stats();
            q.shutdown().unwrap();
            (a, b, stats)
        });
        let (a, b, stats) = got;
        assert_eq!(a, expected, "workers {workers} chunk {chunk}");
        assert_eq!(b, expected[..5]);
        assert_eq!(stats.batches, 2);
        assert_eq!(stats.masks, 62);
        assert_eq!(stats.masks_by.iter().sum::<u64>(), 62);
        if !root_evaluates && workers > 0 {
            assert_eq!(stats.masks_by[0], 0, "the root was told not to evaluate");
        }
        let served_masks: u64 = served.into_iter().map(|r| r.unwrap().masks).sum();
        assert_eq!(served_masks, stats.masks_by[1..].iter().sum::<u64>());
        assert_eq!(stats.messages_sent, stats.tasks_by[1..].iter().sum::<u64>());
        assert_eq!(stats.messages_received, stats.messages_sent);
    }
}

#[test]
fn a_fast_worker_takes_more_tasks() {
    // Worker 0 takes 30 ms per mask, worker 1 takes 2 ms: a static split would give each half.
    let ms = masks(40, 2);
    let slow = |k: usize| {
        BatchFitness::new(move |b: &[Mask], _| {
            std::thread::sleep(Duration::from_millis(if k == 0 { 30 } else { 2 }) * b.len() as u32);
            Ok::<_, std::convert::Infallible>(b.iter().map(score).collect())
        })
    };
    let ((values, stats), _) = with_workers(2, slow, |t| {
        let q = QueueFitness::new(t, FnFitness(score)).root_evaluates(false);
        let v = q.evaluate(&ms, Fidelity::FULL).unwrap();
        (v, q.stats())
    });
    assert_eq!(values, ms.iter().map(score).collect::<Vec<_>>());
    assert!(stats.masks_by[2] >= 3 * stats.masks_by[1], "fast worker should do most of the work: {:?}", stats.masks_by);
    assert!(stats.busy_seconds_by[1] > 0.02, "{:?}", stats.busy_seconds_by);
}

#[derive(Debug, thiserror::Error)]
#[error("device lost on block {0}")]
struct Lost(usize);

#[test]
fn a_failing_worker_fails_the_batch_and_the_queue_goes_on() {
    // Worker 1 fails on masks that remove block 5; the first batch holds only such masks (so worker
    // 1 surely gets one), the second none.
    let all = masks(200, 3);
    let ms: Vec<Mask> = all.iter().filter(|m| m.is_removed(5)).take(6).cloned().collect();
    let clean: Vec<Mask> = all.iter().filter(|m| !m.is_removed(5)).take(20).cloned().collect();
    assert_eq!(ms.len(), 6);
    let flaky = |k: usize| {
        BatchFitness::new(move |b: &[Mask], _| {
            if k == 1 {
                if let Some(m) = b.iter().find(|m| m.is_removed(5)) {
                    return Err(Lost(m.removed().next().unwrap()));
                }
            }
            Ok(b.iter().map(score).collect())
        })
    };
    let ((first, second), served) = with_workers(2, flaky, |t| {
        let q = QueueFitness::new(t, FnFitness(score)).root_evaluates(false);
        let first = q.evaluate(&ms, Fidelity::FULL);
        let second = q.evaluate(&clean, Fidelity::FULL).map(|v| (v, clean.iter().map(score).collect::<Vec<_>>()));
        (first, second)
    });
    match first {
        Err(QueueError::Worker { peer: 1, message }) => assert!(message.starts_with("device lost on block"), "{message}"),
        other => panic!("expected worker 1's failure, got {other:?}"),
    }
    let (v, expected) = second.unwrap();
    assert_eq!(v, expected);
    assert!(served[1].as_ref().unwrap().failures >= 1);
}

#[test]
fn local_failures_and_wrong_counts_are_reported() {
    let ms = masks(6, 4);
    let failing = BatchFitness::new(|_: &[Mask], _| Err::<Vec<f64>, _>(Lost(1)));
    let (r, _) = with_workers(0, |_| FnFitness(score), |t| QueueFitness::new(t, failing).evaluate(&ms, Fidelity::FULL));
    assert!(matches!(r, Err(QueueError::Local(_))), "{r:?}");

    let short = |_| BatchFitness::new(|b: &[Mask], _| Ok::<_, std::convert::Infallible>(vec![0.0; b.len() - 1]));
    let (r, _) = with_workers(1, short, |t| QueueFitness::new(t, FnFitness(score)).root_evaluates(false).evaluate(&ms, Fidelity::FULL));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("worker 0 failed: returned 0 values for 1 masks"), "{e}");

    let (r, _) = with_workers(0, |_| FnFitness(score), |t| {
        let other = Mask::from_removed(&MaskSpace::new(12, 1, []).unwrap(), &[3]).unwrap();
        QueueFitness::new(t, FnFitness(score)).evaluate(&[ms[0].clone(), other], Fidelity::FULL)
    });
    assert!(matches!(r, Err(QueueError::MixedLengths { index: 1, expected: 40, found: 12 })), "{r:?}");
}

#[test]
fn shutdown_stops_workers_and_later_batches() {
    let ms = masks(4, 5);
    let (r, served) = with_workers(3, |_| FnFitness(score), |t| {
        let q = QueueFitness::new(t, FnFitness(score));
        q.shutdown().unwrap();
        q.shutdown().unwrap();
        q.evaluate(&ms, Fidelity::FULL)
    });
    assert!(matches!(r, Err(QueueError::Stopped)));
    assert!(served.iter().all(|s| s.as_ref().unwrap().tasks == 0));
    // Dropping the queue stops the workers too.
    let (_, served) = with_workers(2, |_| FnFitness(score), |t| {
        let q = QueueFitness::new(t, FnFitness(score));
        q.evaluate(&ms, Fidelity::FULL).unwrap()
    });
    assert!(served.iter().all(Result::is_ok));
}

#[test]
fn a_reply_to_the_wrong_task_is_a_protocol_error() {
    let ms = masks(3, 6);
    let (root, mut ends) = in_process(1);
    let rogue = ends.pop().unwrap();
    let h = std::thread::spawn(move || loop {
        if let Some((tag, words)) = rogue.try_recv().unwrap() {
            match Request::decode(tag, &words).unwrap() {
                Request::Task(t) => {
                    let (tag, words) = Reply::Values { id: t.id + 100, values: vec![0.0; t.masks.len()], seconds: 0.0 }.encode();
                    rogue.send(tag, &words).unwrap();
                }
                Request::Stop => return,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    });
    let q = QueueFitness::new(root, FnFitness(score)).root_evaluates(false);
    let e = q.evaluate(&ms, Fidelity::FULL).unwrap_err();
    assert!(matches!(e, QueueError::Protocol { peer: 0, .. }), "{e:?}");
    drop(q);
    h.join().unwrap();
}

fn same_run(a: &Outcome, b: &Outcome) {
    assert_eq!(a.best, b.best);
    assert_eq!(a.best_value.to_bits(), b.best_value.to_bits());
    assert_eq!((a.generations, a.evaluations, a.cache_hits), (b.generations, b.evaluations, b.cache_hits));
    assert_eq!(a.population, b.population);
    let strip = |o: &Outcome| o.history.iter().map(|r| (r.generation, r.best, r.best_mask.clone(), r.mean, r.evaluations)).collect::<Vec<_>>();
    assert_eq!(strip(a), strip(b));
}

#[test]
fn searches_through_the_queue_follow_the_single_process_trajectory() {
    let space = MaskSpace::new(40, 9, [0, 39]).unwrap();
    // A fidelity-aware objective for the (1+lambda) EA's multi-step selection.
    let fit = |m: &Mask, f: Fidelity| score(m) + 1.0 / (1 + f.0.min(64)) as f64;
    let batch = || BatchFitness::new(move |b: &[Mask], f| Ok::<_, std::convert::Infallible>(b.iter().map(|m| fit(m, f)).collect())).max_fidelity(Fidelity(64));
    let ga = || Search::new(space.clone(), GaParams::new().population(12).check().unwrap()).seed(11).until(Termination::MaxGenerations(8));
    let es = || {
        Search::new(space.clone(), OnePlusLambdaParams::new().lambda(6).check().unwrap()).seed(12).until(Termination::MaxGenerations(6))
    };
    let single_ga = ga().run(&batch()).unwrap();
    let single_es = es().run(&batch()).unwrap();
    for workers in [1, 3] {
        let ((g, e), _) = with_workers(workers, |_| batch(), |t| {
            let q = QueueFitness::new(t, batch()).chunk(2);
            (ga().run(&q).unwrap(), es().run(&q).unwrap())
        });
        same_run(&g, &single_ga);
        same_run(&e, &single_es);
    }
}

/// A transport whose only "worker" answers as peer 5.
struct Misaddressed(std::cell::RefCell<Option<Vec<u64>>>);

impl evop_mpi::Transport for Misaddressed {
    type Error = std::convert::Infallible;
    fn workers(&self) -> usize {
        1
    }
    fn send(&self, _: usize, tag: i32, words: &[u64]) -> Result<(), Self::Error> {
        if let Ok(Request::Task(t)) = Request::decode(tag, words) {
            *self.0.borrow_mut() = Some(Reply::Values { id: t.id, values: vec![1.0; t.masks.len()], seconds: 0.0 }.encode().1);
        }
        Ok(())
    }
    fn try_recv(&self) -> Result<Option<evop_mpi::Incoming>, Self::Error> {
        Ok(self.0.borrow_mut().take().map(|w| (5, evop_mpi::wire::TAG_VALUES, w)))
    }
}

#[test]
fn a_message_from_an_unknown_peer_is_an_error() {
    let q = QueueFitness::new(Misaddressed(Default::default()), FnFitness(score)).root_evaluates(false);
    let e = q.evaluate(&masks(2, 7), Fidelity::FULL).unwrap_err();
    assert!(matches!(e, QueueError::UnknownPeer { peer: 5, workers: 1 }), "{e:?}");
}
