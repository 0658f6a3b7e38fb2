//! Throughput of a dense and a depth-pruned model: prompt processing (a forward with logits at
//! every position) and generation with a KV cache, with the measured speedup next to the ideal
//! L / (L - n). The default model is a random-weight Llama-2-7B shape (`synthetic:llama2-7b`) in
//! bf16; `scripts/torch_pruned_throughput.py` measures PyTorch eager on the same shapes.
//!
//! ```text
//! cargo run --release --features cuda --example pruned_throughput -- --device cuda --dtype bf16
//! ```
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Parser;
use evop::model::{forward_cached, forward_masked, load, load_placed, BlockLm, BlockMask, KvCache, LoadOptions};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model: a GGUF file, an HF directory or `synthetic:NAME`.
    #[arg(long, default_value = "synthetic:llama2-7b")]
    model: std::path::PathBuf,
    /// Devices: one, or several to split the blocks over (pipeline placement).
    #[arg(long, value_delimiter = ',', default_value = "cuda")]
    devices: Vec<String>,
    /// With several devices: also load the model on this one device and compare the logits.
    #[arg(long)]
    check_against: Option<String>,
    /// dtype: f32, bf16, f16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Blocks removed in the pruned model (the ones just before the last block).
    #[arg(long, default_value_t = 6)]
    remove: usize,
    /// Prompt processing: batch x tokens.
    #[arg(long, default_value_t = 1)]
    prompt_batch: usize,
    #[arg(long, default_value_t = 2048)]
    prompt_len: usize,
    /// Generation: batch, prompt tokens and new tokens.
    #[arg(long, default_value_t = 64)]
    gen_batch: usize,
    #[arg(long, default_value_t = 128)]
    gen_prompt: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Waits until the work that produced `t` is done (GPUs run asynchronously). Reading one element
/// back would not do: candle copies a tensor's whole storage to the host first, which for f32
/// logits is hundreds of MB and dominated the f32 figures measured that way.
fn sync(t: &Tensor) -> Result<()> {
    t.device().synchronize()?;
    Ok(())
}

fn timed<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// Greedy generation of `new_tokens` after `prompt` with a KV cache; returns the seconds spent in
/// the decoding steps (the prompt's prefill excluded) and the last token ids.
fn generate(lm: &dyn BlockLm, prompt: &Tensor, mask: &BlockMask, new_tokens: usize) -> Result<f64> {
    let mut cache = KvCache::new(lm.num_blocks());
    let logits = forward_cached(lm, prompt, mask, &mut cache)?;
    let mut next = logits.argmax_keepdim(1)?.to_dtype(DType::U32)?;
    sync(&next)?;
    let start = Instant::now();
    for _ in 1..new_tokens {
        let logits = forward_cached(lm, &next, mask, &mut cache)?;
        next = logits.argmax_keepdim(1)?.to_dtype(DType::U32)?;
    }
    sync(&next)?;
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    evop::model::retain_freed_host_memory();
    let args = Args::parse();
    let devices = args.devices.iter().map(|d| evop::model::parse_device(d)).collect::<Result<Vec<_>, _>>()?;
    let device = devices.first().cloned().ok_or_else(|| anyhow::anyhow!("--devices is empty"))?;
    let dtype = evop::model::parse_dtype(&args.dtype)?;
    let t0 = Instant::now();
    let model = load_placed(&args.model, dtype, &devices)?;
    let load_s = t0.elapsed().as_secs_f64();
    let lm: &dyn BlockLm = model.lm.as_ref();
    let (l, vocab) = (lm.num_blocks(), lm.info().vocab_size);
    if args.remove + 2 > l {
        bail!("--remove {} leaves fewer than 2 of {l} blocks", args.remove);
    }
    let skipped: Vec<usize> = (l - 1 - args.remove..l - 1).collect();
    let pruned = BlockMask::from_removed(l, &skipped)?;
    let dense = BlockMask::dense(l);
    println!("model {} ({l} blocks, {:?} on {:?}), loaded in {load_s:.1} s; pruned skips {skipped:?}", args.model.display(), dtype, args.devices);

    let ids = |b: usize, s: usize, salt: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..b * s).map(|i| ((i * 7919 + salt * 104_729) % (vocab - 10) + 5) as u32).collect();
        Ok(Tensor::from_vec(v, (b, s), &device)?)
    };
    let prompt = ids(args.prompt_batch, args.prompt_len, 1)?;
    let gen_prompt = ids(args.gen_batch, args.gen_prompt, 2)?;
    if let Some(single) = &args.check_against {
        let other = load(&args.model, &LoadOptions { dtype, device: evop::model::parse_device(single)? })?;
        let probe = prompt.narrow(1, 0, args.prompt_len.min(128))?;
        let a = forward_masked(lm, &probe, &pruned)?.to_dtype(DType::F32)?;
        let b = forward_masked(other.lm.as_ref(), &probe.to_device(&other.lm.info().device)?, &pruned)?
            .to_dtype(DType::F32)?
            .to_device(&device)?;
        let diff: f32 = (a - b)?.abs()?.max_all()?.to_scalar()?;
        println!("logits on {:?} vs {single}: max |diff| {diff:.3e}", args.devices);
    }
    let prompt_tokens = (args.prompt_batch * args.prompt_len) as f64;
    let gen_tokens = (args.gen_batch * (args.new_tokens - 1)) as f64;

    println!("\n| model | blocks | prompt {}x{} tok/s | generation {}x{} tok/s |", args.prompt_batch, args.prompt_len, args.gen_batch, args.new_tokens);
    println!("|---|---:|---:|---:|");
    let mut figures = Vec::new();
    for (name, mask) in [("dense", &dense), ("pruned", &pruned)] {
        let t_prompt = timed(args.reps, || sync(&forward_masked(lm, &prompt, mask)?))?;
        let mut gen = Vec::new();
        generate(lm, &gen_prompt, mask, args.new_tokens.min(4))?; // warm-up
        for _ in 0..args.reps.min(3) {
            gen.push(generate(lm, &gen_prompt, mask, args.new_tokens)?);
        }
        let t_gen = median(gen);
        let (p, g) = (prompt_tokens / t_prompt, gen_tokens / t_gen);
        println!("| {name} | {} | {p:.0} | {g:.0} |", (l - mask.num_removed()));
        figures.push((name, (l - mask.num_removed()), p, g));
    }
    let ideal = l as f64 / (l - args.remove) as f64;
    let (sp, sg) = (figures[1].2 / figures[0].2, figures[1].3 / figures[0].3);
    println!("\nspeedup: prompt {sp:.3}x, generation {sg:.3}x; ideal L/(L-n) = {l}/{} = {ideal:.3}", l - args.remove);
    if let Some(path) = &args.json {
        let rows: Vec<_> = figures
            .iter()
            .map(|(n, k, p, g)| serde_json::json!({"model": n, "blocks": k, "prompt_tok_s": p, "generation_tok_s": g}))
            .collect();
        let doc = serde_json::json!({
            "model": args.model, "devices": args.devices, "dtype": args.dtype, "load_s": load_s,
            "prompt": [args.prompt_batch, args.prompt_len], "generation": [args.gen_batch, args.gen_prompt, args.new_tokens],
            "removed": skipped, "rows": rows, "speedup_prompt": sp, "speedup_generation": sg, "ideal": ideal,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
