//! The bridge from a model to the generic search: [`CalibrationFitness`] implements
//! `evop_search::Fitness` by evaluating masks with the reuse-aware
//! [`evop_model::CalibrationEvaluator`] and reducing per-window losses with an [`Objective`].
//!
//! Fidelity is the number of calibration windows used. Lower fidelities (for EvoPress-style
//! multi-step selection, or a search screened on a subset) use a cluster-balanced prefix of the
//! windows: windows are ordered round-robin over clusters, so a screening subset still covers
//! every cluster. Evaluations below full fidelity may use their own evaluator settings
//! ([`CalibrationFitness::with_screen_options`], e.g. a loss over a subset of positions).
use crate::objective::Objective;
use evop_model::{BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions, ForwardCounts, ModelError};
use evop_search::{Fidelity, Fitness, Mask};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Calibration-loss fitness of block masks.
pub struct CalibrationFitness {
    lm: Arc<dyn BlockLm>,
    /// Windows in fidelity order (round-robin over groups).
    windows: Vec<Vec<u32>>,
    groups: Option<Vec<usize>>,
    objective: Objective,
    options: EvaluatorOptions,
    /// Settings of the evaluators below full fidelity (`None`: `options`).
    screen_options: Option<EvaluatorOptions>,
    evaluators: Mutex<BTreeMap<usize, Arc<CalibrationEvaluator>>>,
}

impl CalibrationFitness {
    /// A fitness over `windows` (with optional cluster labels) minimising `objective`.
    pub fn new(
        lm: Arc<dyn BlockLm>,
        windows: &[Vec<u32>],
        groups: Option<&[usize]>,
        objective: Objective,
        options: EvaluatorOptions,
    ) -> Result<Self, ModelError> {
        if windows.is_empty() {
            return Err(ModelError::Input("the calibration set is empty".into()));
        }
        if let Some(g) = groups {
            if g.len() != windows.len() {
                return Err(ModelError::Input(format!("{} cluster labels for {} windows", g.len(), windows.len())));
            }
        }
        let order = round_robin_order(windows.len(), groups);
        let ordered: Vec<Vec<u32>> = order.iter().map(|&i| windows[i].clone()).collect();
        let groups = groups.map(|g| order.iter().map(|&i| g[i]).collect());
        Ok(Self { lm, windows: ordered, groups, objective, options, screen_options: None, evaluators: Mutex::new(BTreeMap::new()) })
    }

    /// Evaluator settings for fidelities below the maximum (screening), e.g. with
    /// `position_stride > 1`.
    pub fn with_screen_options(mut self, options: EvaluatorOptions) -> Self {
        self.screen_options = Some(options);
        self
    }

    /// The model being pruned.
    pub fn model(&self) -> &Arc<dyn BlockLm> {
        &self.lm
    }

    /// The objective.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    fn evaluator(&self, n: usize) -> Result<Arc<CalibrationEvaluator>, ModelError> {
        let n = n.clamp(1, self.windows.len());
        let mut map = self.evaluators.lock().expect("evaluator cache poisoned");
        if let Some(e) = map.get(&n) {
            return Ok(e.clone());
        }
        let options = match &self.screen_options {
            Some(o) if n < self.windows.len() => o.clone(),
            _ => self.options.clone(),
        };
        let e = Arc::new(CalibrationEvaluator::new(self.lm.clone(), &self.windows[..n], options)?);
        map.insert(n, e.clone());
        Ok(e)
    }

    /// The objective and per-window losses of one block mask at full fidelity.
    pub fn score_mask(&self, mask: &BlockMask) -> Result<(f64, Vec<f64>), ModelError> {
        let losses = self.evaluator(self.windows.len())?.window_losses(mask)?;
        Ok((self.objective.score(&losses, self.groups.as_deref()), losses))
    }

    /// Block and head applications summed over every fidelity's evaluator.
    pub fn counts(&self) -> ForwardCounts {
        let map = self.evaluators.lock().expect("evaluator cache poisoned");
        map.values().fold(ForwardCounts::default(), |mut acc, e| {
            let c = e.counts();
            acc.block_forwards += c.block_forwards;
            acc.head_forwards += c.head_forwards;
            acc.candidates += c.candidates;
            acc
        })
    }

    /// Converts a search mask to a block mask.
    pub fn block_mask(mask: &Mask) -> BlockMask {
        BlockMask::from_skip_flags(mask.to_bools())
    }
}

impl Fitness for CalibrationFitness {
    type Error = ModelError;

    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, ModelError> {
        let n = (fidelity.0 as usize).clamp(1, self.windows.len());
        let evaluator = self.evaluator(n)?;
        let block_masks: Vec<BlockMask> = masks.iter().map(Self::block_mask).collect();
        let losses = evaluator.window_losses_many(&block_masks)?;
        let groups = self.groups.as_ref().map(|g| &g[..n]);
        Ok(losses.iter().map(|l| self.objective.score(l, groups)).collect())
    }

    fn max_fidelity(&self) -> Fidelity {
        Fidelity(self.windows.len() as u64)
    }
}

/// Indices ordered round-robin over groups (group order by first appearance; within a group,
/// original order), so every prefix is as balanced across groups as possible.
pub(crate) fn round_robin_order(n: usize, groups: Option<&[usize]>) -> Vec<usize> {
    let Some(groups) = groups else { return (0..n).collect() };
    let mut buckets: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &g) in groups.iter().enumerate() {
        match buckets.iter_mut().find(|(k, _)| *k == g) {
            Some((_, b)) => b.push(i),
            None => buckets.push((g, vec![i])),
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut round = 0;
    while out.len() < n {
        for (_, b) in &buckets {
            if let Some(&i) = b.get(round) {
                out.push(i);
            }
        }
        round += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_balances_prefixes() {
        let order = round_robin_order(6, Some(&[0, 0, 0, 1, 1, 2]));
        assert_eq!(order, vec![0, 3, 5, 1, 4, 2]);
        assert_eq!(round_robin_order(3, None), vec![0, 1, 2]);
    }
}
