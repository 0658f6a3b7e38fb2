//! Healing depth-pruned language models without training.
//!
//! Removing blocks costs quality that no choice of blocks wins back. A [`Healer`] repairs a
//! pruned model after the search: it takes the dense model, the block mask and calibration
//! windows, and returns replacement weights for the kept blocks (a [`Healing`]) that
//! [`Healing::apply`] folds into the model, so the healed model has the pruned architecture and
//! saves and loads like any pruned model (Hugging Face directory, GGUF).
//!
//! The first healer, [`LinearPatch`], maps each removed run's missing computation with one
//! linear map on the MLP output of the block before it (ReplaceMe, Shopkhoev et al. 2025,
//! arXiv 2505.02819): closed form ([`ridge`]), folded into the output projection ([`fold`]),
//! runs fitted shallow to deep ([`runs`]), each kept only if it lowers the loss on held-back
//! guard windows.
pub mod error;
pub mod fold;
pub mod linear;
pub mod ridge;
pub mod runs;

pub use error::{HealError, Result};
pub use linear::{LinearPatch, DEFAULT_RIDGE, DEFAULT_RIDGE_SCALE};
pub use ridge::RidgeScale;
pub use runs::{removed_runs, RemovedRun};

use candle_core::Tensor;
use evop_model::{BlockMask, LoadedModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Calibration windows of a healer: `fit` to fit on, `guard` held back to accept or refuse each
/// patch. Windows within each list have equal lengths.
#[derive(Clone, Debug, Default)]
pub struct HealData {
    pub fit: Vec<Vec<u32>>,
    pub guard: Vec<Vec<u32>>,
}

/// What happened to one removed run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunDecision {
    /// The patch was folded in.
    Patched,
    /// The patch raised (or did not lower) the guard windows' loss: left out.
    RefusedByGuard,
    /// Not attempted, with the reason.
    Skipped(String),
}

/// One removed run's patch: where it went, how well it fit, and the guard's verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub removed: Vec<usize>,
    /// The kept block whose MLP output projection holds the patch.
    pub patched_block: Option<usize>,
    pub fit_tokens: usize,
    /// Fraction of the target's energy (the dense stream after the run minus the stream after
    /// attention of the block before it) explained by the patched MLP output.
    pub explained: Option<f64>,
    /// The same fraction for the unpatched MLP output (`T = I`).
    pub explained_unpatched: Option<f64>,
    /// Mean next-token NLL on the guard windows without and with the patch.
    pub guard_nll_before: Option<f64>,
    pub guard_nll_after: Option<f64>,
    pub decision: RunDecision,
}

impl RunReport {
    fn new(run: &RemovedRun) -> Self {
        Self {
            removed: run.blocks(),
            patched_block: None,
            fit_tokens: 0,
            explained: None,
            explained_unpatched: None,
            guard_nll_before: None,
            guard_nll_after: None,
            decision: RunDecision::Skipped(String::new()),
        }
    }
}

/// A healer's result: replacement weights under their Hugging Face names (the source model's
/// block numbering) and a report per removed run.
#[derive(Clone, Debug)]
pub struct Healing {
    pub healer: String,
    pub replacements: HashMap<String, Tensor>,
    pub runs: Vec<RunReport>,
    /// Wall time of the fit, guard included.
    pub seconds: f64,
}

impl Healing {
    /// Folds the replacements into `model` (its `lm` and `weights`).
    pub fn apply(&self, model: &mut LoadedModel) -> Result<()> {
        Ok(model.replace_weights(self.replacements.clone())?)
    }

    /// Number of runs whose patch was kept.
    pub fn patched_runs(&self) -> usize {
        self.runs.iter().filter(|r| r.decision == RunDecision::Patched).count()
    }
}

/// Repairs a pruned model. Implement it to plug another healer into `evop prune --heal`.
pub trait Healer {
    /// A short description with the settings, for reports.
    fn name(&self) -> String;

    /// Fits the repair of `model` pruned by `mask` on `data`; `model` itself is not changed.
    fn heal(&self, model: &LoadedModel, mask: &BlockMask, data: &HealData) -> Result<Healing>;
}
