//! From per-option log-likelihoods to accuracy, normalised accuracy and their 95% intervals.
//!
//! Metrics as lm-evaluation-harness's `multiple_choice` output type defines them
//! (`ConfigurableTask.process_results`): `acc` takes the argmax of the summed log-likelihoods,
//! `acc_norm` the argmax of the log-likelihoods divided by each option's length in characters.
//! Ties go to the first option (NumPy's `argmax`). An item with several correct options (BIG-bench
//! target scores with more than one maximum) counts as correct when the prediction is any of them.
use crate::error::{EvalError, Result};
use crate::score::{prepare_task, request_logliks, PreparedTask, TokenCache};
use crate::stats::{wilson95, Interval};
use crate::task::McTask;
use evop_model::{BlockLm, BlockMask};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// How to evaluate a task.
///
/// Defaults ([`EvalOptions::default`]): every item (`limit: None`), `seed: 0` (used only with a
/// limit), `batch_size: 16` requests per forward, `max_len: None` (the model's position limit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Evaluate a seeded random subset of this many items ([`McTask::subset`]).
    pub limit: Option<usize>,
    /// Seed of the subset.
    pub seed: u64,
    /// Requests (options) per forward pass.
    pub batch_size: usize,
    /// Longest input in tokens; `None` uses the model's `max_positions`.
    pub max_len: Option<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { limit: None, seed: 0, batch_size: 16, max_len: None }
    }
}

impl EvalOptions {
    /// Checks every option; each broken invariant is its own error naming the option.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(EvalError::Options { option: "batch_size", value: "0".into(), message: "must be at least 1".into() });
        }
        if self.limit == Some(0) {
            return Err(EvalError::Options { option: "limit", value: "0".into(), message: "must be at least 1".into() });
        }
        if let Some(m) = self.max_len.filter(|&m| m < 2) {
            return Err(EvalError::Options { option: "max_len", value: m.to_string(), message: "must be at least 2".into() });
        }
        Ok(())
    }
}

/// Scores of one item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// The item's position in its source file.
    pub id: usize,
    /// `log p(continuation | context)` per option (nats).
    pub loglik: Vec<f64>,
    /// Per option, the length that normalised accuracy divides by.
    pub norm_chars: Vec<usize>,
    pub gold: Vec<usize>,
    /// Argmax of `loglik`.
    pub pred: usize,
    /// Argmax of `loglik / norm_chars`.
    pub pred_norm: usize,
}

impl ItemScore {
    /// Builds the score of one item and its two predictions.
    pub fn new(id: usize, loglik: Vec<f64>, norm_chars: Vec<usize>, gold: Vec<usize>) -> Self {
        let normed: Vec<f64> = loglik.iter().zip(&norm_chars).map(|(l, &c)| l / c.max(1) as f64).collect();
        Self { id, pred: argmax(&loglik), pred_norm: argmax(&normed), loglik, norm_chars, gold }
    }

    pub fn correct(&self) -> bool {
        self.gold.contains(&self.pred)
    }

    pub fn correct_norm(&self) -> bool {
        self.gold.contains(&self.pred_norm)
    }
}

/// Index of the first maximum (NaN never wins; all-NaN gives 0).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

/// A task's accuracy, normalised accuracy and 95% Wilson intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    /// Items evaluated.
    pub n: usize,
    pub acc: f64,
    pub acc_ci95: Interval,
    pub acc_norm: f64,
    pub acc_norm_ci95: Interval,
    /// Expected accuracy of uniform guessing on these items.
    pub chance: f64,
    /// Blocks removed from the model, ascending (empty for the dense model).
    pub removed_blocks: Vec<usize>,
}

/// Aggregates item scores into a [`TaskResult`].
pub fn summarize(task: &str, scores: &[ItemScore], chance: f64, mask: &BlockMask) -> TaskResult {
    let n = scores.len();
    let k = scores.iter().filter(|s| s.correct()).count();
    let k_norm = scores.iter().filter(|s| s.correct_norm()).count();
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    TaskResult {
        task: task.to_string(),
        n,
        acc: frac(k),
        acc_ci95: wilson95(k, n),
        acc_norm: frac(k_norm),
        acc_norm_ci95: wilson95(k_norm, n),
        chance,
        removed_blocks: mask.removed().collect(),
    }
}

/// Per-item scores of a prepared task under `mask`.
pub fn score_prepared(lm: &dyn BlockLm, prepared: &PreparedTask, mask: &BlockMask, batch_size: usize) -> Result<Vec<ItemScore>> {
    let lls = request_logliks(lm, &prepared.requests, mask, batch_size)?;
    let mut per_item: Vec<Vec<f64>> = prepared.task.items.iter().map(|it| vec![f64::NAN; it.choices.len()]).collect();
    for (r, ll) in prepared.requests.iter().zip(lls) {
        per_item[r.item][r.choice] = ll;
    }
    Ok(prepared
        .task
        .items
        .iter()
        .zip(per_item)
        .map(|(it, ll)| ItemScore::new(it.id, ll, it.choices.iter().map(|c| c.norm_chars).collect(), it.gold.clone()))
        .collect())
}

/// Evaluates a prepared task under `mask`: the call to repeat for many masks, since tokenisation is
/// already done.
pub fn evaluate_prepared(lm: &dyn BlockLm, prepared: &PreparedTask, mask: &BlockMask, batch_size: usize) -> Result<TaskResult> {
    let scores = score_prepared(lm, prepared, mask, batch_size)?;
    Ok(summarize(&prepared.task.name, &scores, prepared.task.chance(), mask))
}

/// Tokenises (through `cache`) and evaluates a task, or its seeded subset when `opts.limit` is set.
pub fn evaluate_task_cached(
    lm: &dyn BlockLm,
    tokenizer: &Tokenizer,
    cache: &mut TokenCache,
    task: &McTask,
    mask: &BlockMask,
    opts: &EvalOptions,
) -> Result<TaskResult> {
    opts.validate()?;
    let task = match opts.limit {
        Some(limit) => task.subset(limit, opts.seed)?,
        None => task.clone(),
    };
    let max_len = opts.max_len.unwrap_or(lm.info().max_positions);
    let prepared = prepare_task(&task, tokenizer, cache, max_len)?;
    tracing::debug!(task = %task.name, items = task.len(), requests = prepared.requests.len(), "evaluating");
    evaluate_prepared(lm, &prepared, mask, opts.batch_size)
}

/// Evaluates a task (or its seeded subset) with a fresh tokenisation cache. For a dense model pass
/// `BlockMask::dense(lm.num_blocks())`; a model loaded from a saved pruned directory is dense too.
pub fn evaluate_task(
    lm: &dyn BlockLm,
    tokenizer: &Tokenizer,
    task: &McTask,
    mask: &BlockMask,
    opts: &EvalOptions,
) -> Result<TaskResult> {
    evaluate_task_cached(lm, tokenizer, &mut TokenCache::new(), task, mask, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_normalisation_can_flip_the_choice() {
        // Hand-made: option 0 "a" (1 char) has ll -3.0 -> -3.0/char; option 1 "abcdef" (6 chars) has
        // ll -6.0 -> -1.0/char. acc picks option 0, acc_norm option 1.
        let s = ItemScore::new(0, vec![-3.0, -6.0], vec![1, 6], vec![1]);
        assert_eq!((s.pred, s.pred_norm), (0, 1));
        assert!(!s.correct() && s.correct_norm());
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[-1.0, -0.5, -0.5]), 1);
        assert_eq!(argmax(&[f64::NAN, -2.0, -1.0]), 2);
        assert_eq!(argmax(&[f64::NAN, f64::NAN]), 0);
    }

    #[test]
    fn summary_counts_any_gold_and_reports_the_mask() {
        let scores = vec![
            ItemScore::new(0, vec![-1.0, -2.0], vec![1, 1], vec![0]),
            ItemScore::new(1, vec![-1.0, -2.0], vec![1, 1], vec![1]),
            ItemScore::new(2, vec![-1.0, -2.0, -3.0], vec![1, 1, 1], vec![0, 2]),
            ItemScore::new(3, vec![-5.0, -2.0], vec![1, 1], vec![1]),
        ];
        let mask = BlockMask::from_removed(4, &[2, 1]).unwrap();
        let r = summarize("t", &scores, 0.5, &mask);
        assert_eq!(r.n, 4);
        assert_eq!(r.acc, 0.75);
        assert_eq!(r.removed_blocks, vec![1, 2]);
        assert!(r.acc_ci95.lo < 0.75 && r.acc_ci95.hi > 0.75);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"acc_ci95\":{\"lo\":"), "{json}");
    }

    #[test]
    fn options_are_checked() {
        assert!(EvalOptions::default().validate().is_ok());
        let e = EvalOptions { batch_size: 0, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        assert!(EvalOptions { limit: Some(0), ..Default::default() }.validate().is_err());
        assert!(EvalOptions { max_len: Some(1), ..Default::default() }.validate().is_err());
    }
}
