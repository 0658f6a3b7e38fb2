//! The crate's one error type: a variant per broken invariant, each with a short human message.

use std::path::PathBuf;

/// A boxed error from user code (a fitness, an observer), kept as the `source` of a [`SearchError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `evop-search`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    // ---- mask space and masks ----
    /// A mask space of length zero.
    #[error("mask length must be at least 1")]
    EmptyLength,
    /// A protected position outside `0..len`.
    #[error("protected block {index} is out of range for length {len}")]
    ProtectedOutOfRange { index: usize, len: usize },
    /// More blocks to remove than unprotected blocks.
    #[error("cannot remove {n_removed} blocks: only {free} of {len} blocks are unprotected")]
    TooManyRemoved { n_removed: usize, free: usize, len: usize },
    /// A block index outside `0..len`.
    #[error("block index {index} is out of range for length {len}")]
    IndexOutOfRange { index: usize, len: usize },
    /// The same block listed twice.
    #[error("block {index} is listed twice")]
    DuplicateIndex { index: usize },
    /// A mask that removes the wrong number of blocks.
    #[error("mask removes {found} blocks, the space requires exactly {expected}")]
    WrongRemovedCount { expected: usize, found: usize },
    /// A mask that removes a protected block.
    #[error("mask removes protected block {index}")]
    ProtectedRemoved { index: usize },
    /// A mask of another length than the space.
    #[error("mask has length {found}, the space has length {expected}")]
    LengthMismatch { expected: usize, found: usize },

    // ---- configuration ----
    /// A population too small to select from.
    #[error("population must hold at least {min} masks, got {found}")]
    PopulationTooSmall { min: usize, found: usize },
    /// Elites and immigrants leave no slot for offspring.
    #[error("{elites} elites and {immigrants} immigrants leave no offspring in a population of {population}")]
    NoRoomForOffspring { elites: usize, immigrants: usize, population: usize },
    /// A tournament of size zero.
    #[error("tournament size must be at least 1")]
    TournamentSizeZero,
    /// A probability or fraction outside `[0, 1]` (or NaN).
    #[error("{name} must lie in [0, 1], got {value}")]
    InvalidProbability { name: &'static str, value: f64 },
    /// Swap-count weights that are empty, negative, non-finite or all zero.
    #[error("mutation swap weights must be finite, non-negative and not all zero")]
    InvalidSwapWeights,
    /// A shift mutation that may not move a removal at all.
    #[error("shift mutation reach must be at least 1 block")]
    InvalidShiftReach,
    /// A (1+lambda) run without offspring.
    #[error("lambda (offspring per generation) must be at least 1")]
    LambdaZero,
    /// A (1+lambda) run without initial candidates.
    #[error("the (1+lambda) EA needs at least one initial candidate")]
    InitialZero,
    /// A multi-step selection step whose fidelity does not grow.
    #[error("selection step {step}: fidelity {fidelity} must exceed the previous step's and stay below the fitness's maximum {max}")]
    ScheduleFidelity { step: usize, fidelity: u64, max: u64 },
    /// A multi-step selection step whose survivor count does not shrink.
    #[error("selection step {step}: survivors ({survivors}) must be at least 1, at most lambda and fewer than the previous step's")]
    ScheduleSurvivors { step: usize, survivors: usize },
    /// A search without any stopping criterion would never end.
    #[error("a search needs at least one termination criterion")]
    NoTermination,
    /// A worker pool without workers.
    #[error("a worker pool needs at least one worker")]
    NoWorkers,
    /// The rayon pool could not be built.
    #[error("cannot build the thread pool: {0}")]
    ThreadPool(String),

    // ---- running ----
    /// The fitness returned an error.
    #[error("fitness evaluation failed")]
    Fitness(#[source] BoxError),
    /// The fitness returned the wrong number of values.
    #[error("fitness returned {found} values for {expected} masks")]
    FitnessCount { expected: usize, found: usize },
    /// An observer returned an error.
    #[error("observer failed")]
    Observer(#[source] BoxError),

    // ---- checkpoints ----
    /// Reading or writing a checkpoint or history file failed.
    #[error("I/O on {path}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    /// A checkpoint that is not valid JSON for this crate.
    #[error("checkpoint {path} cannot be parsed")]
    CheckpointFormat { path: PathBuf, #[source] source: serde_json::Error },
    /// A checkpoint written by another format version.
    #[error("checkpoint format version {found} is not supported (this build reads {expected})")]
    CheckpointVersion { expected: u32, found: u32 },
    /// A checkpoint written by a run with another configuration.
    #[error("checkpoint belongs to another run: {key} is {checkpoint} there but {current} here")]
    CheckpointMismatch { key: String, checkpoint: String, current: String },
    /// A checkpoint whose content breaks an invariant (hand-edited or corrupt).
    #[error("checkpoint is corrupt: {0}")]
    CheckpointCorrupt(String),
}

/// The crate's `Result`.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;
