//! evop: depth pruning of large language models.
//!
//! Given a model of L decoder blocks and a budget of n, evop chooses which n blocks to skip so
//! the pruned model loses as little quality as possible, then evaluates, runs and saves it. Our
//! method is EvoP (Wu et al. 2025, "EvoP: Robust LLM Inference via Evolutionary Pruning",
//! arXiv 2502.14910): cluster-based calibration sampling (CCDS) and an evolutionary pattern
//! search (EPPS); the baselines are SLEB, ShortGPT, one-shot perplexity, angular distance, last-n,
//! random and the exhaustive optimum.
//!
//! This crate re-exports the workspace's libraries and adds the end-to-end [`Pipeline`].
pub use evop_assets as assets;
pub use evop_baselines as baselines;
pub use evop_data as data;
pub use evop_eval as eval;
pub use evop_heal as heal;
pub use evop_model as model;
pub use evop_search as search;

pub mod decision;
pub mod error;
pub mod evaluation;
pub mod fitness;
pub mod healing;
pub mod objective;
pub mod pipeline;
pub mod pruner;
pub mod windows;

pub use error::{EvopError, Result};
pub use evaluation::{evaluate, EvalReport, EvalSet};
pub use fitness::CalibrationFitness;
pub use healing::{build_heal_data, build_heal_data_from_sources, build_heal_data_with, fit_windows_for_hidden, HealDataSpec};
pub use objective::Objective;
pub use pipeline::{
    build_calibration, build_calibration_excluding, CalibrationSpec, EmbedderKind, GaOperators, Pipeline, PruneReport, SamplerKind, Screening, SearchJob, SearchSpec, StrategyKind,
};
pub use pruner::EvopPruner;
pub use windows::draw_at_most;
pub use decision::{decide, decision_windows, Candidate, Decision, DecisionSpec, ScoredCandidate};
