//! EvoP behind the baselines' [`Pruner`] trait, so it runs wherever a baseline runs (the
//! `pruning` criterion bench, comparison tables) on the same calibration windows. Without
//! cluster labels this is EvoP's search on given data; CCDS is the pipeline's job.
use crate::objective::Objective;
use crate::pipeline::{SearchJob, SearchSpec};
use evop_baselines::{BaselineError, PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, EvaluatorOptions};
use std::sync::Arc;
use std::time::Instant;

/// EvoP's evolutionary search as a [`Pruner`].
#[derive(Clone, Debug)]
pub struct EvopPruner {
    pub search: SearchSpec,
    pub objective: Objective,
    pub evaluator: EvaluatorOptions,
    pub seed: u64,
}

impl Default for EvopPruner {
    /// [`SearchSpec::default`], mean NLL, the default evaluator, seed 0.
    fn default() -> Self {
        Self { search: SearchSpec::default(), objective: Objective::MeanNll, evaluator: EvaluatorOptions::default(), seed: 0 }
    }
}

impl Pruner for EvopPruner {
    fn name(&self) -> &'static str {
        "evop"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, calibration: &[Vec<u32>], n: usize) -> evop_baselines::Result<PruneResult> {
        let start = Instant::now();
        let l = lm.num_blocks();
        if n == 0 || n + 2 > l {
            return Err(BaselineError::InvalidSetting { method: "evop", setting: "n", why: format!("{n} of {l} blocks with the ends protected") });
        }
        let job = SearchJob {
            objective: self.objective,
            search: self.search.clone(),
            evaluator: self.evaluator.clone(),
            ..SearchJob::new(n, self.seed)
        };
        let report = job.run(lm.clone(), calibration, None).map_err(|e| BaselineError::InvalidSetting {
            method: "evop",
            setting: "search",
            why: e.to_string(),
        })?;
        let mask = BlockMask::from_removed(l, &report.removed).map_err(BaselineError::from)?;
        let counts = report.counts;
        let detail = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
        Ok(PruneResult {
            method: "evop".into(),
            n,
            mask,
            trace: Trace::External { name: "evop".into(), detail },
            counts,
            elapsed: start.elapsed(),
        })
    }
}
