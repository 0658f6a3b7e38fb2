//! `evop generate`: sampling with a KV cache from a dense or masked model, so a user can see that
//! a pruned model still writes text.
use crate::common::{mask_from_list, ModelArgs};
use anyhow::{Context, Result};
use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;
use evop::model::{encode, forward_cached, KvCache};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Blocks to skip, comma-separated (e.g. a mask found by `evop prune`).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<usize>,
    /// New tokens to generate.
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    // Settings errors before anything is downloaded or loaded.
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        anyhow::bail!("--temperature {}: must be 0 (greedy) or positive", args.temperature);
    }
    if let Some(p) = args.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        anyhow::bail!("--top-p {p}: must be in (0, 1]");
    }
    if args.prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let model = args.model.load_checked(|shape| mask_from_list(shape.blocks, &args.skip).map(drop))?;
    let lm = model.lm.as_ref();
    let tok = model.tokenizer()?;
    let mask = mask_from_list(lm.num_blocks(), &args.skip)?;
    let prompt = encode(tok, &args.prompt)?;
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let max = lm.info().max_positions;
    if prompt.len() + args.max_new_tokens > max {
        anyhow::bail!(
            "--max-new-tokens {}: with the prompt's {} tokens that exceeds the model's {max} positions",
            args.max_new_tokens,
            prompt.len()
        );
    }
    let temperature = (args.temperature > 0.0).then_some(args.temperature);
    let mut sampler = LogitsProcessor::new(args.seed, temperature, args.top_p);
    let mut cache = KvCache::new(lm.num_blocks());
    let device = &lm.info().device;
    let mut input = Tensor::new(prompt.as_slice(), device)?.unsqueeze(0)?;
    let mut generated: Vec<u32> = Vec::new();
    let eos = model.hf_config.get("eos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    print!("{}", args.prompt);
    let start = std::time::Instant::now();
    for _ in 0..args.max_new_tokens {
        let logits = forward_cached(lm, &input, &mask, &mut cache)?.squeeze(0)?;
        let next = sampler.sample(&logits).context("sampling")?;
        if Some(next) == eos {
            break;
        }
        let before = tok.decode(&generated, false).unwrap_or_default();
        generated.push(next);
        let after = tok.decode(&generated, false).unwrap_or_default();
        print!("{}", after.get(before.len()..).unwrap_or(""));
        std::io::stdout().flush()?;
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!();
    eprintln!("{} tokens in {secs:.2} s ({:.1} tokens/s), {mask}", generated.len(), generated.len() as f64 / secs);
    Ok(())
}
