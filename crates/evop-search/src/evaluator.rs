//! Parallel adapters that turn simpler objectives into a batch [`Fitness`]:
//!
//! - [`ParallelFitness`]: a per-mask closure run on a private rayon pool (CPU-bound fitness).
//! - [`WorkerPool`]: several batch fitnesses (one per device), each given a contiguous share of the batch
//!   on its own thread; results come back in the batch's order.
//!
//! Both keep the batch order, and neither touches the search's RNG, so results do not depend on the number
//! of threads or workers.

use rayon::prelude::*;

use crate::error::{BoxError, Result, SearchError};
use crate::fitness::{Fidelity, Fitness};
use crate::mask::Mask;

/// A per-mask closure `(mask, fidelity) -> Result<f64, E>` evaluated on a rayon pool of its own.
pub struct ParallelFitness<F> {
    f: F,
    pool: rayon::ThreadPool,
    max_fidelity: Fidelity,
}

impl<F> ParallelFitness<F> {
    /// Runs `f` on `threads` threads (0 = rayon's default, one per core); maximum fidelity
    /// [`Fidelity::FULL`] unless set with [`ParallelFitness::max_fidelity`].
    pub fn new(threads: usize, f: F) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("evop-search-{i}"))
            .build()
            .map_err(|e| SearchError::ThreadPool(e.to_string()))?;
        Ok(ParallelFitness { f, pool, max_fidelity: Fidelity::FULL })
    }

    /// Sets the fidelity of a full evaluation.
    pub fn max_fidelity(mut self, fidelity: Fidelity) -> Self {
        self.max_fidelity = fidelity;
        self
    }

    /// Number of threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl<F, E> Fitness for ParallelFitness<F>
where
    F: Fn(&Mask, Fidelity) -> std::result::Result<f64, E> + Sync,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> std::result::Result<Vec<f64>, E> {
        self.pool.install(|| masks.par_iter().map(|m| (self.f)(m, fidelity)).collect())
    }
    fn max_fidelity(&self) -> Fidelity {
        self.max_fidelity
    }
}

/// Why a [`WorkerPool`] batch failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A worker's fitness returned an error.
    #[error("worker {worker} failed")]
    Failed { worker: usize, #[source] source: BoxError },
    /// A worker returned the wrong number of values.
    #[error("worker {worker} returned {found} values for {expected} masks")]
    Count { worker: usize, expected: usize, found: usize },
    /// A worker panicked.
    #[error("worker {worker} panicked")]
    Panicked { worker: usize },
}

/// Spreads each batch over several workers (e.g. one fitness per GPU): worker `k` gets the `k`-th
/// contiguous share of the batch and runs on its own scoped thread; the values are concatenated in order.
/// The maximum fidelity is the first worker's; all workers must agree on it.
pub struct WorkerPool<W> {
    workers: Vec<W>,
}

impl<W> WorkerPool<W> {
    /// A pool of the given workers; fails with [`SearchError::NoWorkers`] if there are none.
    pub fn new(workers: Vec<W>) -> Result<Self> {
        if workers.is_empty() {
            return Err(SearchError::NoWorkers);
        }
        Ok(WorkerPool { workers })
    }

    /// The workers, in order.
    pub fn workers(&self) -> &[W] {
        &self.workers
    }

    /// Gives the workers back, in order.
    pub fn into_workers(self) -> Vec<W> {
        self.workers
    }
}

impl<W: Fitness + Sync> Fitness for WorkerPool<W> {
    type Error = WorkerError;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> std::result::Result<Vec<f64>, WorkerError> {
        let chunk = masks.len().div_ceil(self.workers.len()).max(1);
        let run = |worker: usize, w: &W, part: &[Mask]| -> std::result::Result<Vec<f64>, WorkerError> {
            let v = w.evaluate(part, fidelity).map_err(|e| WorkerError::Failed { worker, source: Box::new(e) })?;
            if v.len() != part.len() {
                return Err(WorkerError::Count { worker, expected: part.len(), found: v.len() });
            }
            Ok(v)
        };
        if masks.len() <= chunk {
            return run(0, &self.workers[0], masks);
        }
        let results: Vec<std::result::Result<Vec<f64>, WorkerError>> = std::thread::scope(|s| {
            let handles: Vec<_> = masks
                .chunks(chunk)
                .zip(&self.workers)
                .enumerate()
                .map(|(k, (part, w))| (k, s.spawn(move || run(k, w, part))))
                .collect();
            handles
                .into_iter()
                .map(|(k, h)| h.join().unwrap_or(Err(WorkerError::Panicked { worker: k })))
                .collect()
        });
        let mut out = Vec::with_capacity(masks.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
    fn max_fidelity(&self) -> Fidelity {
        self.workers[0].max_fidelity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fitness::{BatchFitness, FnFitness};
    use crate::mask::MaskSpace;
    use std::convert::Infallible;

    fn score(m: &Mask) -> f64 {
        m.removed().map(|i| (i * i) as f64).sum()
    }

    #[test]
    fn parallel_fitness_keeps_order() {
        let s = MaskSpace::new(12, 3, []).unwrap();
        let ms: Vec<Mask> = s.iter().collect();
        let serial = FnFitness(score).evaluate(&ms, Fidelity::FULL).unwrap();
        for threads in [1, 3] {
            let p = ParallelFitness::new(threads, |m: &Mask, _| Ok::<_, Infallible>(score(m))).unwrap();
            assert_eq!(p.evaluate(&ms, Fidelity::FULL).unwrap(), serial);
        }
    }

    #[test]
    fn worker_pool_keeps_order_and_uses_every_worker() {
        let s = MaskSpace::new(10, 2, []).unwrap();
        let ms: Vec<Mask> = s.iter().collect(); // 45 masks
        let workers: Vec<_> = (0..4)
            .map(|k| {
                BatchFitness::new(move |b: &[Mask], _| Ok::<_, Infallible>(b.iter().map(|m| score(m) + 1000.0 * k as f64).collect()))
            })
            .collect();
        let pool = WorkerPool::new(workers).unwrap();
        let v = pool.evaluate(&ms, Fidelity::FULL).unwrap();
        assert_eq!(v.len(), 45);
        for (i, (m, x)) in ms.iter().zip(&v).enumerate() {
            assert_eq!(*x, score(m) + 1000.0 * (i / 12) as f64);
        }
    }

    #[test]
    fn worker_pool_reports_failures_and_panics() {
        #[derive(Debug, thiserror::Error)]
        #[error("device lost")]
        struct Lost;
        let s = MaskSpace::new(6, 1, []).unwrap();
        let ms: Vec<Mask> = s.iter().collect();
        let failing = WorkerPool::new(vec![
            BatchFitness::new(Box::new(|b: &[Mask], _| Ok(vec![0.0; b.len()])) as Box<dyn Fn(&[Mask], Fidelity) -> std::result::Result<Vec<f64>, Lost> + Sync>),
            BatchFitness::new(Box::new(|_: &[Mask], _| Err(Lost))),
        ])
        .unwrap();
        assert!(matches!(failing.evaluate(&ms, Fidelity::FULL), Err(WorkerError::Failed { worker: 1, .. })));
        let panicking = WorkerPool::new(vec![
            BatchFitness::new(Box::new(|b: &[Mask], _| Ok(vec![0.0; b.len()])) as Box<dyn Fn(&[Mask], Fidelity) -> std::result::Result<Vec<f64>, Lost> + Sync>),
            BatchFitness::new(Box::new(|_: &[Mask], _| panic!("boom"))),
        ])
        .unwrap();
        assert!(matches!(panicking.evaluate(&ms, Fidelity::FULL), Err(WorkerError::Panicked { worker: 1 })));
    }
}
