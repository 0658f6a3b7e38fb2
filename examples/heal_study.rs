//! Healing measured: for each mask and healer configuration, perplexity of the pruned model
//! unhealed and healed on the evaluation split (whole, cut per topic), on texts outside
//! Wikipedia that no calibration or tuning reads, and, with `--tune`, on held-back windows of the
//! calibration pool (the split the healer's settings are chosen on; the evaluation split is never
//! used to choose them).
//!
//! Configurations (comma-separated): `none`, or `linear` with `:key=value` overrides:
//! `ridge=R`, `scale=mean|diag` (the ridge's scaling), `fit=N` (fit windows), `guard=N` (guard windows, 0 = no guard), `single=0|1`
//! (patch single-block runs), `seqlen=S`, `share=S` (share of the windows drawn from `--heal-corpus`
//! alone; default: pooled with the calibration pool); e.g. `linear`, `linear:ridge=1e-3:guard=0`.
//!
//! ```text
//! cargo run --release --example heal_study -- --model smollm2-135m \
//!     --masks 13-18 --masks 5,12-18,26 --masks 3-7,13-18,26 --configs none,linear \
//!     --ood prose=$(evop assets path prose-bigbench) --ood code=... --out docs/results/heal-smollm2
//! ```
//! Rows go to `STEM.rows.jsonl` as they come (resumable: rows already there are skipped).
use anyhow::{bail, Context, Result};
use clap::Parser;
use evop::data::{read_wikipedia_leads, Corpus, SplitRule};
use evop::heal::{Healer, LinearPatch};
use evop::model::perplexity::{cut_windows, perplexity};
use evop::model::{encode, load, BlockLm, BlockMask, LoadOptions, LoadedModel};
use evop::{build_heal_data_with, HealDataSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model: smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, a GGUF file or a HF directory.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// A mask to heal (repeatable): removed blocks, comma-separated, ranges as `a-b`.
    #[arg(long, required = true)]
    masks: Vec<String>,
    /// Healer configurations (see the header).
    #[arg(long, value_delimiter = ',', default_value = "none,linear")]
    configs: Vec<String>,
    /// Seeds of the healing windows' draw.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Evaluation windows' length.
    #[arg(long, default_value_t = 256)]
    eval_seqlen: usize,
    /// Cap on each topic's evaluation windows (0: all of them, i.e. the whole split).
    #[arg(long, default_value_t = 0)]
    topic_windows: usize,
    /// Skip the evaluation split (e.g. when tuning).
    #[arg(long)]
    no_eval: bool,
    /// Out-of-domain text `NAME=PATH` (repeatable): windows from the start of the file.
    #[arg(long)]
    ood: Vec<String>,
    /// Windows and length of each out-of-domain text.
    #[arg(long, default_value_t = 16)]
    ood_windows: usize,
    #[arg(long, default_value_t = 512)]
    ood_seqlen: usize,
    /// Also score held-back windows of the calibration pool (documents with index % 9 == 4 are
    /// held back from the healer's pool): the split to choose settings on.
    #[arg(long)]
    tune: bool,
    #[arg(long, default_value_t = 32)]
    tune_windows: usize,
    /// Extra text for the healer's pool (like `evop prune --heal-corpus`).
    #[arg(long)]
    heal_corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Output stem: rows go to `STEM.rows.jsonl`.
    #[arg(long, default_value = "out/heal")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Row {
    model: String,
    removed: Vec<usize>,
    config: String,
    seed: u64,
    /// Perplexity on the whole evaluation split, pooled over the per-topic windows.
    eval_ppl: Option<f64>,
    eval_tokens: usize,
    topics: BTreeMap<String, f64>,
    ood: BTreeMap<String, f64>,
    tune_ppl: Option<f64>,
    /// With --tune and --heal-corpus: held-back paragraphs of the heal corpus.
    tune_extra_ppl: Option<f64>,
    heal_seconds: f64,
    /// Windows the patches were fitted on (0 unhealed).
    fit_windows: usize,
    patched_runs: usize,
    runs: Vec<evop::heal::RunReport>,
    heal_corpus: Option<String>,
    device: String,
    dtype: String,
}

fn parse_mask(s: &str, l: usize) -> Result<BlockMask> {
    let mut removed = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => removed.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => removed.push(part.trim().parse::<usize>()?),
        }
    }
    Ok(BlockMask::from_removed(l, &removed)?)
}

/// A healer configuration; fit windows default to `auto` for hidden size `hidden` (as `evop`'s
/// `--heal-windows auto`), `fit=N` sets them.
fn parse_config(s: &str, hidden: usize) -> Result<Option<(LinearPatch, HealDataSpec, Option<f64>)>> {
    let mut parts = s.split(':');
    match parts.next() {
        Some("none") => return Ok(None),
        Some("linear") => {}
        _ => bail!("unknown config `{s}` (none or linear[:key=value...])"),
    }
    let mut healer = LinearPatch::default();
    let mut spec = HealDataSpec::default();
    let mut share = None;
    let mut fit = None;
    for kv in parts {
        let (k, v) = kv.split_once('=').with_context(|| format!("`{kv}` in `{s}` is not key=value"))?;
        match k {
            "ridge" => healer.ridge = v.parse()?,
            "scale" => {
                healer.scale = match v {
                    "mean" => evop::heal::RidgeScale::Mean,
                    "diag" => evop::heal::RidgeScale::Diagonal,
                    _ => bail!("scale={v}: expected mean or diag"),
                }
            }
            "fit" => fit = Some(v.parse()?),
            "guard" => spec.guard_windows = v.parse()?,
            "single" => healer.single_block_runs = v == "1",
            "seqlen" => spec.seqlen = v.parse()?,
            "share" => share = Some(v.parse::<f64>()?),
            other => bail!("unknown key `{other}` in `{s}`"),
        }
    }
    healer.guard = spec.guard_windows > 0;
    spec.fit_windows = fit.unwrap_or_else(|| evop::fit_windows_for_hidden(hidden, spec.seqlen));
    Ok(Some((healer, spec, share)))
}

fn resolve_model(name: &str) -> Result<PathBuf> {
    let store = evop::assets::AssetStore::from_env();
    Ok(match name {
        "smollm2-135m" => store.smollm2_gguf()?,
        n if evop::assets::is_model_name(n) => store.model(n)?,
        path => PathBuf::from(path),
    })
}

/// Token-weighted perplexity over several window sets, and each set's own.
fn pooled(lm: &dyn BlockLm, sets: &BTreeMap<String, Vec<Vec<u32>>>, mask: &BlockMask, batch: usize) -> Result<(f64, usize, BTreeMap<String, f64>)> {
    let (mut sum, mut tokens) = (0.0, 0usize);
    let mut each = BTreeMap::new();
    for (name, w) in sets {
        let p = perplexity(lm, w, mask, batch)?;
        sum += p.mean_nll * p.tokens as f64;
        tokens += p.tokens;
        each.insert(name.clone(), p.perplexity);
    }
    Ok(((sum / tokens.max(1) as f64).exp(), tokens, each))
}

fn main() -> Result<()> {
    let args = Args::parse();
    evop::model::retain_freed_host_memory();
    let opts = LoadOptions { dtype: evop::model::parse_dtype(&args.dtype)?, device: evop::model::parse_device(&args.device)? };
    let model: LoadedModel = load(&resolve_model(&args.model)?, &opts)?;
    let l = model.lm.num_blocks();
    let tok = model.tokenizer()?.clone();
    let corpus = read_wikipedia_leads(&evop::assets::AssetStore::from_env().wikipedia_leads()?)?;
    let split = SplitRule::default().split(&corpus)?;
    // The healer's pool: the calibration pool (minus the tuning documents with --tune), plus --heal-corpus.
    let mut pool = split.calibration.clone();
    let mut tune_docs = Corpus { name: "tune".into(), documents: Vec::new() };
    if args.tune {
        let (tune, rest): (Vec<_>, Vec<_>) = pool.documents.into_iter().partition(|d| d.meta.index % 9 == 4);
        pool.documents = rest;
        tune_docs.documents = tune;
    }
    let mut extra = Corpus { name: "heal-corpus".into(), documents: Vec::new() };
    let mut tune_extra_docs = Corpus { name: "tune-extra".into(), documents: Vec::new() };
    if let Some(p) = &args.heal_corpus {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let docs: Vec<&str> = text.split("\n\n").map(str::trim).filter(|d| !d.is_empty()).collect();
        extra = Corpus::from_texts(p.display().to_string(), &docs);
        if args.tune {
            let (tune, rest): (Vec<_>, Vec<_>) = extra.documents.into_iter().partition(|d| d.meta.index % 9 == 4);
            extra.documents = rest;
            tune_extra_docs.documents = tune;
        }
    }
    let extra = (!extra.documents.is_empty()).then_some(extra);
    let mut topics = BTreeMap::new();
    if !args.no_eval {
        for (topic, text) in split.evaluation_texts_by_topic() {
            let mut w = cut_windows(&encode(&tok, &text)?, args.eval_seqlen);
            if args.topic_windows > 0 {
                w.truncate(args.topic_windows);
            }
            if !w.is_empty() {
                topics.insert(topic, w);
            }
        }
    }
    let mut ood = BTreeMap::new();
    for spec in &args.ood {
        let (name, path) = spec.split_once('=').with_context(|| format!("--ood {spec}: expected NAME=PATH"))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let mut w = cut_windows(&encode(&tok, &text)?, args.ood_seqlen);
        if w.len() < args.ood_windows {
            bail!("--ood {spec}: only {} windows of {} tokens", w.len(), args.ood_seqlen);
        }
        w.truncate(args.ood_windows);
        ood.insert(name.to_string(), w);
    }
    let tune = if args.tune {
        let w = cut_windows(&encode(&tok, &tune_docs.joined_text())?, 256);
        let step = (w.len() / args.tune_windows.max(1)).max(1);
        Some(w.into_iter().step_by(step).take(args.tune_windows).collect::<Vec<_>>())
    } else {
        None
    };
    let tune_extra = if args.tune && !tune_extra_docs.documents.is_empty() {
        let w = cut_windows(&encode(&tok, &tune_extra_docs.joined_text())?, 256);
        let step = (w.len() / args.tune_windows.max(1)).max(1);
        Some(w.into_iter().step_by(step).take(args.tune_windows).collect::<Vec<_>>())
    } else {
        None
    };

    let rows_path = args.out.with_extension("rows.jsonl");
    if let Some(dir) = rows_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let done: Vec<serde_json::Value> = std::fs::read_to_string(&rows_path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default();
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&rows_path)?;
    let heal_corpus = args.heal_corpus.as_ref().map(|p| p.display().to_string());
    let mut masks = vec![BlockMask::dense(l)];
    for m in &args.masks {
        masks.push(parse_mask(m, l)?);
    }
    for mask in &masks {
        let removed: Vec<usize> = mask.removed().collect();
        let configs: Vec<String> = if removed.is_empty() { vec!["none".into()] } else { args.configs.clone() };
        for config in &configs {
            let parsed = parse_config(config, model.lm.info().hidden_size)?;
            let seeds: Vec<u64> = if parsed.is_some() { args.seeds.clone() } else { vec![0] };
            for &seed in &seeds {
                let key = |r: &serde_json::Value| {
                    r["removed"] == serde_json::json!(removed) && r["config"] == serde_json::json!(config) && r["seed"] == serde_json::json!(seed)
                        && r["heal_corpus"] == serde_json::json!(heal_corpus) && r["model"] == serde_json::json!(args.model)
                };
                if done.iter().any(key) {
                    eprintln!("skipping {removed:?} {config} seed {seed}: already in {}", rows_path.display());
                    continue;
                }
                let (lm, healing) = match &parsed {
                    None => (model.lm.clone(), None),
                    Some((healer, spec, share)) => {
                        let data = build_heal_data_with(&model, &pool, extra.as_ref(), *share, spec, seed)?;
                        let healing = healer.heal(&model, mask, &data)?;
                        (model.rebuilt_with(healing.replacements.clone())?, Some(healing))
                    }
                };
                let t = Instant::now();
                let (eval_ppl, eval_tokens, topic_ppl) = if topics.is_empty() { (f64::NAN, 0, BTreeMap::new()) } else { pooled(lm.as_ref(), &topics, mask, args.batch_size)? };
                let (_, _, ood_ppl) = pooled(lm.as_ref(), &ood, mask, args.batch_size)?;
                let tune_ppl = tune.as_ref().map(|w| perplexity(lm.as_ref(), w, mask, args.batch_size).map(|p| p.perplexity)).transpose()?;
                let tune_extra_ppl = tune_extra.as_ref().map(|w| perplexity(lm.as_ref(), w, mask, args.batch_size).map(|p| p.perplexity)).transpose()?;
                let row = Row {
                    model: args.model.clone(),
                    removed: removed.clone(),
                    config: config.clone(),
                    seed,
                    eval_ppl: (!topics.is_empty()).then_some(eval_ppl),
                    eval_tokens,
                    topics: topic_ppl,
                    ood: ood_ppl,
                    tune_ppl,
                    tune_extra_ppl,
                    heal_seconds: healing.as_ref().map_or(0.0, |h| h.seconds),
                    fit_windows: parsed.as_ref().map_or(0, |p| p.1.fit_windows),
                    patched_runs: healing.as_ref().map_or(0, |h| h.patched_runs()),
                    runs: healing.as_ref().map_or_else(Vec::new, |h| h.runs.clone()),
                    heal_corpus: heal_corpus.clone(),
                    device: args.device.clone(),
                    dtype: args.dtype.clone(),
                };
                eprintln!(
                    "{:?} {config} seed {seed}: eval {:.3} ood {:?} tune {:?} / {:?} heal {:.1}s ({} patched; eval {:.0}s)",
                    removed, eval_ppl, row.ood, tune_ppl, tune_extra_ppl, row.heal_seconds, row.patched_runs, t.elapsed().as_secs_f64()
                );
                writeln!(out, "{}", serde_json::to_string(&row)?)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
