//! SLEB: iterative greedy block removal by calibration loss.
//!
//! Song, Oh, Kim, Kim, Kim and Kim, "SLEB: Streamlining LLMs through Redundancy Verification and
//! Elimination of Transformer Blocks", ICML 2024 (arXiv 2402.09025). Reference code:
//! jiwonsong-dev/SLEB, `sleb.py`.
//!
//! At each of `n` steps, every alive block except the first `early_barrier` and the last
//! `latter_barrier` *alive* ones is switched off in turn (it returns its input); the calibration
//! loss of that candidate model is computed, and the candidate with the lowest loss is removed for
//! good. As in the reference: barriers count positions in the list of alive blocks (so they hold
//! the first and last alive blocks, not fixed indices; both default to 1), candidates are tried in
//! ascending block order and a tie keeps the first (a strict `<` scan).
//!
//! Loss: the sum over calibration windows of the window's mean token NLL. The reference's
//! `nlls()` sums `CrossEntropy * seqlen` per window (batch size 1), which is this value times the
//! window length: the same ranking, so the same choices.
//!
//! Difference from the reference, not in what is computed but how: each step's candidate set is
//! evaluated in one call of [`CalibrationEvaluator::window_losses_many`], which reuses the dense
//! model's boundary states and shares block applications between candidates (exact reuse).
//!
//! [`Race`] (off by default, so `sleb` stays the reference's algorithm) is this crate's cheaper
//! variant: each step scores every candidate on the first few windows only, and only the best few
//! of them on the rest; the step removes the lowest loss over all windows among those. With `keep`
//! at least the candidate count it is SLEB exactly. It buys more windows for the same seconds,
//! which is what EvoP's run uses it for (docs/results.md, "racing").
use crate::common::{argmin, check_eligible, check_n, check_windows};
use crate::error::{BaselineError, Result};
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions, ForwardCounts};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// SLEB settings. Defaults: `early_barrier = 1`, `latter_barrier = 1` (as `sleb.py`), the
/// evaluator's defaults (batches of 8 windows, dense cache and prefix sharing on), no racing.
#[derive(Clone, Debug)]
pub struct Sleb {
    /// How many of the first alive blocks are never candidates.
    pub early_barrier: usize,
    /// How many of the last alive blocks are never candidates.
    pub latter_barrier: usize,
    /// How candidates are evaluated (results do not depend on it beyond float reassociation).
    pub evaluator: EvaluatorOptions,
    /// Racing inside each step (not in the reference); `None`: every candidate on every window.
    pub race: Option<Race>,
}

impl Default for Sleb {
    fn default() -> Self {
        Self { early_barrier: 1, latter_barrier: 1, evaluator: EvaluatorOptions::default(), race: None }
    }
}

/// Racing inside each greedy step: every candidate on the first `screen_windows` windows, the
/// `keep` lowest of them on the rest too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Race {
    /// Windows every candidate is scored on (the first ones of the calibration set).
    pub screen_windows: usize,
    /// Candidates per step that go on to the remaining windows.
    pub keep: usize,
}

/// One candidate of a step: the block switched off and the resulting calibration loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateLoss {
    pub block: usize,
    /// Sum over windows of the window's mean token NLL.
    pub loss: f64,
}

/// One greedy step: every candidate's loss (ascending block order) and the block removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlebStep {
    /// Blocks already removed before this step, in removal order.
    pub removed_before: Vec<usize>,
    /// Candidates scored on every window (with [`Race`]: those that passed the screen).
    pub candidates: Vec<CandidateLoss>,
    /// With [`Race`]: the candidates left out after the screen, with their loss on the screen
    /// windows alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub screened_out: Vec<CandidateLoss>,
    /// The block removed by this step (lowest loss, first on ties).
    pub removed: usize,
    /// Its loss.
    pub loss: f64,
}

/// How SLEB decided: one table per step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlebTrace {
    pub early_barrier: usize,
    pub latter_barrier: usize,
    /// The racing used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race: Option<Race>,
    /// Loss of the dense model, for reference.
    pub dense_loss: f64,
    pub steps: Vec<SlebStep>,
    /// Blocks in the order they were removed.
    pub removal_order: Vec<usize>,
}

impl Sleb {
    /// Runs SLEB on an existing evaluator (so several methods can share its dense cache); racing
    /// needs the windows split in two ([`Sleb::run_raced`]) and is not applied here.
    pub fn run(&self, evaluator: &CalibrationEvaluator, n: usize) -> Result<(BlockMask, SlebTrace)> {
        self.greedy(evaluator.model().num_blocks(), n, None, |masks| {
            let losses = evaluator.window_losses_many(masks)?.iter().map(|w| w.iter().sum()).collect();
            Ok((losses, Vec::new()))
        })
    }

    /// Runs SLEB with racing: `screen` holds the first windows, `rest` the others.
    pub fn run_raced(&self, screen: &CalibrationEvaluator, rest: &CalibrationEvaluator, keep: usize, n: usize) -> Result<(BlockMask, SlebTrace)> {
        let race = Race { screen_windows: screen.num_windows(), keep };
        self.greedy(screen.model().num_blocks(), n, Some(race), |masks| {
            let screened: Vec<f64> = screen.window_losses_many(masks)?.iter().map(|w| w.iter().sum()).collect();
            let passed = lowest(&screened, keep.max(1));
            let chosen: Vec<BlockMask> = passed.iter().map(|&i| masks[i].clone()).collect();
            let more: Vec<f64> = rest.window_losses_many(&chosen)?.iter().map(|w| w.iter().sum()).collect();
            let mut losses = vec![f64::NAN; masks.len()];
            for (&i, m) in passed.iter().zip(&more) {
                losses[i] = screened[i] + m;
            }
            let out = (0..masks.len()).filter(|i| !passed.contains(i)).map(|i| (i, screened[i])).collect();
            Ok((losses, out))
        })
    }

    /// The greedy loop; `score` gives each candidate mask's loss over every window (NaN for a
    /// candidate left out) and the left-out ones with their screen loss.
    fn greedy(
        &self,
        num_blocks: usize,
        n: usize,
        race: Option<Race>,
        mut score: impl FnMut(&[BlockMask]) -> Result<(Vec<f64>, Vec<(usize, f64)>)>,
    ) -> Result<(BlockMask, SlebTrace)> {
        check_n(n, num_blocks)?;
        let barriers = self.early_barrier + self.latter_barrier;
        let eligible = num_blocks.saturating_sub(barriers);
        check_eligible(
            "sleb",
            n,
            eligible,
            num_blocks,
            format!("barriers keep the first {} and last {} alive blocks", self.early_barrier, self.latter_barrier),
        )?;
        let mut mask = BlockMask::dense(num_blocks);
        let dense_loss: f64 = score(std::slice::from_ref(&mask))?.0[0];
        let mut alive: Vec<usize> = (0..num_blocks).collect();
        let mut trace = SlebTrace {
            early_barrier: self.early_barrier,
            latter_barrier: self.latter_barrier,
            race,
            dense_loss,
            steps: Vec::with_capacity(n),
            removal_order: Vec::with_capacity(n),
        };
        for step in 0..n {
            let candidates: Vec<usize> = alive[self.early_barrier..alive.len() - self.latter_barrier].to_vec();
            let masks = candidates.iter().map(|&b| mask.with_removed(b)).collect::<evop_model::Result<Vec<_>>>()?;
            let (losses, out) = score(&masks)?;
            let best = argmin(&losses).ok_or_else(|| BaselineError::InvalidSetting {
                method: "sleb",
                setting: "barriers",
                why: "no candidate block left".into(),
            })?;
            let block = candidates[best];
            tracing::info!(step = step + 1, of = n, block, loss = losses[best], "sleb: removing block");
            trace.steps.push(SlebStep {
                removed_before: trace.removal_order.clone(),
                candidates: candidates.iter().zip(&losses).filter(|(_, l)| !l.is_nan()).map(|(&block, &loss)| CandidateLoss { block, loss }).collect(),
                screened_out: out.iter().map(|&(i, loss)| CandidateLoss { block: candidates[i], loss }).collect(),
                removed: block,
                loss: losses[best],
            });
            trace.removal_order.push(block);
            mask = masks[best].clone();
            alive.retain(|&b| b != block);
        }
        Ok((mask, trace))
    }
}

impl Pruner for Sleb {
    fn name(&self) -> &'static str {
        "sleb"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        check_n(n, lm.num_blocks())?;
        check_windows(calibration, 2)?;
        let (mask, trace, counts) = match self.race {
            Some(race) if race.screen_windows >= 1 && race.screen_windows < calibration.len() => {
                let screen = CalibrationEvaluator::new(lm.clone(), &calibration[..race.screen_windows], self.evaluator.clone())?;
                let rest = CalibrationEvaluator::new(lm.clone(), &calibration[race.screen_windows..], self.evaluator.clone())?;
                let (mask, trace) = self.run_raced(&screen, &rest, race.keep, n)?;
                let (a, b) = (screen.counts(), rest.counts());
                let counts = ForwardCounts {
                    block_forwards: a.block_forwards + b.block_forwards,
                    head_forwards: a.head_forwards + b.head_forwards,
                    candidates: a.candidates,
                };
                (mask, trace, counts)
            }
            Some(race) if race.screen_windows == 0 => {
                return Err(BaselineError::InvalidSetting { method: "sleb", setting: "race.screen_windows", why: "must be at least 1".into() })
            }
            // As many screen windows as windows: every candidate on every window, SLEB itself.
            _ => {
                let evaluator = CalibrationEvaluator::new(lm.clone(), calibration, self.evaluator.clone())?;
                let (mask, trace) = self.run(&evaluator, n)?;
                (mask, trace, evaluator.counts())
            }
        };
        Ok(PruneResult::new(self.name(), n, mask, Trace::Sleb(trace), counts, start.elapsed()))
    }
}

impl Race {
    /// Candidate-windows scored with `windows` windows in all, given each step's candidate count:
    /// every candidate on the screen, at most `keep` of them on the rest.
    pub fn candidate_windows(&self, candidates_per_step: &[usize], windows: usize) -> f64 {
        let screen = self.screen_windows.min(windows);
        candidates_per_step.iter().map(|&c| (c * screen + c.min(self.keep) * (windows - screen)) as f64).sum()
    }

    /// The share of plain SLEB's candidate-windows (default barriers: every alive block but the
    /// first and last is a candidate) that racing scores removing `n` of `num_blocks` blocks on
    /// `windows` windows.
    pub fn sleb_share(&self, num_blocks: usize, n: usize, windows: usize) -> f64 {
        let steps: Vec<usize> = (0..n).map(|k| num_blocks.saturating_sub(k + 2)).collect();
        self.candidate_windows(&steps, windows) / (steps.iter().sum::<usize>() * windows) as f64
    }

    /// Parses `S/K` (screen windows / candidates kept); `none` is no racing.
    pub fn parse(s: &str) -> std::result::Result<Option<Self>, String> {
        if s == "none" {
            return Ok(None);
        }
        match s.split_once('/').map(|(a, b)| (a.trim().parse::<usize>(), b.trim().parse::<usize>())) {
            Some((Ok(screen_windows), Ok(keep))) if screen_windows >= 1 && keep >= 1 => Ok(Some(Self { screen_windows, keep })),
            _ => Err(format!("`{s}`: expected S/K with S screen windows >= 1 and K kept candidates >= 1 (e.g. 4/6), or none")),
        }
    }
}

/// Indices of the `k` lowest values (NaN last; ties keep the lower index), in ascending index order.
fn lowest(values: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| crate::common::loss_order(values[a], values[b]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}
