//! The pipeline's error type: wraps each library crate's error, plus configuration mistakes.

/// Errors of the `evop` pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EvopError {
    #[error(transparent)]
    Model(#[from] evop_model::ModelError),
    #[error(transparent)]
    Data(#[from] evop_data::DataError),
    #[error(transparent)]
    Search(#[from] evop_search::SearchError),
    #[error(transparent)]
    Baseline(#[from] evop_baselines::BaselineError),
    #[error(transparent)]
    Assets(#[from] evop_assets::AssetError),
    #[error(transparent)]
    Heal(#[from] evop_heal::HealError),
    /// A setting is out of range or inconsistent.
    #[error("invalid setting `{field}` = {value}: {message}")]
    Config { field: &'static str, value: String, message: String },
}

impl EvopError {
    pub(crate) fn config(field: &'static str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self::Config { field, value: value.to_string(), message: message.into() }
    }
}

/// Result alias of the pipeline.
pub type Result<T> = std::result::Result<T, EvopError>;
