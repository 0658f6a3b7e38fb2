//! The crate's one error type: every variant names the value at fault.
use evop_model::ModelError;

/// Errors of `evop-baselines`.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The model failed (bad token ids, tensor error, mask of the wrong length, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Asked to remove no block at all.
    #[error("n = 0: nothing to remove (pruning needs at least one block to remove)")]
    NothingToRemove,
    /// Asked to remove every block (or more).
    #[error("cannot remove {n} of {num_blocks} blocks: at least one block must remain")]
    TooManyBlocks { n: usize, num_blocks: usize },
    /// Protection rules (barriers, protected blocks) leave too few blocks to choose from.
    #[error("{method}: only {eligible} of {num_blocks} blocks may be removed ({why}), cannot remove {n}")]
    NotEnoughEligible { method: &'static str, n: usize, eligible: usize, num_blocks: usize, why: String },
    /// A protected block index does not exist.
    #[error("protected block {block} is out of range for a model of {num_blocks} blocks")]
    ProtectedOutOfRange { block: usize, num_blocks: usize },
    /// A sparsity outside `[0, 1)` (or not a number).
    #[error("sparsity {0} is outside [0, 1)")]
    InvalidSparsity(f64),
    /// The calibration set has no windows.
    #[error("the calibration set is empty")]
    EmptyCalibration,
    /// A calibration window is too short or differs in length from the first.
    #[error("calibration window {index} has {len} tokens: {why}")]
    BadWindow { index: usize, len: usize, why: String },
    /// Exhaustive search was asked for more masks than its limit.
    #[error("exhaustive search over C({eligible}, {n}) = {count} masks exceeds the limit of {limit} (raise `max_masks` to allow it)")]
    TooManyMasks { eligible: usize, n: usize, count: String, limit: u64 },
    /// A setting of a method is unusable.
    #[error("{method}: invalid setting `{setting}`: {why}")]
    InvalidSetting { method: &'static str, setting: &'static str, why: String },
    /// `pruner_by_name` got a name it does not know.
    #[error("unknown pruning method `{name}` (known: {known})")]
    UnknownMethod { name: String, known: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, BaselineError>;
