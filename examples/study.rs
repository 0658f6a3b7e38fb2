//! The reproduction study (docs/results.md): SmolLM2 pruned at several n by every method, on the
//! same data, over several seeds; perplexity on the evaluation split overall and per Wikipedia
//! topic (mean and worst topic), calibration loss and search time.
//!
//! Method names: the baselines (`sleb`, `shortgpt`, `ppl`, `angular`, `last-n`, `random`,
//! `exhaustive`) run on SLEB's protocol (random calibration windows); `evop-random` is EvoP's
//! search on the same random windows; `evop-ccds` on CCDS windows of the same size;
//! `evop-ccds:OBJ` / `evop-random:OBJ` with another objective (`balanced`, `worst-cluster`,
//! `cvar:Q`); `sleb-ccds` is SLEB's greedy run on the CCDS windows.
//!
//! ```text
//! cargo run --release --example study -- --ns 3,6,9 --seeds 0,1,2 --out docs/results-study
//! # on a GPU build: --device cuda --calib-windows 32 --eval-windows 0 --topic-windows 16
//! # zero-shot columns: --tasks science,winogrande,step_inference --task-limit 200
//! ```
use anyhow::{bail, Context, Result};
use clap::Parser;
use evop::baselines::{pruner_by_name, Exhaustive};
use evop::data::{read_wikipedia_leads, SplitRule};
use evop::model::{load, BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions, LoadOptions, LossKind};
use evop::search::{Fidelity, Fitness, Mask, MaskSpace};
use evop::{
    build_calibration, evaluate, CalibrationFitness, CalibrationSpec, EmbedderKind, EvalSet, Objective, Pipeline, SamplerKind,
    SearchSpec, StrategyKind,
};
use std::sync::Arc;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Device: cpu, cuda[:N], metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// dtype: f32 (default), bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Blocks to remove.
    #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
    ns: Vec<usize>,
    /// Seeds (calibration draw, search, random baseline).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Methods (see the module docs).
    #[arg(long, value_delimiter = ',', default_value = "sleb,shortgpt,ppl,angular,last-n,random,evop-random,evop-ccds")]
    methods: Vec<String>,
    /// n at which the exhaustive optimum of the calibration loss is computed.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    exhaustive_ns: Vec<usize>,
    /// Calibration windows.
    #[arg(long, default_value_t = 8)]
    calib_windows: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    seqlen: usize,
    /// CCDS candidate windows.
    #[arg(long, default_value_t = 512)]
    pool: usize,
    /// CCDS embedder: minilm or hidden:B.
    #[arg(long, default_value = "minilm")]
    embedder: String,
    /// CCDS clusters (default: automatic).
    #[arg(long)]
    clusters: Option<usize>,
    /// EvoP's default objective (for `evop-ccds` and `evop-random`).
    #[arg(long, default_value = "mean")]
    objective: Objective,
    #[arg(long, default_value_t = 16)]
    population: usize,
    #[arg(long, default_value_t = 15)]
    generations: u64,
    #[arg(long, default_value_t = 6)]
    stalled: u64,
    /// Evaluation windows (0 = the whole evaluation split).
    #[arg(long, default_value_t = 32)]
    eval_windows: usize,
    #[arg(long, default_value_t = 256)]
    eval_seqlen: usize,
    /// Windows per topic for per-topic perplexity (0 = off).
    #[arg(long, default_value_t = 4)]
    topic_windows: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Zero-shot tasks scored for every row (science, winogrande, step_inference; empty = none).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Items per zero-shot task (seeded subset).
    #[arg(long, default_value_t = 200)]
    task_limit: usize,
    /// Output stem: writes STEM.md and STEM.json.
    #[arg(long, default_value = "study")]
    out: PathBuf,
}

#[derive(Serialize, Clone)]
struct Row {
    n: usize,
    method: String,
    seed: u64,
    removed: Vec<usize>,
    /// Mean NLL on the random calibration set of this seed (SLEB's objective).
    calib_nll: f64,
    eval_ppl: f64,
    mean_topic_ppl: Option<f64>,
    worst_topic_ppl: Option<f64>,
    seconds: f64,
    block_forwards: u64,
    /// Zero-shot accuracy per task.
    zero_shot: BTreeMap<String, f64>,
}

/// SLEB's greedy search run on any objective: each step removes the block whose removal gives the
/// lowest objective, never the first or last block. Returns the removed blocks and block forwards.
fn greedy(
    lm: &Arc<dyn BlockLm>,
    calib: &evop::data::CalibrationSet,
    objective: Objective,
    opts: EvaluatorOptions,
    n: usize,
) -> Result<(Vec<usize>, u64)> {
    let l = lm.num_blocks();
    let windows = calib.token_windows();
    let fitness = CalibrationFitness::new(lm.clone(), &windows, calib.clusters.as_deref(), objective, opts)?;
    let full = Fidelity(windows.len() as u64);
    let mut removed: Vec<usize> = Vec::new();
    for step in 1..=n {
        let space = MaskSpace::new(l, step, [0, l - 1])?;
        let options: Vec<usize> = (1..l - 1).filter(|b| !removed.contains(b)).collect();
        let masks: Vec<Mask> = options
            .iter()
            .map(|&b| Mask::from_removed(&space, &[removed.as_slice(), &[b]].concat()))
            .collect::<std::result::Result<_, _>>()?;
        let scores = fitness.evaluate(&masks, full)?;
        let best = (0..options.len()).min_by(|&a, &b| scores[a].total_cmp(&scores[b])).context("no block left to remove")?;
        removed.push(options[best]);
    }
    removed.sort_unstable();
    Ok((removed, fitness.counts().block_forwards))
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = evop::model::parse_device(&args.device)?;
    let store = evop::assets::AssetStore::from_env();
    let dtype = evop::model::parse_dtype(&args.dtype)?;
    let model = load(&store.smollm2_gguf()?, &LoadOptions { device, dtype })?;
    let lm = model.lm.clone();
    let l = lm.num_blocks();
    let corpus = read_wikipedia_leads(&store.wikipedia_leads()?)?;
    let split = SplitRule::default().split(&corpus)?;
    let max_eval = (args.eval_windows > 0).then_some(args.eval_windows);
    let eval = EvalSet::from_split(&model, &split, args.eval_seqlen, max_eval, Some(args.topic_windows))?;
    let evopts = EvaluatorOptions { batch_size: args.batch_size, ..Default::default() };
    let embedder = match args.embedder.as_str() {
        "minilm" => EmbedderKind::MiniLm,
        e => EmbedderKind::Hidden { block: e.strip_prefix("hidden:").and_then(|b| b.parse().ok()).context("--embedder")? },
    };
    let mut tasks = Vec::new();
    for name in &args.tasks {
        let full = evop::eval::resolve_task(name);
        let task = evop::eval::load_bigbench(&store.bigbench_task(full)?, full, evop::eval::BigBenchFormat::Auto)?;
        let opts = evop::eval::EvalOptions { limit: Some(args.task_limit), batch_size: args.batch_size, ..Default::default() };
        tasks.push((name.clone(), task, opts));
    }
    let mut token_cache = evop::eval::TokenCache::new();
    let t0 = Instant::now();
    let dense = evaluate(lm.as_ref(), &eval, &BlockMask::dense(l), args.batch_size)?;
    eprintln!("dense: ppl {:.3} on {} tokens ({:.1}s)", dense.overall.perplexity, eval.tokens(), t0.elapsed().as_secs_f64());
    let mut rows: Vec<Row> = Vec::new();
    for &seed in &args.seeds {
        let random_spec = CalibrationSpec { windows: args.calib_windows, seqlen: args.seqlen, sampler: SamplerKind::Random };
        let ccds_spec = CalibrationSpec {
            sampler: SamplerKind::Ccds { embedder: embedder.clone(), k: args.clusters, pool: args.pool },
            ..random_spec.clone()
        };
        let calib_random = build_calibration(&model, &split.calibration, &random_spec, seed)?;
        let needs_ccds = args.methods.iter().any(|m| m.contains("ccds"));
        let calib_ccds = if needs_ccds { Some(build_calibration(&model, &split.calibration, &ccds_spec, seed)?) } else { None };
        let random_windows = calib_random.token_windows();
        let sleb_eval = CalibrationEvaluator::new(lm.clone(), &random_windows, evopts.clone())?;
        for &n in &args.ns {
            let mut methods = args.methods.clone();
            if args.exhaustive_ns.contains(&n) && !methods.iter().any(|m| m == "exhaustive") {
                methods.push("exhaustive".into());
            }
            for method in &methods {
                if method == "exhaustive" && !args.exhaustive_ns.contains(&n) {
                    continue;
                }
                let start = Instant::now();
                let searched = ["evop-", "evop1l-", "greedy-"].iter().find_map(|p| method.strip_prefix(p).map(|rest| (*p, rest)));
                let (removed, block_forwards) = if let Some((kind, rest)) = searched {
                    let (source, objective) = match rest.split_once(':') {
                        Some((s, o)) => (s, o),
                        None => (rest, ""),
                    };
                    // `kl`: mean KL divergence to the dense model's next-token distributions.
                    let (objective, loss) = match objective {
                        "" => (args.objective, LossKind::Nll),
                        "kl" => (Objective::MeanNll, LossKind::KlToDense),
                        o => (o.parse::<Objective>().map_err(anyhow::Error::msg)?, LossKind::Nll),
                    };
                    let calib = match source {
                        "random" => &calib_random,
                        "ccds" => calib_ccds.as_ref().expect("built"),
                        other => bail!("unknown calibration `{other}` in method `{method}`"),
                    };
                    let opts = EvaluatorOptions { loss, ..evopts.clone() };
                    if kind == "greedy-" {
                        greedy(&lm, calib, objective, opts, n)?
                    } else {
                        let strategy = if kind == "evop1l-" { StrategyKind::OnePlusLambda } else { StrategyKind::Ga };
                        let spec = SearchSpec { strategy, population: args.population, generations: args.generations, stalled: Some(args.stalled), ..SearchSpec::default() };
                        let r = Pipeline::new(&model, split.calibration.clone())
                            .remove(n)
                            .objective(objective)
                            .search(spec)
                            .seed(seed)
                            .evaluator(opts)
                            .run_on(calib)?;
                        (r.removed, r.counts.block_forwards)
                    }
                } else if method == "sleb-ccds" {
                    let w = calib_ccds.as_ref().expect("built").token_windows();
                    let r = pruner_by_name("sleb")?.prune(&lm, &w, n)?;
                    (r.removed(), r.counts.block_forwards)
                } else if method == "exhaustive" {
                    let (mask, _) = Exhaustive { protected: vec![0, l - 1], ..Exhaustive::default() }.run(&sleb_eval, n)?;
                    (mask.removed().collect(), 0)
                } else {
                    let name = if method == "random" { format!("random:{seed}") } else { method.clone() };
                    let r = pruner_by_name(&name)?.prune(&lm, &random_windows, n)?;
                    (r.removed(), r.counts.block_forwards)
                };
                let seconds = start.elapsed().as_secs_f64();
                let mask = BlockMask::from_removed(l, &removed)?;
                let calib_nll = sleb_eval.window_losses(&mask)?.iter().sum::<f64>() / random_windows.len() as f64;
                let e = evaluate(lm.as_ref(), &eval, &mask, args.batch_size)?;
                let mut zero_shot = BTreeMap::new();
                for (name, task, opts) in &tasks {
                    let r = evop::eval::evaluate_task_cached(lm.as_ref(), model.tokenizer()?, &mut token_cache, task, &mask, opts)?;
                    zero_shot.insert(name.clone(), r.acc);
                }
                let row = Row {
                    n,
                    method: method.clone(),
                    seed,
                    removed,
                    calib_nll,
                    eval_ppl: e.overall.perplexity,
                    mean_topic_ppl: e.mean_topic,
                    worst_topic_ppl: e.worst_topic.map(|w| w.1),
                    seconds,
                    block_forwards,
                    zero_shot,
                };
                eprintln!("seed {seed} n {n} {method}: {:?} calib {:.4} ppl {:.3} ({seconds:.1}s)", row.removed, row.calib_nll, row.eval_ppl);
                // Rows also go to a JSONL file as they come, so an interrupted study keeps them.
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(args.out.with_extension("rows.jsonl"))?;
                writeln!(f, "{}", serde_json::to_string(&row)?)?;
                rows.push(row);
            }
        }
    }

    // Aggregate over seeds.
    let mut md = String::new();
    md.push_str(&format!(
        "Dense perplexity {:.3} ({} evaluation tokens, windows of {}); calibration {} x {} tokens; seeds {:?}; device {}.\n\n",
        dense.overall.perplexity, eval.tokens(), args.eval_seqlen, args.calib_windows, args.seqlen, args.seeds, args.device
    ));
    let task_cols: String = args.tasks.iter().map(|t| format!(" {t} acc |")).collect();
    let task_align: String = args.tasks.iter().map(|_| "---:|").collect();
    md.push_str(&format!("| n | method | eval PPL (mean ± sd) | mean-topic PPL | worst-topic PPL | calib NLL (random set) | search s |{task_cols} removed (seed 0) |\n|---:|---|---:|---:|---:|---:|---:|{task_align}---|\n"));
    let mut groups: BTreeMap<(usize, usize), Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        let order = args.methods.iter().position(|m| m == &r.method).unwrap_or(usize::MAX);
        groups.entry((r.n, order)).or_default().push(r);
    }
    for ((n, _), rs) in &groups {
        let (p, ps) = mean_std(&rs.iter().map(|r| r.eval_ppl).collect::<Vec<_>>());
        let mt: Vec<f64> = rs.iter().filter_map(|r| r.mean_topic_ppl).collect();
        let wt: Vec<f64> = rs.iter().filter_map(|r| r.worst_topic_ppl).collect();
        let (c, _) = mean_std(&rs.iter().map(|r| r.calib_nll).collect::<Vec<_>>());
        let (s, _) = mean_std(&rs.iter().map(|r| r.seconds).collect::<Vec<_>>());
        let fmt = |v: &[f64]| if v.is_empty() { "-".to_string() } else { format!("{:.3}", mean_std(v).0) };
        let accs: String = args
            .tasks
            .iter()
            .map(|t| format!(" {:.3} |", mean_std(&rs.iter().filter_map(|r| r.zero_shot.get(t).copied()).collect::<Vec<_>>()).0))
            .collect();
        md.push_str(&format!(
            "| {n} | {} | {p:.3} ± {ps:.3} | {} | {} | {c:.4} | {s:.1} |{accs} {:?} |\n",
            rs[0].method, fmt(&mt), fmt(&wt), rs[0].removed
        ));
    }
    let md_path = args.out.with_extension("md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(args.out.with_extension("json"), serde_json::to_string_pretty(&serde_json::json!({"dense": dense, "rows": rows}))?)?;
    println!("{md}");
    Ok(())
}
