//! Agreement of a device's logits with the CPU's on SmolLM2 (f32 and bf16), and the reference
//! perplexity (ASSETS.md: 14.125 on the first 512 tokens of the Wikipedia leads) on that device.
//!
//! ```text
//! cargo run --release --features cuda --example device_check -- --device cuda
//! ```
use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Parser;
use evop::model::perplexity::{cut_windows, join_texts, perplexity};
use evop::model::{encode, forward_masked, load, BlockMask, LoadOptions};

#[derive(Parser)]
struct Args {
    /// The device to compare with the CPU.
    #[arg(long, default_value = "cuda")]
    device: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = evop::model::parse_device(&args.device)?;
    let store = evop::assets::AssetStore::from_env();
    let path = store.smollm2_gguf()?;
    let corpus = evop::data::read_wikipedia_leads(&store.wikipedia_leads()?)?;
    let head: Vec<&str> = corpus.texts().into_iter().take(40).collect();
    let cpu = load(&path, &LoadOptions::default())?;
    let ids = encode(cpu.tokenizer()?, &join_texts(&head))?;
    let window = cut_windows(&ids[..512], 512);
    let l = cpu.lm.num_blocks();
    let masks = [BlockMask::dense(l), BlockMask::from_removed(l, &[3, 12, 17, 18, 19, 25])?];
    let ids_cpu = Tensor::from_vec(window[0].clone(), (1, 512), &candle_core::Device::Cpu)?;
    println!("| dtype | mask | max |logit diff| vs CPU f32 | mean |diff| | perplexity on {} |", args.device);
    println!("|---|---|---:|---:|---:|");
    for dtype in [DType::F32, DType::BF16] {
        let dev = load(&path, &LoadOptions { dtype, device: device.clone() })?;
        let ids_dev = ids_cpu.to_device(&device)?;
        for mask in &masks {
            let a = forward_masked(cpu.lm.as_ref(), &ids_cpu, mask)?;
            let b = forward_masked(dev.lm.as_ref(), &ids_dev, mask)?.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?;
            let d = (a - b)?.abs()?;
            let max = d.max_all()?.to_scalar::<f32>()?;
            let mean = d.mean_all()?.to_scalar::<f32>()?;
            let ppl = perplexity(dev.lm.as_ref(), &window, mask, 1)?.perplexity;
            println!("| {dtype:?} | {mask} | {max:.2e} | {mean:.2e} | {ppl:.3} |");
        }
    }
    Ok(())
}
