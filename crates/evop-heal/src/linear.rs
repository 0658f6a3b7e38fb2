//! The linear patch healer ([`LinearPatch`]): for each removed run `i..=j`, shallow to deep, on
//! the model already patched for the runs before it, fit `T` so that block `i-1`'s output
//! `R + M T` matches the dense model's stream after block `j` (ReplaceMe, Shopkhoev et al. 2025,
//! arXiv 2505.02819; solved in [`crate::ridge`]), fold it into block `i-1`'s MLP output projection
//! ([`crate::fold`]), and keep it only if it lowers the pruned model's next-token loss on guard
//! windows the fit never saw.
//!
//! Cost: one dense forward up to the deepest run's end and one pruned forward over the fit
//! windows, plus, per run, two forwards of the remaining blocks over the guard windows (with and
//! without the patch). Streams are kept between runs, so no block runs twice on the same windows.
use crate::error::{HealError, Result};
use crate::fold::folded_weights;
use crate::ridge::{NormalEquations, RidgeScale};
use crate::runs::removed_runs;
use crate::{HealData, Healer, Healing, RunDecision, RunReport};
use candle_core::{DType, Tensor};
use evop_model::perplexity::{batch_tensor, token_nll_from_hidden};
use evop_model::{run_blocks, AttnContext, BlockLm, BlockMask, LoadedModel};
use std::collections::HashMap;
use std::sync::Arc;

/// Ridge toward the identity, relative to `mean(diag(M^T M))` (docs/healing.md: the choice).
pub const DEFAULT_RIDGE: f64 = 1e-1;
/// How the default ridge is scaled (docs/healing.md: the choice).
pub const DEFAULT_RIDGE_SCALE: RidgeScale = RidgeScale::Diagonal;

/// The linear patch healer and its settings.
///
/// Defaults: `ridge` [`DEFAULT_RIDGE`] scaled per dimension ([`DEFAULT_RIDGE_SCALE`]), single-block runs patched (`single_block_runs: true`;
/// the guard decides), guard on, 8 windows per forward.
#[derive(Clone, Debug)]
pub struct LinearPatch {
    /// `lambda = ridge * mean(diag(M^T M))` in `||M T - D||^2 + lambda ||T - I||^2`, or per
    /// output dimension (see `scale`).
    pub ridge: f64,
    /// How `ridge` is scaled ([`RidgeScale`]).
    pub scale: RidgeScale,
    /// Whether runs of one removed block are patched (else reported as skipped).
    pub single_block_runs: bool,
    /// Whether a patch must lower the guard windows' loss to be kept.
    pub guard: bool,
    /// Windows per forward.
    pub batch_size: usize,
}

impl Default for LinearPatch {
    fn default() -> Self {
        Self { ridge: DEFAULT_RIDGE, scale: DEFAULT_RIDGE_SCALE, single_block_runs: true, guard: true, batch_size: 8 }
    }
}

/// Windows split into equal-length batches, each with its stream and the next block to run.
struct Streams {
    ids: Vec<Tensor>,
    hidden: Vec<Tensor>,
    /// The next block to run (blocks before it are applied or skipped).
    next: usize,
}

impl Streams {
    fn new(lm: &dyn BlockLm, windows: &[Vec<u32>], batch_size: usize) -> Result<Self> {
        let mut ids = Vec::new();
        let mut hidden = Vec::new();
        for chunk in windows.chunks(batch_size.max(1)) {
            let t = batch_tensor(lm, chunk)?;
            hidden.push(lm.embed(&t, 0)?);
            ids.push(t);
        }
        Ok(Self { ids, hidden, next: 0 })
    }

    fn context(lm: &dyn BlockLm, h: &Tensor) -> Result<AttnContext> {
        Ok(AttnContext::new(lm.info(), h.dim(1)?, 0)?)
    }

    /// Runs the blocks `self.next..until` that `mask` keeps.
    fn advance(&mut self, lm: &dyn BlockLm, mask: &BlockMask, until: usize) -> Result<()> {
        for h in &mut self.hidden {
            let ctx = Self::context(lm, h)?;
            for i in (self.next..until).filter(|&i| mask.is_kept(i)) {
                *h = lm.block(i, h, &ctx, None)?;
            }
        }
        self.next = self.next.max(until);
        Ok(())
    }

    /// Mean next-token NLL of the model from the current streams on (the blocks `mask` keeps).
    fn loss_from_here(&self, lm: &dyn BlockLm, mask: &BlockMask) -> Result<f64> {
        let (mut sum, mut count) = (0.0, 0usize);
        for (h, ids) in self.hidden.iter().zip(&self.ids) {
            let ctx = Self::context(lm, h)?;
            let out = run_blocks(lm, h.clone(), self.next, mask, &ctx)?;
            let nll = token_nll_from_hidden(lm, &out, ids)?.to_dtype(DType::F64)?;
            sum += nll.sum_all()?.to_scalar::<f64>()?;
            count += nll.elem_count();
        }
        Ok(sum / count.max(1) as f64)
    }
}

impl LinearPatch {
    fn check(&self) -> Result<()> {
        if !(self.ridge > 0.0 && self.ridge.is_finite()) {
            return Err(HealError::Setting { name: "ridge", value: self.ridge.to_string(), message: "must be a positive number".into() });
        }
        if self.batch_size == 0 {
            return Err(HealError::Setting { name: "batch_size", value: "0".into(), message: "must be at least 1".into() });
        }
        Ok(())
    }
}

fn check_windows(what: &str, windows: &[Vec<u32>]) -> Result<()> {
    if windows.is_empty() {
        return Err(HealError::Data(format!("no {what} windows")));
    }
    if windows.iter().any(|w| w.len() < 2) {
        return Err(HealError::Data(format!("{what} windows need at least 2 tokens")));
    }
    Ok(())
}

impl Healer for LinearPatch {
    fn name(&self) -> String {
        let scale = match self.scale {
            RidgeScale::Mean => "",
            RidgeScale::Diagonal => " per dimension",
        };
        format!("linear (ridge {}{scale}{})", self.ridge, if self.guard { ", guarded" } else { "" })
    }

    fn heal(&self, model: &LoadedModel, mask: &BlockMask, data: &HealData) -> Result<Healing> {
        self.check()?;
        check_windows("fit", &data.fit)?;
        if self.guard {
            check_windows("guard", &data.guard)?;
        }
        let start = std::time::Instant::now();
        let lm0: &dyn BlockLm = model.lm.as_ref();
        mask.check_len(lm0.num_blocks())?;
        let dense_mask = BlockMask::dense(lm0.num_blocks());
        let h = lm0.info().hidden_size;

        let mut accepted: HashMap<String, Tensor> = HashMap::new();
        let mut current: Arc<dyn BlockLm> = model.lm.clone();
        let mut dense = Streams::new(lm0, &data.fit, self.batch_size)?;
        let mut pruned = Streams::new(lm0, &data.fit, self.batch_size)?;
        let mut guard = if self.guard { Some(Streams::new(lm0, &data.guard, self.batch_size)?) } else { None };
        let mut reports = Vec::new();

        for run in removed_runs(mask) {
            let mut report = RunReport::new(&run);
            let Some(p) = run.preceding() else {
                report.decision = RunDecision::Skipped("the run starts at block 0: no block before it to fold a patch into".into());
                reports.push(report);
                continue;
            };
            if run.len() == 1 && !self.single_block_runs {
                report.decision = RunDecision::Skipped("single-block run (single_block_runs is off)".into());
                reports.push(report);
                continue;
            }
            if let Err(e) = lm0.mlp_out_projection(p) {
                report.decision = RunDecision::Skipped(e.to_string());
                reports.push(report);
                continue;
            }
            let cur: &dyn BlockLm = current.as_ref();
            // Targets: the dense stream after the run; inputs: block p's parts in the pruned model.
            dense.advance(lm0, &dense_mask, run.last + 1)?;
            pruned.advance(cur, mask, p)?;
            let mut eq = NormalEquations::new(h);
            for (y, x) in dense.hidden.iter().zip(&pruned.hidden) {
                let ctx = Streams::context(cur, x)?;
                let parts = cur.block_parts(p, x, &ctx)?;
                let target = (y - &parts.after_attention)?;
                eq.add(&parts.mlp_out.flatten_to(1)?, &target.flatten_to(1)?)?;
            }
            let t = eq.solve(self.ridge, self.scale).map_err(|message| HealError::Solve { run: run.blocks(), message })?;
            report.patched_block = Some(p);
            report.fit_tokens = eq.tokens();
            report.explained = Some(eq.explained(&t));
            report.explained_unpatched = Some(eq.explained(&ndarray::Array2::eye(h)));
            let folded = folded_weights(model, p, &t)?;
            let mut candidate_set = accepted.clone();
            candidate_set.extend(folded.clone());
            let candidate = model.rebuilt_with(candidate_set.clone())?;
            let keep = match &mut guard {
                Some(g) => {
                    g.advance(cur, mask, p)?;
                    let before = g.loss_from_here(cur, mask)?;
                    let after = g.loss_from_here(candidate.as_ref(), mask)?;
                    report.guard_nll_before = Some(before);
                    report.guard_nll_after = Some(after);
                    after < before
                }
                None => true,
            };
            report.decision = if keep { RunDecision::Patched } else { RunDecision::RefusedByGuard };
            if keep {
                accepted = candidate_set;
                current = candidate;
            }
            tracing::info!(?run, explained = report.explained, kept = keep, "linear patch");
            reports.push(report);
        }
        let replacements = accepted;
        Ok(Healing { healer: self.name(), replacements, runs: reports, seconds: start.elapsed().as_secs_f64() })
    }
}
