//! Throughput of the full SmolLM2 forward (logits for every position) on this machine: tokens/s
//! for windows of 128 and 512 tokens at batch 1 and 8, plus the parts (an f32 matmul's GFLOP/s,
//! one block, the head). Prints a Markdown table; `--json` writes the figures.
//!
//! `--profile SEQxBATCH` instead times one Llama/Mistral block op by op on the model's own
//! weights (block `--profile-block`): norms, projections, rotary embedding, every step of the
//! tensor-op attention (`kernels::attention_reference`) and the attention as dispatched
//! (`kernels::attention`, the fused CPU kernel for f32), the MLP activation, residual adds.
//!
//! ```text
//! cargo run --release --example forward_throughput
//! cargo run --release --example forward_throughput -- --profile 512x8 --reps 5
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
    /// Instead of the throughput table: the per-op breakdown of one block at this SEQxBATCH.
    #[arg(long)]
    profile: Option<String>,
    /// The block that `--profile` times.
    #[arg(long, default_value_t = 10)]
    profile_block: usize,
    /// On CUDA, let f32 matrix products use TF32 tensor cores.
    #[arg(long)]
    tf32: bool,
}

fn parse_shape(shape: &str) -> Result<(usize, usize)> {
    let (s, b) = shape.split_once('x').ok_or_else(|| anyhow::anyhow!("bad shape `{shape}` (want SEQxBATCH)"))?;
    Ok((s.parse()?, b.parse()?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `n` token ids spread over the vocabulary (any model's: a 32,000-token one too).
fn token_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919) % vocab.saturating_sub(100).max(1) + 100.min(vocab - 1)) as u32).collect()
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
    evop::model::retain_freed_host_memory();
    let args = Args::parse();
    evop::model::device::allow_tf32(args.tf32);
    let device = evop::model::parse_device(&args.device)?;
    let dtype = evop::model::parse_dtype(&args.dtype)?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => evop::assets::AssetStore::from_env().smollm2_gguf()?,
    };
    let model = load(&path, &LoadOptions { dtype, device: device.clone() })?;
    if let Some(shape) = &args.profile {
        let (s, b) = parse_shape(shape)?;
        return profile_block(&model, args.profile_block, s, b, args.reps);
    }
    let lm: &dyn BlockLm = model.lm.as_ref();
    let info = lm.info().clone();

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
        let (s, bsz) = parse_shape(shape)?;
        let ids = token_ids(s * bsz, info.vocab_size);
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

/// Waits until the work that produced `t` is done (GPUs run asynchronously). Reading one element
/// back would not do: candle copies a tensor's whole storage to the host first, which for f32
/// logits is hundreds of MB and dominated the f32 figures measured that way.
fn sync(t: &Tensor) -> Result<()> {
    t.device().synchronize()?;
    Ok(())
}

/// Times one Llama/Mistral block op by op (median of `reps` after a warm-up), each op on inputs
/// computed beforehand, and the whole block as the model runs it. The ops mirror `llama.rs`.
fn profile_block(model: &evop::model::LoadedModel, layer: usize, s: usize, bsz: usize, reps: usize) -> Result<()> {
    use candle_core::Module;
    use evop::model::kernels::{self, Linear, RotaryTable};
    let lm: &dyn BlockLm = model.lm.as_ref();
    let info = lm.info().clone();
    let (dtype, device) = (info.dtype, info.device.clone());
    let cfg = &model.hf_config;
    let num = |key: &str| cfg.get(key).and_then(|v| v.as_f64());
    let heads = num("num_attention_heads").ok_or_else(|| anyhow::anyhow!("config has no num_attention_heads"))? as usize;
    let kv_heads = num("num_key_value_heads").map_or(heads, |v| v as usize);
    let head_dim = num("head_dim").map_or(info.hidden_size / heads, |v| v as usize);
    let eps = num("rms_norm_eps").unwrap_or(1e-6) as f32;
    let theta = num("rope_theta").unwrap_or(10_000.0);
    let w = |name: &str| -> Result<Tensor> {
        let key = format!("model.layers.{layer}.{name}.weight");
        model.weights.get(&key).cloned().ok_or_else(|| anyhow::anyhow!("no weight `{key}` (--profile needs a Llama/Mistral model)"))
    };
    let lin = |name: &str| -> Result<Linear> { Ok(Linear::new(w(name)?, None)) };
    let (q_proj, k_proj, v_proj, o_proj) = (lin("self_attn.q_proj")?, lin("self_attn.k_proj")?, lin("self_attn.v_proj")?, lin("self_attn.o_proj")?);
    let (gate, up, down) = (lin("mlp.gate_proj")?, lin("mlp.up_proj")?, lin("mlp.down_proj")?);
    let (in_norm, post_norm) = (w("input_layernorm")?, w("post_attention_layernorm")?);
    let rotary = RotaryTable::new(head_dim, info.max_positions, theta, dtype, &device)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let ctx = AttnContext::new(&info, s, 0)?;
    let ids = token_ids(s * bsz, info.vocab_size);
    let ids = Tensor::from_vec(ids, (bsz, s), &device)?;
    let hidden = lm.embed(&ids, 0)?;
    let hidden = lm.block(0, &hidden, &ctx, None)?; // a realistic residual stream

    // Inputs of every op, computed once.
    let x = kernels::rms_norm(&hidden, &in_norm, eps)?;
    let (q, k, v) = (q_proj.forward(&x)?, k_proj.forward(&x)?, v_proj.forward(&x)?);
    let (qh, kh) = (kernels::split_heads(&q, heads)?, kernels::split_heads(&k, kv_heads)?);
    let vh = kernels::split_heads(&v, kv_heads)?.contiguous()?;
    let (qr, kr) = rotary.apply(&qh, &kh, 0)?;
    let n_rep = heads / kv_heads;
    let kx = kernels::repeat_kv(kr.clone(), n_rep)?.contiguous()?;
    let vx = kernels::repeat_kv(vh.clone(), n_rep)?.contiguous()?;
    let kt = kx.t()?.contiguous()?;
    let raw = qr.contiguous()?.matmul(&kt)?;
    let scaled = ((&raw * scale)?).to_dtype(DType::F32)?;
    let masked = match &ctx.mask {
        Some(m) => scaled.broadcast_add(&m.to_dtype(DType::F32)?)?,
        None => scaled.clone(),
    };
    let probs = kernels::softmax_last_dim(&masked)?.to_dtype(dtype)?;
    let pv = probs.matmul(&vx)?;
    let attn = kernels::causal_attention(&qr, &kr, &vh, &ctx, scale)?;
    let o = o_proj.forward(&attn)?;
    let x1 = (&hidden + &o)?;
    let n = kernels::rms_norm(&x1, &post_norm, eps)?;
    let (g, u) = (gate.forward(&n)?, up.forward(&n)?);
    let act = (kernels::silu(&g)? * &u)?;
    let mlp = down.forward(&act)?;

    // CPU ops run eagerly; on a GPU, synchronising on an op's first output waits for the rest.
    type Op<'a> = Box<dyn FnMut() -> Result<Tensor> + 'a>;
    let mut ops: Vec<(&str, &str, Op)> = vec![
        ("input rmsnorm", "", Box::new(|| Ok(kernels::rms_norm(&hidden, &in_norm, eps)?))),
        ("q, k, v projections", "gemm", Box::new(|| {
            let q = q_proj.forward(&x)?;
            k_proj.forward(&x)?;
            v_proj.forward(&x)?;
            Ok(q)
        })),
        ("split heads, v contiguous", "", Box::new(|| {
            kernels::split_heads(&q, heads)?;
            kernels::split_heads(&k, kv_heads)?;
            Ok(kernels::split_heads(&v, kv_heads)?.contiguous()?)
        })),
        ("rotary (q, k)", "", Box::new(|| Ok(rotary.apply(&qh, &kh, 0)?.0))),
        ("attention, as dispatched", "attn", Box::new(|| Ok(kernels::causal_attention(&qr, &kr, &vh, &ctx, scale)?))),
        ("attention, materialised scores + fused softmax", "part", Box::new(|| Ok(kernels::attention_fused_softmax(&qr, &kr, &vh, ctx.mask.as_ref(), scale)?))),
        ("attention, tensor ops (reference)", "ref", Box::new(|| Ok(kernels::attention_reference(&qr, &kr, &vh, ctx.mask.as_ref(), scale)?))),
        ("  repeat_kv (k, v) + contiguous", "part", Box::new(|| {
            kernels::repeat_kv(kr.clone(), n_rep)?.contiguous()?;
            Ok(kernels::repeat_kv(vh.clone(), n_rep)?.contiguous()?)
        })),
        ("  k transpose contiguous", "part", Box::new(|| Ok(kx.t()?.contiguous()?))),
        ("  scores q k^T", "part", Box::new(|| Ok(qr.contiguous()?.matmul(&kt)?))),
        ("  scale, to f32", "part", Box::new(|| Ok(((&raw * scale)?).to_dtype(DType::F32)?))),
        ("  mask add", "part", Box::new(|| match &ctx.mask {
            Some(m) => Ok(scaled.broadcast_add(&m.to_dtype(DType::F32)?)?),
            None => Ok(scaled.clone()),
        })),
        ("  softmax", "part", Box::new(|| Ok(kernels::softmax_last_dim(&masked)?.to_dtype(dtype)?))),
        ("  fused scale + mask + softmax (replaces the three rows above)", "part", Box::new(|| {
            Ok(evop::model::kernels::masked_softmax::masked_softmax(&raw, ctx.mask.as_ref(), scale)?)
        })),
        ("  probs v", "part", Box::new(|| Ok(probs.matmul(&vx)?))),
        ("  merge heads", "part", Box::new(|| Ok(pv.transpose(1, 2)?.reshape((bsz, s, heads * head_dim))?))),
        ("o projection", "gemm", Box::new(|| Ok(o_proj.forward(&attn)?))),
        ("residual add (attention), as dispatched", "", Box::new(|| Ok(kernels::add(&hidden, &o)?))),
        ("residual add (attention), tensor op", "part", Box::new(|| Ok((&hidden + &o)?))),
        ("post-attention rmsnorm", "", Box::new(|| Ok(kernels::rms_norm(&x1, &post_norm, eps)?))),
        ("gate, up projections", "gemm", Box::new(|| {
            let g = gate.forward(&n)?;
            up.forward(&n)?;
            Ok(g)
        })),
        ("silu(gate) * up, as dispatched", "", Box::new(|| Ok(kernels::silu_mul(&g, &u)?))),
        ("silu(gate) * up, tensor ops", "part", Box::new(|| Ok((kernels::silu(&g)? * &u)?))),
        ("down projection", "gemm", Box::new(|| Ok(down.forward(&act)?))),
        ("residual add (MLP), as dispatched", "", Box::new(|| Ok(kernels::add(&x1, &mlp)?))),
    ];
    println!("Block {layer} at {s} x {bsz} ({} tokens), {heads} heads, {kv_heads} KV heads, head_dim {head_dim}; median of {reps}", s * bsz);
    println!("\n| op | ms |\n|---|---:|");
    let (mut sum_dispatched, mut sum_reference, mut gemm_ms) = (0.0, 0.0, 0.0);
    for (name, kind, op) in ops.iter_mut() {
        let t = time(reps, || sync(&op()?))? * 1e3;
        match *kind {
            "attn" => sum_dispatched += t,
            "ref" => sum_reference += t,
            "part" => {}
            k => {
                sum_dispatched += t;
                sum_reference += t;
                if k == "gemm" {
                    gemm_ms += t;
                }
            }
        }
        println!("| {name} | {t:.2} |");
    }
    let t_block = time(reps, || sync(&lm.block(layer, &hidden, &ctx, None)?))? * 1e3;
    println!("| sum of ops, attention as dispatched | {sum_dispatched:.2} |");
    println!("| sum of ops, tensor-op attention | {sum_reference:.2} |");
    println!("| of which projections (GEMM) | {gemm_ms:.2} |");
    println!("| whole block (`BlockLm::block`) | {t_block:.2} |");
    Ok(())
}
