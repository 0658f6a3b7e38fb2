//! Block-pruning baselines behind one trait: the methods EvoP must beat, implemented faithfully.
//!
//! Every method takes a model, a calibration set (equal-length token windows) and the number of
//! blocks to remove, and returns a [`PruneResult`]: a validated [`BlockMask`], a serialisable
//! [`Trace`] of how it decided, the forward passes it ran and the time it took.
//!
//! | name (CLI)   | type                    | method |
//! |--------------|-------------------------|--------|
//! | `sleb`       | [`Sleb`]                | iterative greedy removal by calibration loss (Song et al., ICML 2024, arXiv 2402.09025; jiwonsong-dev/SLEB) |
//! | `shortgpt`   | [`ShortGpt`]            | Block Influence, `1 - cos(input, output)` (Men et al. 2024, arXiv 2403.03853) |
//! | `ppl`        | [`OneShotPpl`]          | one-shot perplexity ranking (Kim et al. 2024, Shortened LLaMA, arXiv 2402.02834) |
//! | `angular`    | [`Angular`]             | contiguous run with the smallest angular distance (Gromov et al. 2024, arXiv 2403.17887) |
//! | `last-n`     | [`LastN`]               | the `n` blocks before the final one |
//! | `random`     | [`RandomBlocks`]        | seeded uniform choice (`random:<seed>` by name) |
//! | `exhaustive` | [`Exhaustive`]          | every mask of `C(L, n)`: the true optimum and the loss distribution |
//!
//! The calibration loss (SLEB, one-shot, exhaustive) is the sum over windows of each window's mean
//! token NLL, computed by [`evop_model::CalibrationEvaluator`] with exact reuse (dense boundary
//! cache and a prefix tree over candidates), so the same numbers as a full forward per candidate
//! come out at a fraction of the block applications.
//!
//! ```no_run
//! use evop_baselines::{pruner_by_name, Pruner, Sleb};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = evop_model::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &Default::default())?;
//! let ids = evop_model::encode(model.tokenizer()?, "Some calibration text ...")?;
//! let windows = evop_model::perplexity::cut_windows(&ids, 128);
//! let result = Sleb::default().prune(&model.lm, &windows, 6)?;
//! println!("{} in {:?}", result.mask, result.elapsed);
//! // Or by name, as the CLI does:
//! let shortgpt = pruner_by_name("shortgpt")?.prune(&model.lm, &windows, 6)?;
//! # Ok(()) }
//! ```
pub mod angular;
mod common;
pub mod error;
pub mod exhaustive;
pub mod last_n;
pub mod oneshot;
pub mod random;
pub mod shortgpt;
pub mod sleb;

pub use angular::{Angular, AngularTokens, AngularTrace};
pub use error::{BaselineError, Result};
pub use exhaustive::{Exhaustive, ExhaustiveTrace, MaskLoss};
pub use last_n::LastN;
pub use oneshot::{OneShotPpl, OneShotTrace};
pub use random::{RandomBlocks, RandomTrace};
pub use shortgpt::{ShortGpt, ShortGptTrace};
pub use sleb::{Race, Sleb, SlebStep, SlebTrace};

use evop_model::{BlockLm, BlockMask, ForwardCounts};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A depth-pruning method: chooses which `n` blocks of a model to remove.
pub trait Pruner: Send + Sync {
    /// The method's name, as [`pruner_by_name`] accepts it.
    fn name(&self) -> &'static str;

    /// Chooses `n` blocks (`0 < n < L`) to remove from `lm`, using the calibration windows (all of
    /// one length; methods that need no data ignore them).
    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult>;

    /// [`Pruner::prune`] with `n` from a sparsity (see [`blocks_for_sparsity`]).
    fn prune_sparsity(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], sparsity: f64) -> Result<PruneResult> {
        self.prune(lm, calibration, blocks_for_sparsity(sparsity, lm.num_blocks())?)
    }
}

/// What a pruner returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneResult {
    /// The method's name.
    pub method: String,
    /// Blocks removed.
    pub n: usize,
    pub mask: BlockMask,
    /// How the method decided.
    pub trace: Trace,
    /// Block and head forwards (each over one calibration batch) and candidates evaluated.
    pub counts: ForwardCounts,
    /// Wall time of the whole call, data preparation included.
    pub elapsed: Duration,
}

impl PruneResult {
    pub(crate) fn new(method: &str, n: usize, mask: BlockMask, trace: Trace, counts: ForwardCounts, elapsed: Duration) -> Self {
        Self { method: method.to_string(), n, mask, trace, counts, elapsed }
    }

    /// The removed blocks, ascending.
    pub fn removed(&self) -> Vec<usize> {
        self.mask.removed().collect()
    }
}

/// How a method decided, per method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Trace {
    /// Every greedy step's loss table.
    Sleb(SlebTrace),
    /// Every block's influence.
    ShortGpt(ShortGptTrace),
    /// Every single-block removal's loss and perplexity.
    OneShotPpl(OneShotTrace),
    /// Every run's angular distance.
    Angular(AngularTrace),
    /// Nothing to decide.
    LastN,
    /// The seed.
    Random(RandomTrace),
    /// Every mask's loss.
    Exhaustive(ExhaustiveTrace),
    /// A method defined outside this crate (e.g. EvoP's search), with its own report.
    External { name: String, detail: serde_json::Value },
}

/// Names [`pruner_by_name`] accepts (`random` also as `random:<seed>`).
pub const PRUNER_NAMES: &[&str] = &["sleb", "shortgpt", "ppl", "angular", "last-n", "random", "exhaustive"];

/// A pruner with default settings, by name: `sleb`, `shortgpt`, `ppl`, `angular`, `last-n`,
/// `random` (seed 0) or `random:<seed>`, `exhaustive`. Names are case-insensitive; `_` may stand
/// for `-`.
pub fn pruner_by_name(name: &str) -> Result<Box<dyn Pruner>> {
    let key = name.trim().to_ascii_lowercase().replace('_', "-");
    let unknown = || BaselineError::UnknownMethod { name: name.to_string(), known: PRUNER_NAMES.join(", ") };
    if let Some(seed) = key.strip_prefix("random:") {
        let seed: u64 = seed.parse().map_err(|_| BaselineError::InvalidSetting {
            method: "random",
            setting: "seed",
            why: format!("`{seed}` is not an unsigned integer"),
        })?;
        return Ok(Box::new(RandomBlocks::new(seed)));
    }
    Ok(match key.as_str() {
        "sleb" => Box::new(Sleb::default()),
        "shortgpt" => Box::new(ShortGpt::default()),
        "ppl" | "oneshot-ppl" | "one-shot-ppl" => Box::new(OneShotPpl::default()),
        "angular" => Box::new(Angular::default()),
        "last-n" | "lastn" => Box::new(LastN),
        "random" => Box::new(RandomBlocks::new(0)),
        "exhaustive" => Box::new(Exhaustive::default()),
        _ => return Err(unknown()),
    })
}

/// Blocks to remove for a sparsity (fraction of blocks) in `[0, 1)`: `ceil(sparsity * L)`, the
/// convention of SLEB's experiments (20% of Llama-2-7B's 32 blocks is 7). A product within 1e-9 of
/// an integer counts as that integer (so 0.2 of 30 is 6, not 7).
pub fn blocks_for_sparsity(sparsity: f64, num_blocks: usize) -> Result<usize> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(BaselineError::InvalidSparsity(sparsity));
    }
    let x = sparsity * num_blocks as f64;
    let n = if (x - x.round()).abs() < 1e-9 { x.round() } else { x.ceil() };
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsity_rounds_up_except_at_integers() {
        assert_eq!(blocks_for_sparsity(0.2, 32).unwrap(), 7);
        assert_eq!(blocks_for_sparsity(0.2, 30).unwrap(), 6);
        assert_eq!(blocks_for_sparsity(0.0, 30).unwrap(), 0);
        assert!(matches!(blocks_for_sparsity(1.0, 30), Err(BaselineError::InvalidSparsity(_))));
        assert!(matches!(blocks_for_sparsity(f64::NAN, 30), Err(BaselineError::InvalidSparsity(_))));
        assert!(matches!(blocks_for_sparsity(-0.1, 30), Err(BaselineError::InvalidSparsity(_))));
    }

    #[test]
    fn every_name_resolves_and_unknown_names_are_errors() {
        for name in PRUNER_NAMES {
            assert_eq!(pruner_by_name(name).unwrap().name(), *name);
        }
        assert_eq!(pruner_by_name("Last_N").unwrap().name(), "last-n");
        assert_eq!(pruner_by_name("random:42").unwrap().name(), "random");
        assert!(matches!(pruner_by_name("random:x"), Err(BaselineError::InvalidSetting { .. })));
        let err = pruner_by_name("evop").err().unwrap();
        assert!(err.to_string().contains("`evop`") && err.to_string().contains("sleb"), "{err}");
    }
}
