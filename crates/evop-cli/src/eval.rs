//! `evop eval`: perplexity of a dense, masked or saved model on the evaluation split (or any
//! text), and zero-shot multiple-choice accuracy on BIG-bench tasks.
use crate::common::{mask_from_list, ModelArgs};
use anyhow::{Context, Result};
use evop::data::{read_wikipedia_leads, Corpus, SplitRule};
use evop::eval::{evaluate_task_cached, load_bigbench, BigBenchFormat, EvalOptions, TokenCache};
use evop::EvalSet;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Blocks to skip, comma-separated (none: the model as loaded).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<usize>,
    /// Text to measure perplexity on (.txt); default: the Wikipedia leads' evaluation split.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    pub seqlen: usize,
    /// Evaluation windows (the first ones; 0 = all).
    #[arg(long, default_value_t = 32)]
    pub windows: usize,
    /// Also report per-topic perplexity with this many windows per topic (Wikipedia only; 0 = off).
    #[arg(long, default_value_t = 0)]
    pub topic_windows: usize,
    /// Zero-shot tasks, comma-separated: science, winogrande, step_inference, winowhy, strategyqa,
    /// social_iqa, or BIG-bench task paths TASK/SUBTASK.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Items per task (seeded subset; 0 = all).
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Seed of the task subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the perplexity measurement.
    #[arg(long)]
    pub no_ppl: bool,
    /// Windows (or options) per forward batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    // Settings errors before anything is downloaded, loaded or written.
    for name in &args.tasks {
        evop::eval::task_path(name)?;
    }
    if !args.no_ppl {
        crate::checks::seqlen("--seqlen", args.seqlen)?;
    }
    if args.no_ppl && args.tasks.is_empty() {
        anyhow::bail!("--no-ppl and no --tasks: nothing to evaluate");
    }
    if let Some(p) = &args.text {
        crate::checks::input_path("--text", p)?;
    }
    if let Some(p) = &args.json {
        crate::checks::output_file("--json", p)?;
    }
    let model = args.model.load_checked(|shape| {
        mask_from_list(shape.blocks, &args.skip)?;
        if !args.no_ppl {
            crate::checks::positions(shape, &[("--seqlen", args.seqlen)])?;
        }
        Ok(())
    })?;
    let lm = model.lm.as_ref();
    let mask = mask_from_list(lm.num_blocks(), &args.skip)?;
    let mut out = serde_json::json!({ "model": model.source.display().to_string(), "removed": args.skip });
    if !args.no_ppl {
        let max = (args.windows > 0).then_some(args.windows);
        let set = match &args.text {
            Some(p) => EvalSet::from_corpus(&model, &Corpus::from_text_file(p)?, args.seqlen, max)?,
            None => {
                let corpus = read_wikipedia_leads(&evop::assets::AssetStore::from_env().wikipedia_leads()?)?;
                let split = SplitRule::default().split(&corpus)?;
                EvalSet::from_split(&model, &split, args.seqlen, max, Some(args.topic_windows))?
            }
        };
        if set.windows.is_empty() {
            anyhow::bail!("the text has fewer than {} tokens: use a smaller --seqlen", args.seqlen);
        }
        let s = crate::progress::spinner(&format!("perplexity on {} tokens", set.tokens()));
        let r = evop::evaluate(lm, &set, &mask, args.batch_size)?;
        s.finish_and_clear();
        println!("perplexity {:.3} over {} tokens ({} windows of {}), {mask}", r.overall.perplexity, r.overall.tokens, r.overall.windows, args.seqlen);
        for (t, p) in &r.topics {
            println!("  {t:<32} {p:.3}");
        }
        out["perplexity"] = serde_json::to_value(&r)?;
    }
    if !args.tasks.is_empty() {
        let store = evop::assets::AssetStore::from_env();
        let tokenizer = model.tokenizer()?;
        let opts = EvalOptions { limit: (args.limit > 0).then_some(args.limit), seed: args.seed, batch_size: args.batch_size, ..EvalOptions::default() };
        let mut cache = TokenCache::new();
        let mut results = Vec::new();
        println!("| task | n | acc [95% CI] | acc_norm | chance |");
        println!("|---|---:|---|---:|---:|");
        for name in &args.tasks {
            let full = evop::eval::task_path(name)?;
            let file = store.bigbench_task(full).with_context(|| format!("fetching task {full}"))?;
            let task = load_bigbench(&file, full, BigBenchFormat::Auto)?;
            let s = crate::progress::spinner(&format!("scoring {name}"));
            let r = evaluate_task_cached(lm, tokenizer, &mut cache, &task, &mask, &opts)?;
            s.finish_and_clear();
            println!("| {name} | {} | {:.3} [{:.3}, {:.3}] | {:.3} | {:.3} |", r.n, r.acc, r.acc_ci95.lo, r.acc_ci95.hi, r.acc_norm, r.chance);
            results.push(r);
        }
        out["zero_shot"] = serde_json::to_value(&results)?;
    }
    if let Some(p) = &args.json {
        crate::common::atomic_write(p, serde_json::to_string_pretty(&out)?.as_bytes())?;
    }
    Ok(())
}
