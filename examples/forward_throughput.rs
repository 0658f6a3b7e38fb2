//! Throughput of the full SmolLM2 forward (logits for every position) on this machine: tokens/s
//! for windows of 128 and 512 tokens at batch 1 and 8, plus the parts (an f32 matmul's GFLOP/s,
//! one block, the head). Prints a Markdown table; `--json` writes the figures.
//!
//! ```text
//! cargo run --release --example forward_throughput
//! python3 scripts/torch_forward.py   # the PyTorch reference on the same windows
//! ```
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use evop::model::{forward, load, AttnContext, BlockLm, LoadOptions};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model (GGUF file or HF directory); default: SmolLM2-135M-Instruct from the asset cache.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Device: cpu, cuda[:N], metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Timed repetitions per configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Shapes as SEQxBATCH.
    #[arg(long, value_delimiter = ',', default_value = "128x1,128x8,512x1,512x8")]
    shapes: Vec<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    f()?; // warm-up
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = evop::model::parse_device(&args.device)?;
    let dtype = evop::model::parse_dtype(&args.dtype)?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => evop::assets::AssetStore::from_env().smollm2_gguf()?,
    };
    let model = load(&path, &LoadOptions { dtype, device: device.clone() })?;
    let lm: &dyn BlockLm = model.lm.as_ref();
    let info = lm.info().clone();
    let sync = |t: &Tensor| -> Result<()> {
        t.flatten_all()?.narrow(0, 0, 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(())
    };

    // Matmul throughput of the backend at the shape of a (batch 8 x 128)-token FFN projection.
    let (m, k, n) = (1024usize, 576usize, 1536usize);
    let a = Tensor::randn(0f32, 1.0, (m, k), &device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &device)?.to_dtype(dtype)?;
    let t_mm = time(args.reps * 4, || sync(&a.matmul(&b)?))?;
    let big = Tensor::randn(0f32, 1.0, (2048, 2048), &device)?.to_dtype(dtype)?;
    let t_big = time(args.reps, || sync(&big.matmul(&big)?))?;
    println!("matmul {m}x{k}x{n}: {:.1} GFLOP/s; 2048^3: {:.1} GFLOP/s", 2.0 * (m * k * n) as f64 / t_mm / 1e9, 2.0 * 2048f64.powi(3) / t_big / 1e9);

    // The LM head's matmul shape (1,024 tokens x hidden x vocab) with the weight as a transposed
    // view (what `x.matmul(w.t())` gives) and as a contiguous transposed copy.
    let w = Tensor::randn(0f32, 1.0, (info.vocab_size, info.hidden_size), &device)?.to_dtype(dtype)?;
    let x = Tensor::randn(0f32, 1.0, (1024, info.hidden_size), &device)?.to_dtype(dtype)?;
    let wt = w.t()?.contiguous()?;
    let t_view = time(args.reps, || sync(&x.matmul(&w.t()?)?))?;
    let t_contig = time(args.reps, || sync(&x.matmul(&wt)?))?;
    println!("head-shaped matmul 1024x{}x{}: transposed view {:.2} ms, contiguous copy {:.2} ms", info.hidden_size, info.vocab_size, t_view * 1e3, t_contig * 1e3);

    println!("\n| window | batch | forward tok/s | one block ms | head ms |");
    println!("|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for shape in &args.shapes {
        let (s, bsz) = shape.split_once('x').ok_or_else(|| anyhow::anyhow!("bad shape `{shape}`"))?;
        let (s, bsz): (usize, usize) = (s.parse()?, bsz.parse()?);
        let ids: Vec<u32> = (0..s * bsz).map(|i| ((i * 7919) % 40000 + 100) as u32).collect();
        let ids = Tensor::from_vec(ids, (bsz, s), &device)?;
        let t_fwd = time(args.reps, || sync(&forward(lm, &ids)?))?;
        let ctx = AttnContext::new(&info, s, 0)?;
        let h = lm.embed(&ids, 0)?;
        let t_block = time(args.reps, || sync(&lm.block(10, &h, &ctx, None)?))?;
        let t_head = time(args.reps, || sync(&lm.head(&h)?))?;
        let tps = (s * bsz) as f64 / t_fwd;
        println!("| {s} | {bsz} | {tps:.0} | {:.1} | {:.1} |", t_block * 1e3, t_head * 1e3);
        rows.push(serde_json::json!({"seq": s, "batch": bsz, "tokens_per_s": tps, "block_ms": t_block * 1e3, "head_ms": t_head * 1e3}));
    }
    if let Some(p) = args.json {
        std::fs::write(p, serde_json::to_string_pretty(&serde_json::json!({"device": args.device, "dtype": args.dtype, "rows": rows}))?)?;
    }
    let _ = Device::Cpu;
    Ok(())
}
