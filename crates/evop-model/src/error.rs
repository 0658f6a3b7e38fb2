//! The crate's one error type: every failure names the file, field or value at fault.
use std::path::PathBuf;

/// The architectures named in [`ModelError::UnsupportedArchitecture`]: the registry's
/// `model_type`s (`crate::arch::supported_names`, checked by a test).
pub const SUPPORTED_ARCHITECTURES: &str = "llama, mistral, qwen2, opt";

/// Errors of `evop-model`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch, missing tensor, device error, ...).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file could not be parsed or lacks a required field.
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    /// The model directory or file holds an architecture this crate does not implement.
    #[error("{path}: unsupported architecture `{arch}` (supported: {SUPPORTED_ARCHITECTURES})")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    /// A GGUF file is malformed, misses a metadata key or uses an unsupported feature.
    #[error("{path}: GGUF: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A weight tensor is missing or has the wrong shape.
    #[error("weight `{name}`: {message}")]
    Weight { name: String, message: String },
    /// A block mask does not fit the model.
    #[error("invalid block mask: {0}")]
    Mask(String),
    /// The requested device is not available in this build or on this machine.
    #[error("device `{spec}`: {message}")]
    Device { spec: String, message: String },
    /// Tokenizer construction, loading or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An input (token ids, windows, lengths) is unusable.
    #[error("invalid input: {0}")]
    Input(String),
    /// Saving would overwrite something the user owns.
    #[error("{path}: refusing to overwrite an existing non-empty directory")]
    WouldOverwrite { path: PathBuf },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
