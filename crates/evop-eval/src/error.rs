//! The crate's one error type: every failure names the task, file, field, item or value at fault.
use std::path::PathBuf;

/// Errors of `evop-eval`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A task file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A task file is not valid JSON.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A field of a task file is missing or has the wrong type.
    #[error("{path}: field `{field}`: {message}")]
    Field { path: PathBuf, field: String, message: String },
    /// One example of a task cannot be turned into a multiple-choice item.
    #[error("task `{task}`, example {index}: {message}")]
    Item { task: String, index: usize, message: String },
    /// A task name that is neither a known task nor a BIG-bench task path.
    #[error("unknown task `{name}` (known: {known}; or a BIG-bench task path TASK/SUBTASK, such as goal_step_wikihow/step_inference)")]
    UnknownTask { name: String, known: String },
    /// A task has no usable items (after filtering or subsetting).
    #[error("task `{task}` has no items to evaluate")]
    EmptyTask { task: String },
    /// Evaluation options that cannot work (zero batch size, zero limit, ...).
    #[error("invalid evaluation option `{option}` = {value}: {message}")]
    Options { option: &'static str, value: String, message: String },
    /// The tokenizer failed on a text.
    #[error("tokenizer failed on {text:?}: {message}")]
    Tokenizer { text: String, message: String },
    /// A token id is outside the model's vocabulary (tokenizer and model do not match).
    #[error("{request}: token id {id} is outside the model's vocabulary of {vocab} (tokenizer and model do not match)")]
    Vocab { request: String, id: u32, vocab: usize },
    /// The model failed (mask of the wrong length, sequence too long, device error, ...).
    #[error(transparent)]
    Model(#[from] evop_model::ModelError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
