//! evop: depth pruning of large language models.
//!
//! This crate re-exports the workspace's library crates so that one dependency brings them all.
pub use evop_assets as assets;
pub use evop_baselines as baselines;
pub use evop_data as data;
pub use evop_model as model;
pub use evop_search as search;
