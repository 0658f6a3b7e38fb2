//! Saves a model with some blocks removed as a Hugging Face directory, and writes the masked
//! model's logits on a few token ids next to it (`expected.safetensors`), so that
//! `scripts/make_fixtures.py --check-saved DIR --expected DIR/../NAME.expected.safetensors`
//! can verify that transformers loads the directory and computes the same logits.
//!
//! ```text
//! cargo run --release --example save_pruned -- crates/evop-model/tests/fixtures/llama --remove 1,2 --out out/llama-pruned
//! ```
use anyhow::{Context, Result};
use clap::Parser;
use evop::model::{forward_masked, load, save_pruned, BlockMask, LoadOptions, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// Model: a Hugging Face directory or a GGUF file.
    model: PathBuf,
    /// Blocks to remove, comma-separated.
    #[arg(long, value_delimiter = ',')]
    remove: Vec<usize>,
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let model = load(&args.model, &LoadOptions::default())?;
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &args.remove)?;
    save_pruned(&model, &mask, &args.out)?;
    let vocab = model.lm.info().vocab_size as u32;
    let ids: Vec<u32> = (0..2 * 16).map(|i| (i * 7 + 5) % vocab.min(120) + 4).collect();
    let ids = Tensor::from_vec(ids, (2, 16), &model.lm.info().device)?;
    let logits = forward_masked(model.lm.as_ref(), &ids, &mask)?;
    let expected_path = args.out.with_extension("expected.safetensors");
    let tensors = HashMap::from([("input_ids".to_string(), ids.to_dtype(candle_core::DType::I64)?), ("logits".to_string(), logits)]);
    candle_core::safetensors::save(&tensors, &expected_path).context("writing expected logits")?;
    println!("saved {} ({mask}) and {}", args.out.display(), expected_path.display());
    Ok(())
}
