//! The crate's one error type. Every variant names the file, field or value at fault, so a
//! failure deep in a pipeline still says what to fix.
use std::path::PathBuf;

/// Errors of `evop-data`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not what its reader expects (not JSON, not UTF-8, wrong shape, missing field).
    #[error("{path}{}: {message}", location.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        /// Line, record or key where the problem is, when known.
        location: Option<String>,
        message: String,
    },
    /// A corpus holds no document with text.
    #[error("corpus `{source_name}` has no non-empty document")]
    EmptyCorpus { source_name: String },
    /// A parameter has a value that cannot work.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParam { name: &'static str, value: String, reason: String },
    /// The pool of candidate windows is empty.
    #[error("the pool of candidate windows is empty (is every document shorter than one window?)")]
    EmptyPool,
    /// More windows were asked for than the pool holds.
    #[error("asked for {requested} calibration windows but the pool holds only {available}")]
    NotEnoughWindows { requested: usize, available: usize },
    /// More clusters than samples to put in them.
    #[error("cannot form {k} clusters from {n_samples} windows")]
    TooManyClusters { k: usize, n_samples: usize },
    /// An embedding matrix does not match the windows it claims to describe.
    #[error("embedding matrix has {rows} rows of dimension {dim}, expected {expected_rows} rows{}", expected_dim.map(|d| format!(" of dimension {d}")).unwrap_or_default())]
    EmbeddingShape { rows: usize, dim: usize, expected_rows: usize, expected_dim: Option<usize> },
    /// An embedding contains NaN or infinity.
    #[error("embedding row {row} is not finite")]
    NonFiniteEmbedding { row: usize },
    /// Tokenizer loading, configuration, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// k-means failed inside linfa.
    #[error("k-means: {0}")]
    KMeans(String),
    /// The target model failed (hidden-state embedder).
    #[error(transparent)]
    Model(#[from] evop_model::ModelError),
    /// A tensor operation failed (MiniLM embedder).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, location: Option<String>, message: impl Into<String>) -> Self {
        Self::Parse { path: path.into(), location, message: message.into() }
    }

    pub(crate) fn param(name: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self::InvalidParam { name, value: value.to_string(), reason: reason.into() }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;
