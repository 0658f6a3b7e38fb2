//! Zero-shot multiple-choice evaluation of full and depth-pruned language models.
//!
//! Scoring follows lm-evaluation-harness (Gao et al., github.com/EleutherAI/lm-evaluation-harness,
//! `output_type: multiple_choice`): each option's continuation is scored by its summed token
//! log-likelihood given the context (`acc`) and by the same divided by the option's length in
//! characters (`acc_norm`); see [`score`] for the tokenisation and batching rules and [`evaluate`]
//! for the metrics. Tasks come from BIG-bench `task.json` files (Srivastava et al. 2022,
//! arXiv 2206.04615, Apache-2.0), including WinoGrande twins in lm-evaluation-harness's
//! partial-scoring form ([`bigbench`]). Accuracies carry 95% Wilson intervals ([`stats`]).
//!
//! The data path: `task.json` -> [`McTask`] (optionally a seeded [`McTask::subset`]) ->
//! [`PreparedTask`] (tokenised once through a [`TokenCache`]) -> [`evaluate_prepared`] under any
//! [`BlockMask`](evop_model::BlockMask) -> [`TaskResult`] (JSON-serialisable).
//!
//! ```no_run
//! use evop_eval::{evaluate_task, load_bigbench, BigBenchFormat, EvalOptions};
//! use evop_model::{load, BlockMask, LoadOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = load(std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"), &LoadOptions::default())?;
//! let task = load_bigbench(std::path::Path::new("task.json"), "science", BigBenchFormat::Auto)?;
//! let mask = BlockMask::from_removed(model.lm.num_blocks(), &[20, 21])?;
//! let opts = EvalOptions { limit: Some(200), seed: 0, ..EvalOptions::default() };
//! let r = evaluate_task(model.lm.as_ref(), model.tokenizer()?, &task, &mask, &opts)?;
//! println!("{}", serde_json::to_string(&r)?);
//! # Ok(()) }
//! ```
pub mod bigbench;
pub mod error;
pub mod evaluate;
pub mod score;
pub mod stats;
pub mod task;

pub use bigbench::{known_task_names, load_bigbench, parse_bigbench, resolve_task, task_path, BigBenchFormat, DEV_TASKS, OTHER_TASKS};
pub use error::{EvalError, Result};
pub use evaluate::{
    evaluate_prepared, evaluate_task, evaluate_task_cached, score_prepared, summarize, EvalOptions, ItemScore, TaskResult,
};
pub use score::{encode_pair, prepare_task, request_logliks, PreparedTask, Request, TokenCache};
pub use stats::{wilson95, Interval};
pub use task::{Choice, McItem, McTask};
