//! The dynamic work queue, independent of the transport: [`QueueFitness`] implements
//! [`evop_search::Fitness`] on the root by cutting each batch into tasks and handing them out one at
//! a time to whichever evaluator is free (the remote workers and, by default, the root itself on a
//! thread of its own); [`serve`] is the worker's loop. Values come back in the batch's order, and
//! nothing here touches the search's RNG, so the search's trajectory does not depend on the number
//! of ranks or on who evaluated what (given a fitness whose value for a mask does not depend on the
//! batch it arrived in).
//!
//! Scheduling is greedy list scheduling: a worker that finishes early takes the next task, and the
//! first tasks of a batch go to the workers measured fastest per mask so far. With
//! [`QueueFitness::order_by_cost`] the tasks go out most expensive first (longest processing time
//! first), which bounds the idle tail at the end of a batch.
//!
//! Waiting is done by polling with a bounded exponential back-off (microseconds while a batch is in
//! flight, a few milliseconds between batches), not by a blocking receive, because common MPI
//! libraries busy-spin in blocking calls: a waiting worker would take a core from the evaluators
//! sharing its machine.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use evop_search::{BoxError, Fidelity, Fitness, Mask};

use crate::wire::{Reply, Request, Tag, Task, WireError};

/// A message a worker sent: `(peer, tag, words)`.
pub type Incoming = (usize, Tag, Vec<u64>);

/// The root's end of a transport: `workers()` peers numbered `0..workers()`.
///
/// Implementations only move tagged word arrays; the queue encodes and decodes them. Used from one
/// thread (the one that calls [`Fitness::evaluate`]).
pub trait Transport {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Number of remote workers.
    fn workers(&self) -> usize;
    /// Sends a message to worker `peer`.
    fn send(&self, peer: usize, tag: Tag, words: &[u64]) -> Result<(), Self::Error>;
    /// A message from any worker, if one has arrived: `(peer, tag, words)`. Must not block.
    fn try_recv(&self) -> Result<Option<Incoming>, Self::Error>;
}

/// A worker's end of a transport: talks to the root only.
pub trait WorkerTransport {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Sends a message to the root.
    fn send(&self, tag: Tag, words: &[u64]) -> Result<(), Self::Error>;
    /// A message from the root, if one has arrived. Must not block.
    fn try_recv(&self) -> Result<Option<(Tag, Vec<u64>)>, Self::Error>;
}

/// Why a distributed batch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The transport failed.
    #[error("transport failed")]
    Transport(#[source] BoxError),
    /// A message could not be decoded.
    #[error("from worker {peer}")]
    Wire { peer: usize, #[source] source: WireError },
    /// A worker's fitness failed; `message` is its error with its causes.
    #[error("worker {peer} failed: {message}")]
    Worker { peer: usize, message: String },
    /// The root's own fitness failed.
    #[error("the root's evaluator failed")]
    Local(#[source] BoxError),
    /// An evaluator returned the wrong number of values.
    #[error("{who} returned {found} values for {expected} masks")]
    Count { who: String, expected: usize, found: usize },
    /// A worker answered a task it was not given.
    #[error("worker {peer} answered task {found}, it was given {expected}")]
    Protocol { peer: usize, expected: String, found: u64 },
    /// A message from a peer the transport does not know.
    #[error("message from unknown worker {peer} (the transport has {workers})")]
    UnknownPeer { peer: usize, workers: usize },
    /// The root's evaluator thread panicked.
    #[error("the root's evaluator panicked")]
    Panicked,
    /// A batch mixes masks of different lengths.
    #[error("mask {index} has length {found}, the batch's first mask has length {expected}")]
    MixedLengths { index: usize, expected: usize, found: usize },
    /// `evaluate` after [`QueueFitness::shutdown`].
    #[error("the work queue has been shut down")]
    Stopped,
    /// The worker's loop got a message it cannot act on.
    #[error("worker got a message it cannot act on")]
    Request(#[source] WireError),
}

/// The text of an error and its causes, `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Bounded exponential back-off for polling loops.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The root's wait for replies during a batch: 10 us doubling to 250 us (a non-blocking probe
    /// costs about a microsecond, so this is a fraction of a percent of a core).
    pub const ROOT: Backoff = Backoff { min: Duration::from_micros(10), max: Duration::from_micros(250) };
    /// A worker's wait for its next task: 50 us doubling to 5 ms.
    pub const WORKER: Backoff = Backoff { min: Duration::from_micros(50), max: Duration::from_millis(5) };

    fn next(&self, cur: Duration) -> Duration {
        (cur * 2).clamp(self.min, self.max)
    }
}

/// Counters of a [`QueueFitness`] since it was built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Batches evaluated.
    pub batches: u64,
    /// Masks evaluated, all evaluators.
    pub masks: u64,
    /// Tasks and masks per evaluator: index 0 is the root, `k + 1` is worker `k`.
    pub tasks_by: Vec<u64>,
    pub masks_by: Vec<u64>,
    /// Seconds each evaluator's fitness ran (as reported by the workers), same indexing.
    pub busy_seconds_by: Vec<f64>,
    /// Wall seconds inside `evaluate`.
    pub wall_seconds: f64,
    /// Bytes of messages sent to and received from workers.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Messages sent and received.
    pub messages_sent: u64,
    pub messages_received: u64,
}

/// Task cost estimate used to hand out the most expensive tasks first.
pub type CostFn = Box<dyn Fn(&Mask) -> f64 + Send + Sync>;

/// The root's [`Fitness`]: each batch is spread over the remote workers (and the root's own
/// `local` fitness) as a dynamic queue of tasks of [`QueueFitness::chunk`] masks.
///
/// Defaults: one mask per task, the root evaluates too, tasks in batch order, polling with
/// [`Backoff::ROOT`]. The maximum fidelity is `local`'s. With no workers every task runs locally.
/// Dropping it sends the stop message to every worker (see [`QueueFitness::shutdown`]).
pub struct QueueFitness<T: Transport, F> {
    transport: T,
    local: F,
    chunk: usize,
    root_evaluates: bool,
    cost: Option<CostFn>,
    backoff: Backoff,
    next_id: AtomicU64,
    stopped: AtomicBool,
    stats: Mutex<QueueStats>,
}

impl<T: Transport, F: Fitness + Sync> QueueFitness<T, F> {
    /// A queue over `transport`'s workers, with `local` as the root's own evaluator.
    pub fn new(transport: T, local: F) -> Self {
        let n = transport.workers() + 1;
        let stats = QueueStats { tasks_by: vec![0; n], masks_by: vec![0; n], busy_seconds_by: vec![0.0; n], ..Default::default() };
        QueueFitness {
            transport,
            local,
            chunk: 1,
            root_evaluates: true,
            cost: None,
            backoff: Backoff::ROOT,
            next_id: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
            stats: Mutex::new(stats),
        }
    }

    /// Masks per task (at least 1). Larger tasks cost fewer messages and let a fitness share work
    /// inside a task; smaller ones balance better.
    pub fn chunk(mut self, masks: usize) -> Self {
        self.chunk = masks.max(1);
        self
    }

    /// Whether the root evaluates tasks too (on a thread of its own) or only hands them out. Without
    /// workers the root always evaluates.
    pub fn root_evaluates(mut self, yes: bool) -> Self {
        self.root_evaluates = yes;
        self
    }

    /// Hands out tasks in decreasing order of `cost` (the sum over a task's masks); ties keep the
    /// batch order.
    pub fn order_by_cost(mut self, cost: impl Fn(&Mask) -> f64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Box::new(cost));
        self
    }

    /// Polling intervals while waiting for replies.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The root's own fitness.
    pub fn local(&self) -> &F {
        &self.local
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Counters so far.
    pub fn stats(&self) -> QueueStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Tells every worker to leave its loop; later batches fail with [`QueueError::Stopped`].
    /// Idempotent.
    pub fn shutdown(&self) -> Result<(), QueueError> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (tag, words) = Request::Stop.encode();
        for peer in 0..self.transport.workers() {
            self.transport.send(peer, tag, &words).map_err(|e| QueueError::Transport(Box::new(e)))?;
        }
        Ok(())
    }

    fn tasks(&self, masks: &[Mask]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..masks.len()).collect();
        let mut tasks: Vec<Vec<usize>> = order.chunks(self.chunk).map(<[usize]>::to_vec).collect();
        if let Some(cost) = &self.cost {
            // Sort masks by cost first so that expensive masks share tasks, then tasks by their sum.
            let c: Vec<f64> = masks.iter().map(cost).collect();
            order.sort_by(|&a, &b| c[b].total_cmp(&c[a]));
            tasks = order.chunks(self.chunk).map(<[usize]>::to_vec).collect();
            let sum = |t: &Vec<usize>| t.iter().map(|&i| c[i]).sum::<f64>();
            tasks.sort_by(|a, b| sum(b).total_cmp(&sum(a)));
        }
        tasks
    }
}

/// State shared by the root's dispatcher and its evaluator thread during one batch.
struct Batch<'a> {
    masks: &'a [Mask],
    tasks: Vec<Vec<usize>>,
    next: AtomicUsize,
    values: Mutex<Vec<Option<f64>>>,
    error: Mutex<Option<QueueError>>,
    failed: AtomicBool,
}

impl Batch<'_> {
    fn take(&self) -> Option<usize> {
        if self.failed.load(Ordering::SeqCst) {
            return None;
        }
        let t = self.next.fetch_add(1, Ordering::SeqCst);
        (t < self.tasks.len()).then_some(t)
    }

    fn fail(&self, e: QueueError) {
        let mut slot = self.error.lock().expect("error lock");
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn store(&self, task: usize, values: &[f64]) {
        let mut v = self.values.lock().expect("values lock");
        for (&i, &x) in self.tasks[task].iter().zip(values) {
            v[i] = Some(x);
        }
    }

    fn task_masks(&self, task: usize) -> Vec<Mask> {
        self.tasks[task].iter().map(|&i| self.masks[i].clone()).collect()
    }
}

impl<T: Transport, F: Fitness + Sync> Fitness for QueueFitness<T, F> {
    type Error = QueueError;

    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, QueueError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(QueueError::Stopped);
        }
        if masks.is_empty() {
            return Ok(Vec::new());
        }
        let len = masks[0].len();
        if let Some((index, m)) = masks.iter().enumerate().find(|(_, m)| m.len() != len) {
            return Err(QueueError::MixedLengths { index, expected: len, found: m.len() });
        }
        let start = Instant::now();
        let batch = Batch {
            masks,
            tasks: self.tasks(masks),
            next: AtomicUsize::new(0),
            values: Mutex::new(vec![None; masks.len()]),
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
        };
        let workers = self.transport.workers();
        let local_runs = self.root_evaluates || workers == 0;
        let local_tally = Mutex::new((0u64, 0u64, 0f64));
        let mut remote_tally = vec![(0u64, 0u64, 0f64); workers];
        let mut traffic = (0u64, 0u64, 0u64, 0u64);
        let (fitness, batch_ref, tally_ref) = (&self.local, &batch, &local_tally);
        std::thread::scope(|s| {
            let local = local_runs.then(|| {
                s.spawn(move || {
                    let (batch, local_tally) = (batch_ref, tally_ref);
                    while let Some(t) = batch.take() {
                        let ms = batch.task_masks(t);
                        let t0 = Instant::now();
                        match fitness.evaluate(&ms, fidelity) {
                            Ok(v) if v.len() == ms.len() => {
                                batch.store(t, &v);
                                let mut tally = local_tally.lock().expect("tally lock");
                                tally.0 += 1;
                                tally.1 += ms.len() as u64;
                                tally.2 += t0.elapsed().as_secs_f64();
                            }
                            Ok(v) => batch.fail(QueueError::Count { who: "the root".into(), expected: ms.len(), found: v.len() }),
                            Err(e) => batch.fail(QueueError::Local(Box::new(e))),
                        }
                    }
                })
            });
            if workers > 0 {
                self.dispatch(&batch, fidelity, &mut remote_tally, &mut traffic);
            }
            if let Some(h) = local {
                if h.join().is_err() {
                    batch.fail(QueueError::Panicked);
                }
            }
        });
        {
            let mut st = self.stats.lock().expect("stats lock");
            let (lt, lm, ls) = *local_tally.lock().expect("tally lock");
            st.tasks_by[0] += lt;
            st.masks_by[0] += lm;
            st.busy_seconds_by[0] += ls;
            for (k, (t, m, sec)) in remote_tally.iter().enumerate() {
                st.tasks_by[k + 1] += t;
                st.masks_by[k + 1] += m;
                st.busy_seconds_by[k + 1] += sec;
            }
            st.bytes_sent += traffic.0;
            st.bytes_received += traffic.1;
            st.messages_sent += traffic.2;
            st.messages_received += traffic.3;
            st.wall_seconds += start.elapsed().as_secs_f64();
            if batch.error.lock().expect("error lock").is_none() {
                st.batches += 1;
                st.masks += masks.len() as u64;
            }
        }
        if let Some(e) = batch.error.into_inner().expect("error lock") {
            return Err(e);
        }
        batch
            .values
            .into_inner()
            .expect("values lock")
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or(QueueError::Count { who: format!("the queue (mask {i} has no value)"), expected: masks.len(), found: i }))
            .collect()
    }

    fn max_fidelity(&self) -> Fidelity {
        self.local.max_fidelity()
    }
}

impl<T: Transport, F: Fitness + Sync> QueueFitness<T, F> {
    /// The root's side of one batch: keep every worker busy with one task until the queue is empty
    /// (or a failure stops handing out), then collect the outstanding replies.
    fn dispatch(&self, batch: &Batch<'_>, fidelity: Fidelity, tally: &mut [(u64, u64, f64)], traffic: &mut (u64, u64, u64, u64)) {
        let workers = self.transport.workers();
        let mut in_flight: Vec<Option<(u64, usize)>> = vec![None; workers];
        let transport_err = |e: T::Error| QueueError::Transport(Box::new(e));
        let mut send = |peer: usize, task: usize, in_flight: &mut Vec<Option<(u64, usize)>>| -> Result<(), QueueError> {
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            let (tag, words) = Request::Task(Task { id, fidelity, masks: batch.task_masks(task) }).encode();
            self.transport.send(peer, tag, &words).map_err(transport_err)?;
            traffic.0 += 8 * words.len() as u64;
            traffic.2 += 1;
            in_flight[peer] = Some((id, task));
            Ok(())
        };
        // First tasks to the workers that have been fastest per mask so far (unmeasured ones first),
        // so that a batch smaller than the pool goes to the quick ones.
        let mut peers: Vec<usize> = (0..workers).collect();
        {
            let st = self.stats.lock().expect("stats lock");
            let speed = |p: usize| if st.masks_by[p + 1] == 0 { 0.0 } else { st.busy_seconds_by[p + 1] / st.masks_by[p + 1] as f64 };
            peers.sort_by(|&a, &b| speed(a).total_cmp(&speed(b)));
        }
        for peer in peers {
            let Some(t) = batch.take() else { break };
            if let Err(e) = send(peer, t, &mut in_flight) {
                batch.fail(e);
                return;
            }
        }
        let mut wait = Duration::ZERO;
        while in_flight.iter().any(Option::is_some) {
            let (peer, tag, words) = match self.transport.try_recv() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    wait = self.backoff.next(wait);
                    std::thread::sleep(wait);
                    continue;
                }
                Err(e) => {
                    batch.fail(transport_err(e));
                    return;
                }
            };
            wait = Duration::ZERO;
            traffic.1 += 8 * words.len() as u64;
            traffic.3 += 1;
            if peer >= workers {
                batch.fail(QueueError::UnknownPeer { peer, workers });
                return;
            }
            let reply = match Reply::decode(tag, &words) {
                Ok(r) => r,
                Err(source) => {
                    in_flight[peer] = None;
                    batch.fail(QueueError::Wire { peer, source });
                    continue;
                }
            };
            let id = match &reply {
                Reply::Values { id, .. } | Reply::Failed { id, .. } => *id,
            };
            let Some((expected, task)) = in_flight[peer].filter(|(e, _)| *e == id) else {
                let expected = in_flight[peer].map_or("nothing".to_string(), |(e, _)| format!("task {e}"));
                in_flight[peer] = None;
                batch.fail(QueueError::Protocol { peer, expected, found: id });
                continue;
            };
            debug_assert_eq!(expected, id);
            in_flight[peer] = None;
            match reply {
                Reply::Values { values, seconds, .. } => {
                    let n = batch.tasks[task].len();
                    if values.len() != n {
                        batch.fail(QueueError::Count { who: format!("worker {peer}"), expected: n, found: values.len() });
                        continue;
                    }
                    batch.store(task, &values);
                    tally[peer].0 += 1;
                    tally[peer].1 += n as u64;
                    tally[peer].2 += seconds;
                }
                Reply::Failed { message, .. } => {
                    batch.fail(QueueError::Worker { peer, message });
                    continue;
                }
            }
            if let Some(t) = batch.take() {
                if let Err(e) = send(peer, t, &mut in_flight) {
                    batch.fail(e);
                    return;
                }
            }
        }
    }
}

impl<T: Transport, F> Drop for QueueFitness<T, F> {
    fn drop(&mut self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            let (tag, words) = Request::Stop.encode();
            for peer in 0..self.transport.workers() {
                if let Err(e) = self.transport.send(peer, tag, &words) {
                    tracing::warn!(peer, error = %e, "could not send stop to a worker");
                }
            }
        }
    }
}

/// What a worker did before it was told to stop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServeStats {
    pub tasks: u64,
    pub masks: u64,
    /// Tasks whose fitness failed (reported to the root).
    pub failures: u64,
    /// Seconds the fitness ran.
    pub busy_seconds: f64,
    /// Seconds from the start of `serve` to the stop message.
    pub wall_seconds: f64,
}

/// A worker's loop: evaluate each task with `fitness` and send the values back (a failing fitness
/// is reported to the root, which decides; the loop goes on) until the root sends stop.
///
/// Returns an error only if the transport fails or the root sends something that is not a task or
/// stop (e.g. a build speaking another wire format).
pub fn serve<W: WorkerTransport, F: Fitness>(transport: &W, fitness: &F, backoff: Backoff) -> Result<ServeStats, QueueError> {
    let start = Instant::now();
    let mut stats = ServeStats::default();
    let mut wait = Duration::ZERO;
    let send = |reply: Reply| -> Result<(), QueueError> {
        let (tag, words) = reply.encode();
        transport.send(tag, &words).map_err(|e| QueueError::Transport(Box::new(e)))
    };
    loop {
        let (tag, words) = match transport.try_recv().map_err(|e| QueueError::Transport(Box::new(e)))? {
            Some(m) => m,
            None => {
                wait = backoff.next(wait);
                std::thread::sleep(wait);
                continue;
            }
        };
        wait = Duration::ZERO;
        match Request::decode(tag, &words).map_err(QueueError::Request)? {
            Request::Stop => {
                stats.wall_seconds = start.elapsed().as_secs_f64();
                return Ok(stats);
            }
            Request::Task(task) => {
                let t0 = Instant::now();
                let result = fitness.evaluate(&task.masks, task.fidelity);
                let seconds = t0.elapsed().as_secs_f64();
                stats.tasks += 1;
                stats.busy_seconds += seconds;
                match result {
                    Ok(values) if values.len() == task.masks.len() => {
                        stats.masks += values.len() as u64;
                        send(Reply::Values { id: task.id, values, seconds })?;
                    }
                    Ok(values) => {
                        stats.failures += 1;
                        let message = format!("returned {} values for {} masks", values.len(), task.masks.len());
                        send(Reply::Failed { id: task.id, message })?;
                    }
                    Err(e) => {
                        stats.failures += 1;
                        send(Reply::Failed { id: task.id, message: error_chain(&e) })?;
                    }
                }
            }
        }
    }
}
