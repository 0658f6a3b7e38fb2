//! The crate's one error type.
use evop_model::ModelError;

/// Errors of `evop-heal`.
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    /// The model failed (forward, weights, mask).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The calibration data cannot fit a patch (no windows, unequal lengths, too short).
    #[error("healing data: {0}")]
    Data(String),
    /// A setting is out of range.
    #[error("healer setting `{name}` = {value}: {message}")]
    Setting { name: &'static str, value: String, message: String },
    /// The regularised normal equations could not be solved.
    #[error("solving the patch of the run {run:?}: {message}")]
    Solve { run: Vec<usize>, message: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, HealError>;
