//! # evop-mpi
//!
//! Distributed evaluation of a batch fitness: each batch of masks the search asks for is spread
//! over the ranks of an MPI job (or any other transport) as a dynamic work queue, and the values
//! come back in order. The search itself stays on one process (the root, rank 0): it draws every
//! random number, keeps the memo cache and writes the checkpoints, so a distributed run follows
//! exactly the trajectory of a single-process run with the same seed. Only masks, fidelities and
//! scalars cross the network.
//!
//! Nothing here knows about models: a worker serves any [`evop_search::Fitness`] that it can build
//! itself (every rank builds the same fitness from the same inputs, e.g. the model on its own GPU
//! and the calibration windows the root broadcast).
//!
//! | module | what |
//! |---|---|
//! | [`queue`] | [`QueueFitness`] (the root's fitness: dynamic queue, root evaluates too) and [`serve`] (a worker's loop), over the [`Transport`] traits |
//! | [`wire`] | the four messages and their checked encoding |
//! | [`memory`] | an in-process transport (threads as workers) |
//! | [`placement`] | launcher detection, local rank, visible GPUs, rank -> device |
//! | `mpi` (feature `mpi`) | the MPI transport, broadcast of bytes, node-local rank, gather |
//!
//! ## Example (in-process; with the `mpi` feature, `MpiRoot` and `MpiWorker` take the place of the channels)
//!
//! ```
//! use evop_mpi::{in_process, serve, Backoff, QueueFitness};
//! use evop_search::{FnFitness, GaParams, Mask, MaskSpace, Search, Termination};
//!
//! let score = |m: &Mask| m.removed().map(|i| (i as f64 - 6.0).powi(2)).sum::<f64>();
//! let space = MaskSpace::new(12, 3, [0, 11])?;
//! let search = || Search::new(space.clone(), GaParams::new().population(8).check().unwrap())
//!     .seed(7)
//!     .until(Termination::MaxGenerations(5));
//! let single = search().run(&FnFitness(score))?;
//!
//! let (root, workers) = in_process(2);
//! let outcome = std::thread::scope(|s| {
//!     for w in workers {
//!         s.spawn(move || serve(&w, &FnFitness(score), Backoff::WORKER).unwrap());
//!     }
//!     let queue = QueueFitness::new(root, FnFitness(score));
//!     let outcome = search().run(&queue);
//!     queue.shutdown().unwrap();
//!     outcome
//! })?;
//! assert_eq!(outcome.best, single.best);
//! let bests = |o: &evop_search::Outcome| o.history.iter().map(|r| r.best).collect::<Vec<_>>();
//! assert_eq!(bests(&outcome), bests(&single));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod memory;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod placement;
pub mod queue;
pub mod wire;

pub use memory::{in_process, InProcessRoot, InProcessWorker};
pub use placement::{device_for_rank, launched_by_mpi, local_rank_from_env, visible_gpus, PlacementError};
pub use queue::{error_chain, serve, Backoff, Incoming, QueueError, QueueFitness, QueueStats, ServeStats, Transport, WorkerTransport};
pub use wire::{Reply, Request, Task, WireError};
