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
//!
//! Rows go to `STEM.rows.jsonl` as they come, and the tables to `STEM.md`. `--render PAGE`
//! regenerates the tables of a Markdown page from committed rows files instead of running
//! anything: every `<!-- study-table rows=A.rows.jsonl,B.rows.jsonl [digits=N] [seeds] [removed]
//! [bold] [tasks=T,U] -->` ... `<!-- /study-table -->` section is replaced by the table of those
//! rows (paths relative to the page; `digits`: decimals of perplexities, default 3; `seeds`: a
//! column counting the seeds; `removed`: the first seed's removed blocks; `bold`: the lowest
//! perplexities at each n in bold; `tasks`: zero-shot columns), the rest of the page is kept, and
//! the page is written through a temporary file renamed into place. With `--check` it only
//! reports whether the page is up to date:
//!
//! ```text
//! cargo run --release --example study -- --render docs/results.md [--check]
//! ```
use anyhow::{bail, Context, Result};
use clap::Parser;
use evop::baselines::{pruner_by_name, Exhaustive};
use evop::data::{read_wikipedia_leads, SplitRule};
use evop::model::{load, BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions, LoadOptions, LossKind};
use evop::search::{Fidelity, Fitness, Mask, MaskSpace};
use evop::{
    build_calibration, evaluate, CalibrationFitness, CalibrationSpec, EmbedderKind, EvalSet, Objective, Pipeline, SamplerKind,
    Screening, SearchSpec, StrategyKind,
};
use std::sync::Arc;
use serde::{Deserialize, Serialize};
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
    /// GA: fraction of each generation replaced by random masks (default: EvoP's, 0).
    #[arg(long)]
    immigrants: Option<f64>,
    /// Baselines whose answers join the initial population of every EvoP search (as `evop prune
    /// --seed-with`; default: none).
    #[arg(long, value_delimiter = ',')]
    seed_with: Vec<String>,
    /// Appended to every method name in the rows (e.g. `/k=4`), to tell runs of other settings
    /// apart in one table.
    #[arg(long, default_value = "")]
    tag: String,
    /// Screen the GA's candidates on the first N tokens of every calibration window and score the
    /// 4 best at full length (as `evop prune --screen-tokens N`).
    #[arg(long)]
    screen_tokens: Option<usize>,
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
    /// Folder of calibration sets: each set is loaded from it when present, otherwise built and
    /// saved there (so sets embedded with MiniLM on one machine can be reused on another).
    #[arg(long)]
    calib_cache: Option<PathBuf>,
    /// Only build (and cache) the calibration sets, then stop.
    #[arg(long)]
    prepare_only: bool,
    /// Output stem: writes STEM.md and STEM.json.
    #[arg(long, default_value = "study")]
    out: PathBuf,
    /// Regenerate the `study-table` sections of this Markdown page from the rows files they name,
    /// and run nothing else.
    #[arg(long, value_name = "PAGE")]
    render: Option<PathBuf>,
    /// With --render: change nothing, fail if the page is not what rendering would write.
    #[arg(long, requires = "render")]
    check: bool,
}

#[derive(Serialize, Deserialize, Clone)]
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
    #[serde(default)]
    zero_shot: BTreeMap<String, f64>,
}

/// The calibration set of `spec` and `seed`: from `--calib-cache` when there, else built (and
/// saved there when the folder is given).
fn cached_calibration(
    args: &Args,
    model: &evop::model::LoadedModel,
    pool: &evop::data::Corpus,
    spec: &CalibrationSpec,
    sampler: &str,
    seed: u64,
) -> Result<evop::data::CalibrationSet> {
    let k = args.clusters.map_or("auto".to_string(), |k| k.to_string());
    let name = format!("{sampler}-k{k}-pool{}-{}x{}-seed{seed}.json", args.pool, spec.windows, spec.seqlen);
    let path = args.calib_cache.as_ref().map(|d| d.join(&name));
    if let Some(p) = path.as_ref().filter(|p| p.is_file()) {
        return Ok(evop::data::CalibrationSet::load(p)?);
    }
    let t = Instant::now();
    let set = build_calibration(model, pool, spec, seed)?;
    eprintln!("calibration {name}: built in {:.1}s", t.elapsed().as_secs_f64());
    if let Some(p) = path {
        std::fs::create_dir_all(p.parent().expect("has a folder"))?;
        set.save(&p)?;
    }
    Ok(set)
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
    if let Some(page) = &args.render {
        return render_page(page, args.check);
    }
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
    if args.prepare_only {
        for &seed in &args.seeds {
            let random_spec = CalibrationSpec { windows: args.calib_windows, seqlen: args.seqlen, sampler: SamplerKind::Random };
            cached_calibration(&args, &model, &split.calibration, &random_spec, "random", seed)?;
            let ccds_spec = CalibrationSpec { sampler: SamplerKind::Ccds { embedder: embedder.clone(), k: args.clusters, pool: args.pool }, ..random_spec };
            cached_calibration(&args, &model, &split.calibration, &ccds_spec, &format!("ccds-{}", args.embedder.replace(':', "")), seed)?;
        }
        return Ok(());
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
        let calib_random = cached_calibration(&args, &model, &split.calibration, &random_spec, "random", seed)?;
        let needs_ccds = args.methods.iter().any(|m| m.contains("ccds"));
        let calib_ccds = if needs_ccds {
            Some(cached_calibration(&args, &model, &split.calibration, &ccds_spec, &format!("ccds-{}", args.embedder.replace(':', "")), seed)?)
        } else {
            None
        };

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
                        let screening = match (strategy, args.screen_tokens) {
                            (StrategyKind::Ga, Some(t)) => Some(Screening { windows: calib.len(), tokens: Some(t), position_stride: 1, finalists: 4 }),
                            _ => None,
                        };
                        let mut spec = SearchSpec { strategy, population: args.population, generations: args.generations, stalled: Some(args.stalled), screening, immigrants: args.immigrants.or(SearchSpec::default().immigrants), ..SearchSpec::default() };
                        spec.seed_with_baselines(&lm, &calib.token_windows(), n, &args.seed_with)?;
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
                    method: format!("{method}{}", args.tag),
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
    md.push_str(&table(&rows, &TableStyle { tasks: args.tasks.clone(), ..TableStyle::default() }));
    let md_path = args.out.with_extension("md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(args.out.with_extension("json"), serde_json::to_string_pretty(&serde_json::json!({"dense": dense, "rows": rows}))?)?;
    println!("{md}");
    Ok(())
}

/// How a table of rows is laid out (the options of a `study-table` section).
#[derive(Clone, Debug)]
struct TableStyle {
    /// Decimals of perplexities below 10^4 (larger ones get three significant digits).
    digits: usize,
    /// A column with the number of rows (seeds) behind each line.
    seeds: bool,
    /// A column with the removed blocks of each method's first row (the first seed).
    removed: bool,
    /// The lowest eval, mean-topic and worst-topic perplexities at each n in bold.
    bold: bool,
    /// Zero-shot accuracy columns, in this order.
    tasks: Vec<String>,
}

impl Default for TableStyle {
    fn default() -> Self {
        TableStyle { digits: 3, seeds: false, removed: true, bold: false, tasks: Vec::new() }
    }
}

/// A perplexity: `digits` decimals below 10^4, three significant digits above (`2.95e+04`).
fn fmt_ppl(x: f64, digits: usize) -> String {
    if !x.is_finite() || x.abs() < 1e4 {
        return format!("{x:.digits$}");
    }
    let s = format!("{x:.2e}");
    let (mantissa, exp) = s.split_once('e').expect("an exponent");
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    let exp: i32 = exp.parse().expect("an integer exponent");
    format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// One line per (n, method), methods in the order they first appear in `rows`: means over the
/// rows (seeds) of the line, and the spread (sample standard deviation) of the eval perplexity.
fn table(rows: &[Row], style: &TableStyle) -> String {
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.method.as_str()) {
            order.push(&r.method);
        }
    }
    let mut groups: BTreeMap<(usize, usize), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let at = order.iter().position(|m| *m == r.method).expect("listed");
        groups.entry((r.n, at)).or_default().push(r);
    }
    let mean = |v: Vec<f64>| if v.is_empty() { None } else { Some(mean_std(&v).0) };
    struct Line<'a> {
        n: usize,
        rows: &'a [&'a Row],
        ppl: (f64, f64),
        mean_topic: Option<f64>,
        worst_topic: Option<f64>,
    }
    let lines: Vec<Line> = groups
        .iter()
        .map(|(&(n, _), rs)| Line {
            n,
            rows: rs,
            ppl: mean_std(&rs.iter().map(|r| r.eval_ppl).collect::<Vec<_>>()),
            mean_topic: mean(rs.iter().filter_map(|r| r.mean_topic_ppl).collect()),
            worst_topic: mean(rs.iter().filter_map(|r| r.worst_topic_ppl).collect()),
        })
        .collect();
    let lowest = |n: usize, f: &dyn Fn(&Line) -> Option<f64>| lines.iter().filter(|l| l.n == n).filter_map(f).fold(f64::INFINITY, f64::min);
    let cell = |text: String, value: Option<f64>, best: f64| {
        if style.bold && value == Some(best) {
            format!("**{text}**")
        } else {
            text
        }
    };
    let d = style.digits;
    let mut md = String::from("| n | method |");
    let mut align = String::from("|---:|---|");
    if style.seeds {
        md.push_str(" seeds |");
        align.push_str("---:|");
    }
    md.push_str(" eval PPL (mean ± sd) | mean-topic PPL | worst-topic PPL | calib NLL (random set) | search s |");
    align.push_str("---:|---:|---:|---:|---:|");
    for t in &style.tasks {
        md.push_str(&format!(" {t} acc |"));
        align.push_str("---:|");
    }
    if style.removed {
        md.push_str(" removed (seed 0) |");
        align.push_str("---|");
    }
    md.push('\n');
    md.push_str(&align);
    md.push('\n');
    for l in &lines {
        let first = l.rows[0];
        md.push_str(&format!("| {} | {} |", l.n, first.method));
        if style.seeds {
            md.push_str(&format!(" {} |", l.rows.len()));
        }
        let ppl = format!("{} ± {}", fmt_ppl(l.ppl.0, d), fmt_ppl(l.ppl.1, d));
        let topic = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| fmt_ppl(x, d));
        md.push_str(&format!(
            " {} | {} | {} | {:.4} | {:.1} |",
            cell(ppl, Some(l.ppl.0), lowest(l.n, &|x| Some(x.ppl.0))),
            cell(topic(l.mean_topic), l.mean_topic, lowest(l.n, &|x| x.mean_topic)),
            cell(topic(l.worst_topic), l.worst_topic, lowest(l.n, &|x| x.worst_topic)),
            mean_std(&l.rows.iter().map(|r| r.calib_nll).collect::<Vec<_>>()).0,
            mean_std(&l.rows.iter().map(|r| r.seconds).collect::<Vec<_>>()).0,
        ));
        for t in &style.tasks {
            let acc = mean(l.rows.iter().filter_map(|r| r.zero_shot.get(t).copied()).collect());
            md.push_str(&acc.map_or_else(|| " - |".to_string(), |a| format!(" {a:.3} |")));
        }
        if style.removed {
            md.push_str(&format!(" {:?} |", first.removed));
        }
        md.push('\n');
    }
    md
}

/// Reads rows written by the study (one JSON object per line).
fn read_rows(path: &std::path::Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        rows.push(serde_json::from_str(line).with_context(|| format!("{} line {}: not a study row", path.display(), i + 1))?);
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

const TABLE_BEGIN: &str = "<!-- study-table ";
const TABLE_END: &str = "<!-- /study-table -->";

/// The page with every `study-table` section regenerated from its rows files.
fn render(page: &std::path::Path, text: &str) -> Result<String> {
    let base = page.parent().unwrap_or(std::path::Path::new("."));
    let mut out: Vec<String> = Vec::new();
    let mut lines = text.lines().enumerate();
    let mut sections = 0;
    while let Some((i, line)) = lines.next() {
        out.push(line.to_string());
        let at = || format!("{} line {}", page.display(), i + 1);
        if line.trim() == TABLE_END {
            bail!("{}: `{TABLE_END}` without a `{}...-->` before it", at(), TABLE_BEGIN.trim_end());
        }
        let Some(spec) = line.trim().strip_prefix(TABLE_BEGIN).and_then(|s| s.strip_suffix("-->")) else { continue };
        let mut style = TableStyle { removed: false, ..TableStyle::default() };
        let mut files = Vec::new();
        for opt in spec.split_whitespace() {
            match opt.split_once('=') {
                Some(("rows", v)) => files.extend(v.split(',').map(|f| base.join(f))),
                Some(("digits", v)) => style.digits = v.parse().with_context(|| format!("{}: digits=`{v}` is not a number", at()))?,
                Some(("tasks", v)) => style.tasks = v.split(',').map(str::to_string).collect(),
                None if opt == "seeds" => style.seeds = true,
                None if opt == "removed" => style.removed = true,
                None if opt == "bold" => style.bold = true,
                _ => bail!("{}: unknown study-table option `{opt}` (rows=, digits=, tasks=, seeds, removed, bold)", at()),
            }
        }
        if files.is_empty() {
            bail!("{}: the study-table section names no rows files (rows=A.rows.jsonl,...)", at());
        }
        let mut rows = Vec::new();
        for f in &files {
            rows.extend(read_rows(f).with_context(at)?);
        }
        // Skip the old content up to the closing marker, then write the new table there.
        loop {
            match lines.next() {
                Some((_, l)) if l.trim() == TABLE_END => break,
                Some((_, l)) if l.trim().starts_with(TABLE_BEGIN) => bail!("{}: the section is not closed before the next one", at()),
                Some(_) => {}
                None => bail!("{}: the section is not closed with `{TABLE_END}`", at()),
            }
        }
        out.push(String::new());
        out.extend(table(&rows, &style).lines().map(str::to_string));
        out.push(String::new());
        out.push(TABLE_END.to_string());
        sections += 1;
    }
    if sections == 0 {
        bail!("{}: no `{}...-->` section to render", page.display(), TABLE_BEGIN.trim_end());
    }
    let mut rendered = out.join("\n");
    if text.ends_with('\n') {
        rendered.push('\n');
    }
    Ok(rendered)
}

/// `--render PAGE [--check]`.
fn render_page(page: &std::path::Path, check: bool) -> Result<()> {
    let text = std::fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
    let rendered = render(page, &text)?;
    if rendered == text {
        println!("{} is up to date", page.display());
        return Ok(());
    }
    if check {
        let line = text.lines().zip(rendered.lines()).position(|(a, b)| a != b).unwrap_or_else(|| text.lines().count().min(rendered.lines().count()));
        bail!("{} is not up to date (first difference at line {}); run with --render {0} without --check", page.display(), line + 1);
    }
    let name = page.file_name().map_or_else(|| "page".into(), |n| n.to_string_lossy().into_owned());
    let tmp = page.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &rendered).and_then(|()| std::fs::rename(&tmp, page)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("writing {}", page.display()))
    })?;
    println!("{} rendered", page.display());
    Ok(())
}
