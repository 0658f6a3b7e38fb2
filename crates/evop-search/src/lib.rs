//! # evop-search
//!
//! Evolutionary search over fixed-cardinality bitmasks: find the mask of `L` blocks with exactly `n`
//! removed (and some blocks protected) that minimises (or maximises) an expensive fitness. Nothing here
//! knows about models: a fitness is any batch function from masks to numbers, so any project can use the
//! crate for its own bitmask problem.
//!
//! Two strategies share one set of traits:
//!
//! - [`Ga`]: EPPS, the evolutionary pruning-pattern search of **EvoP** (Wu et al. 2025, "EvoP: Robust LLM
//!   Inference via Evolutionary Pruning", arXiv 2502.14910): a generational GA with elitism, tournament
//!   selection, a crossover that keeps the blocks both parents remove, swap mutation and random immigrants.
//! - [`OnePlusLambda`]: the (1+lambda) EA with multi-step selection of **EvoPress** (Sieberling et al.
//!   2024, "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search",
//!   arXiv 2410.14649; reference implementation github.com/IST-DASLab/EvoPress): offspring screened at
//!   small fidelities, the parent replaced only by a better child at full fidelity.
//!
//! Around them: a memo cache (no mask is evaluated twice at a fidelity), termination criteria, observers
//! (the library never prints), atomic checkpoints that resume bit-exactly, and parallel evaluators. All
//! randomness comes from one seeded ChaCha8 stream, drawn only by the driver thread, so the same seed and
//! the same fitness values give the same trajectory whatever the number of threads.
//!
//! | module | concept |
//! |---|---|
//! | [`mask`] | [`Mask`] genome and [`MaskSpace`] constraints |
//! | [`fitness`] | [`Fitness`] trait, [`Fidelity`], [`Direction`], closure adapters |
//! | [`evaluator`] | [`ParallelFitness`] (rayon) and [`WorkerPool`] (one worker per device) |
//! | [`operators`] | [`Selection`], [`Crossover`], [`Mutation`] traits and defaults |
//! | [`ga`] | [`GaParams`] / [`Ga`] (EPPS) |
//! | [`one_plus_lambda`] | [`OnePlusLambdaParams`] / [`OnePlusLambda`] (EvoPress) |
//! | [`strategy`] | the [`Strategy`] trait: one generation, apart from the loop |
//! | [`search`] | the driver: [`Search`], [`Run`], [`Outcome`] |
//! | [`termination`] | [`Termination`] criteria and [`StopReason`] |
//! | [`memo`] | the [`Memo`] cache |
//! | [`observer`] | [`GenerationReport`], [`Observer`], [`JsonlHistory`] |
//! | [`checkpoint`] | atomic, fingerprinted checkpoints |
//! | [`synthetic`] | test problems with a known optimum |
//!
//! ## Example
//!
//! Remove 3 of 12 blocks, never the first or last, minimising a batch fitness:
//!
//! ```
//! use evop_search::{BatchFitness, GaParams, Mask, MaskSpace, Search, StopReason, Termination};
//!
//! let space = MaskSpace::new(12, 3, [0, 11])?;
//! // Removing block i costs (i - 6)^2; the best masks remove blocks 5, 6 and 7.
//! let fitness = BatchFitness::new(|masks: &[Mask], _fidelity| {
//!     Ok::<_, std::convert::Infallible>(
//!         masks.iter().map(|m| m.removed().map(|i| (i as f64 - 6.0).powi(2)).sum()).collect(),
//!     )
//! });
//! let outcome = Search::new(space, GaParams::new().population(16).check()?)
//!     .seed(42)
//!     .until(Termination::TargetReached(2.0))
//!     .until(Termination::MaxGenerations(200))
//!     .run(&fitness)?;
//! assert_eq!(outcome.reason, StopReason::TargetReached);
//! assert_eq!(outcome.best.removed().collect::<Vec<_>>(), vec![5, 6, 7]);
//! # Ok::<(), evop_search::SearchError>(())
//! ```

pub mod checkpoint;
pub mod error;
pub mod evaluator;
pub mod fitness;
pub mod ga;
pub mod mask;
pub mod memo;
pub mod observer;
pub mod one_plus_lambda;
pub mod operators;
pub mod search;
pub mod strategy;
pub mod synthetic;
pub mod termination;

pub use error::{BoxError, Result, SearchError};
pub use evaluator::{ParallelFitness, WorkerError, WorkerPool};
pub use fitness::{BatchFitness, Direction, Fidelity, Fitness, FnFitness};
pub use ga::{Ga, GaParams, GaState};
pub use mask::{Mask, MaskSpace};
pub use memo::Memo;
pub use observer::{FnObserver, GenerationReport, JsonlHistory, Observer};
pub use one_plus_lambda::{OnePlusLambda, OnePlusLambdaParams, OnePlusLambdaState, Screen};
pub use operators::{Crossover, Mutation, OnePointCrossover, Selection, SharedRemovedCrossover, ShiftMutation, SwapMutation, Tournament};
pub use search::{Outcome, Run, Search};
pub use strategy::{Context, Strategy};
pub use termination::{StopReason, Termination};
