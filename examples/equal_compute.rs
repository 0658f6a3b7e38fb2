//! Quality against wall time: pruning methods compared at equal compute, as users compare them.
//!
//! For one model, every n and seed: SLEB (Song et al. ICML 2024) on its own protocol (random
//! calibration windows, mean NLL) at several token budgets traces the baseline's quality-vs-time
//! curve; each EvoP configuration (Wu et al. 2025, arXiv 2502.14910) is a point, plus an anytime
//! curve (the best-so-far mask at each generation's elapsed time, evaluated afterwards). Every
//! method is timed from its calibration windows to its mask (CCDS sets come from `--calib-cache`,
//! built beforehand with `--prepare-only`, and their build time is reported separately) and scored
//! by the same evaluator on the evaluation split (overall and worst topic).
//!
//! EvoP configurations (every GA: population 32, up to 30 generations, stop after 8 stalled, no
//! immigrants; LOSS is `kl` (KL to the dense model's next-token distribution) or `nll`):
//! - `ga:LOSS:W`: the GA on W CCDS windows; `paper` is `ga:kl:4`, the defaults measured in
//!   docs/results.md at equal tokens;
//! - `mf:LOSS:S/W/F` (`mf:S/W/F`: NLL): multi-fidelity EvoP: CCDS W windows; greedy seed and GA
//!   screening on the first S windows (the greedy answer joins the initial population); the F
//!   best distinct masks of the final population decided on all W windows. A suffix `:pP:sT`
//!   changes the GA's shape: population P, stop after T stalled generations; `:ppl` seeds it with
//!   the one-shot perplexity ranking instead of SLEB's greedy answer; `:tN` computes the seed on
//!   the first N tokens of each screening window (e.g. `mf:kl:4/16/4:p16:s4:t64`, the `quick`
//!   preset of `evop prune`); `:bo` runs the GA with block-order operators
//!   (`evop::GaOperators::BlockOrder`); `:nb` starts the GA from mutants of its seeds instead of
//!   random masks (`evop::SearchSpec::init_near_seeds`).
//! - `portfolio:R:D:MF` (e.g. `portfolio:16/3/4:16:mf:kl:4/16/4:p16:s3:none:nb`, the CPU default of
//!   `evop prune`): the decision stage over every searcher's answers (`evop::decision`). Timed
//!   from the windows to the answer: the greedy seed of MF on its screening windows, SLEB on its
//!   own protocol on the first R random windows of the seed's random draw (mean NLL), the GA of
//!   MF seeded with both answers, then the GA's finalists, SLEB's answer and the seed decided by
//!   mean NLL on D CCDS windows (`DxS`: of S tokens each; else `--decision-seqlen`) of the
//!   calibration pool drawn under a distinct seed without any
//!   window the searches read (their draw, like the CCDS set's, is made beforehand and reported in
//!   `calibration_seconds`). The row `sleb@portfolio` is SLEB given the portfolio's seconds on the
//!   same random draw (windows sized from the seconds SLEB took inside the portfolio). `R/S/K`
//!   in R's place races the portfolio's SLEB (`evop::baselines::Race`: every candidate of a step
//!   on the first S windows, the best K on all R); SLEB at equal time stays unraced, its window
//!   count then guessed from racing's share of the candidate-windows and redone if its
//!   seconds miss the portfolio's by more than 15% (at most twice). Untimed,
//!   for choosing the decision's token count on data that is not the evaluation split: every
//!   candidate's NLL on `--decision-study-windows` decision windows and on `--validation-windows`
//!   random windows of 512 tokens of the calibration pool (rows: `candidates`).
//!
//! - With `--replay-from ROWS --replay-method CONFIG`, a portfolio configuration only decides:
//!   each seed's candidates come from ROWS (the CONFIG row of the same model and n), and are
//!   decided on this configuration's decision windows, drawn as its search would have drawn them
//!   (rows `replay:NAME`; e.g. the decisions of a GPU run replayed on the CPU with other windows).
//! - `oracle:P/T`: **a bound, not a method**: the GA (population P, up to 30 generations, stop
//!   after T stalled) whose fitness is the mean NLL on the evaluation windows themselves, i.e.
//!   the evaluation perplexity it reports, started from mutants of every SLEB answer of the run
//!   and every mask of `--oracle-seeds-from` for the same model and n. Its answer is the best
//!   mask a search that could read the evaluation split finds: no pruner can be better than SLEB
//!   by more than that on the cell (as far as the search finds it). Untimed in spirit; its seconds
//!   are reported but compare with nothing.
//!
//! ```text
//! cargo run --release --example equal_compute -- --model smollm2-135m --ns 6,9,12 --seeds 0,1,2 \
//!     --calib-cache out/calib --prepare-only --evop paper,mf:4/64/8
//! cargo run --release --features cuda --example equal_compute -- --device cuda --calib-cache out/calib \
//!     --model smollm2-135m --ns 6,9,12 --seeds 0,1,2 --evop paper,mf:4/64/8 --out docs/results/equal-smollm2
//! ```
//!
//! Rows go to `STEM.rows.jsonl` as they come (one per method, n and seed).
use anyhow::{bail, Context, Result};
use clap::Parser;
use evop::baselines::{Pruner, Race, Sleb};
use evop::data::{read_wikipedia_leads, CalibrationSet, SplitRule};
use evop::model::{load, BlockLm, BlockMask, EvaluatorOptions, LoadOptions, LoadedModel, LossKind};
use evop::search::{GenerationReport, Observer, StopReason};
use evop::decision::{decide, decision_windows, Candidate, DecisionSpec};
use evop::{
    build_calibration, evaluate, CalibrationSpec, EmbedderKind, EvalSet, Objective, Pipeline, SamplerKind, Screening,
    GaOperators, SearchJob, SearchSpec,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Model: a known asset name (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), a GGUF
    /// file or a Hugging Face directory.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Device: cpu, cuda[:N], metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Blocks to remove.
    #[arg(long, value_delimiter = ',', default_value = "6,9,12")]
    ns: Vec<usize>,
    /// Seeds (calibration draws and searches).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// SLEB's calibration budgets in tokens (random windows of --seqlen tokens; `none`: no SLEB).
    #[arg(long, value_delimiter = ',', default_value = "512,2048,8192,32768", value_parser = parse_budget)]
    sleb_tokens: Vec<Option<usize>>,
    /// EvoP configurations (see the module docs; empty: none).
    #[arg(long, value_delimiter = ',', default_value = "paper,mf:4/64/8")]
    evop: Vec<String>,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    seqlen: usize,
    /// CCDS candidate windows (MiniLM-embedded).
    #[arg(long, default_value_t = 512)]
    pool: usize,
    /// Evaluation windows (0 = the whole evaluation split).
    #[arg(long, default_value_t = 32)]
    eval_windows: usize,
    #[arg(long, default_value_t = 512)]
    eval_seqlen: usize,
    /// Windows per topic for the worst-topic perplexity.
    #[arg(long, default_value_t = 4)]
    topic_windows: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Folder of CCDS calibration sets (loaded when present, else built and saved there).
    #[arg(long)]
    calib_cache: Option<PathBuf>,
    /// Only build the CCDS calibration sets, then stop.
    #[arg(long)]
    prepare_only: bool,
    /// Also report the dense perplexity on the whole evaluation split in windows of this many
    /// tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    dense_full_seqlen: usize,
    /// Rows files whose scored masks (same model, evaluated on the same windows) are reused
    /// instead of evaluated again (the evaluator is deterministic; f32 rows only).
    #[arg(long, value_delimiter = ',')]
    scored_from: Vec<PathBuf>,
    /// Portfolio: decision windows scored (untimed beyond the configuration's D) to study the
    /// decision's token count.
    #[arg(long, default_value_t = 32)]
    decision_study_windows: usize,
    /// Portfolio: tokens per decision window (default: --seqlen, as `evop prune`).
    #[arg(long)]
    decision_seqlen: Option<usize>,
    /// Portfolio: random calibration-pool windows of 512 tokens on which every candidate is
    /// scored (untimed; validation data for choosing the decision's settings; 0: off).
    #[arg(long, default_value_t = 8)]
    validation_windows: usize,
    /// Skip the dense model's evaluation (only printed).
    #[arg(long)]
    skip_dense: bool,
    /// Portfolio: skip the `sleb@` row (SLEB given the portfolio's seconds), e.g. where earlier
    /// rows of the same cells hold it.
    #[arg(long)]
    skip_sleb_at_equal_time: bool,
    /// Portfolio: decide among the candidates of the `--replay-method` rows of this rows file
    /// (same model, n and seed) instead of searching: the decision stage alone, replayed with
    /// this configuration's decision windows (drawn as the search would have: the search's CCDS
    /// set and SLEB's random windows left out). Rows: `replay:CONFIG`.
    #[arg(long, requires = "replay_method")]
    replay_from: Option<PathBuf>,
    /// The method whose candidates `--replay-from` replays.
    #[arg(long, default_value = "")]
    replay_method: String,
    /// `oracle:P/T`: rows files whose masks (method answers and decision candidates of the same
    /// model and n, any device) seed the oracle's GA.
    #[arg(long, value_delimiter = ',')]
    oracle_seeds_from: Vec<PathBuf>,
    /// Output stem: rows go to STEM.rows.jsonl.
    #[arg(long, default_value = "equal-compute")]
    out: PathBuf,
}

/// An EvoP configuration of this study.
#[derive(Clone, Debug)]
enum EvopConfig {
    /// GA 32 x 30 (stop after 8 stalled) on `windows` CCDS windows under `loss`.
    Ga { loss: LossKind, windows: usize },
    /// Multi-fidelity: greedy seed and GA screening on `screen` windows, `finalists` decided on
    /// all `windows`, under `loss`.
    MultiFidelity { loss: LossKind, screen: usize, windows: usize, finalists: usize, shape: GaShape },
    /// The decision stage over the multi-fidelity search `mf`, SLEB on `sleb_windows` random
    /// windows and the greedy seed, on `decision` fresh CCDS windows.
    /// `decision_seqlen`: tokens per decision window (`DxS` in the name; None: --decision-seqlen).
    Portfolio { sleb_windows: usize, race: Option<Race>, decision: usize, decision_seqlen: Option<usize>, mf: Box<EvopConfig> },
    /// The GA on the evaluation windows themselves (a bound; see the module docs).
    Oracle { population: usize, stalled: u64 },
}

/// The GA's population and stall rule (up to 30 generations), and the baseline that seeds it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GaShape {
    population: usize,
    stalled: u64,
    /// `sleb` (greedy) or `ppl` (one-shot perplexity ranking).
    seed: &'static str,
    /// Leading tokens of each screening window the seed reads (None: all).
    seed_tokens: Option<usize>,
    /// The GA's variation operators (`bo`: block order).
    operators: GaOperators,
    /// `nb`: the GA's initial population is mutants of its seeds, not random masks.
    near_seeds: bool,
}

impl Default for GaShape {
    fn default() -> Self {
        Self { population: 32, stalled: 8, seed: "sleb", seed_tokens: None, operators: GaOperators::Uniform, near_seeds: false }
    }
}

impl GaShape {
    /// `pP` and `sT` parts, in any order, over the defaults.
    fn parse(parts: &[&str]) -> Option<Self> {
        let mut shape = Self::default();
        for p in parts {
            if *p == "ppl" || *p == "none" {
                shape.seed = if *p == "ppl" { "ppl" } else { "none" };
                continue;
            }
            if *p == "nb" {
                shape.near_seeds = true;
                continue;
            }
            if *p == "bo" || *p == "op" {
                shape.operators = if *p == "bo" { GaOperators::BlockOrder } else { GaOperators::OnePoint };
                continue;
            }
            match (p.get(..1), p.get(1..).and_then(|v| v.parse::<u64>().ok())) {
                (Some("p"), Some(v)) if v >= 2 => shape.population = v as usize,
                (Some("s"), Some(v)) if v >= 1 => shape.stalled = v,
                (Some("t"), Some(v)) if v >= 2 => shape.seed_tokens = Some(v as usize),
                _ => return None,
            }
        }
        Some(shape)
    }

    /// `base` with this shape's population, stall rule, operators and initialisation.
    fn search(&self, base: SearchSpec) -> SearchSpec {
        SearchSpec {
            population: self.population,
            stalled: Some(self.stalled),
            operators: self.operators,
            init_near_seeds: self.near_seeds,
            ..base
        }
    }

    /// The name suffix: empty for the defaults.
    fn suffix(&self) -> String {
        let d = Self::default();
        let mut s = String::new();
        if (self.population, self.stalled) != (d.population, d.stalled) {
            s += &format!(":p{}:s{}", self.population, self.stalled);
        }
        if self.seed != d.seed {
            s += &format!(":{}", self.seed);
        }
        if let Some(t) = self.seed_tokens {
            s += &format!(":t{t}");
        }
        match self.operators {
            GaOperators::BlockOrder => s += ":bo",
            GaOperators::OnePoint => s += ":op",
            GaOperators::Uniform => {}
        }
        if self.near_seeds {
            s += ":nb";
        }
        s
    }
}

fn parse_loss(s: &str) -> Result<LossKind> {
    match s {
        "kl" => Ok(LossKind::KlToDense),
        "nll" => Ok(LossKind::Nll),
        other => bail!("unknown loss `{other}` (kl, nll)"),
    }
}

fn loss_name(loss: LossKind) -> &'static str {
    match loss {
        LossKind::KlToDense => "kl",
        _ => "nll",
    }
}

impl EvopConfig {
    /// `paper` (= `ga:kl:4`), `ga:LOSS:W`, `mf:S/W/F` (NLL) or `mf:LOSS:S/W/F`.
    fn parse(s: &str) -> Result<Self> {
        if s == "paper" {
            return Ok(Self::Ga { loss: LossKind::KlToDense, windows: 4 });
        }
        if let Some(rest) = s.strip_prefix("portfolio:") {
            let bad = || anyhow::anyhow!("--evop {s}: expected portfolio:R:D:mf:... or portfolio:R:DxS:mf:...");
            let mut it = rest.splitn(3, ':');
            // R, or R/S/K: SLEB on R windows raced (every candidate on S, the best K on the rest).
            let (r, race) = match it.next().map(|v| v.split('/').map(|p| p.parse::<usize>().ok()).collect::<Option<Vec<_>>>()) {
                Some(Some(v)) if v.len() == 1 => (v[0], None),
                Some(Some(v)) if v.len() == 3 && v[1] >= 1 && v[1] < v[0] && v[2] >= 1 => (v[0], Some(Race { screen_windows: v[1], keep: v[2] })),
                _ => return Err(bad()),
            };
            // D, or DxS: D decision windows of S tokens.
            let (d, ds) = match it.next().map(|v| v.split('x').map(|p| p.parse::<usize>().ok()).collect::<Option<Vec<_>>>()) {
                Some(Some(v)) if v.len() == 1 && v[0] >= 1 => (v[0], None),
                Some(Some(v)) if v.len() == 2 && v[0] >= 1 && v[1] >= 2 => (v[0], Some(v[1])),
                _ => return Err(bad()),
            };
            let mf = Self::parse(it.next().ok_or_else(bad)?)?;
            if !matches!(mf, Self::MultiFidelity { .. }) {
                return Err(bad());
            }
            return Ok(Self::Portfolio { sleb_windows: r, race, decision: d, decision_seqlen: ds, mf: Box::new(mf) });
        }
        if let Some(rest) = s.strip_prefix("oracle:") {
            let v: Option<Vec<u64>> = rest.split('/').map(|p| p.parse().ok()).collect();
            return match v.as_deref() {
                Some([p, t]) if *p >= 2 && *t >= 1 => Ok(Self::Oracle { population: *p as usize, stalled: *t }),
                _ => bail!("--evop {s}: expected oracle:P/T (population P >= 2, stop after T >= 1 stalled generations)"),
            };
        }
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || anyhow::anyhow!("--evop {s}: expected paper, ga:LOSS:W, mf:S/W/F or mf:LOSS:S/W/F[:pP][:sT]");
        match parts[..] {
            ["ga", loss, w] => Ok(Self::Ga { loss: parse_loss(loss)?, windows: w.parse().map_err(|_| bad())? }),
            ["mf", rest] => Self::multi_fidelity(LossKind::Nll, rest, &[]).ok_or_else(bad),
            ["mf", loss, rest, ref shape @ ..] if loss.contains('/') => {
                // `mf:S/W/F:pP...` (NLL) has its sizes in the loss's place.
                let mut all = vec![rest];
                all.extend_from_slice(shape);
                Self::multi_fidelity(LossKind::Nll, loss, &all).ok_or_else(bad)
            }
            ["mf", loss, rest, ref shape @ ..] => Self::multi_fidelity(parse_loss(loss)?, rest, shape).ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    fn multi_fidelity(loss: LossKind, sizes: &str, shape: &[&str]) -> Option<Self> {
        let v: Vec<usize> = sizes.split('/').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        let shape = GaShape::parse(shape)?;
        match v[..] {
            [screen, windows, finalists] if screen >= 1 && screen < windows && finalists >= 1 => {
                Some(Self::MultiFidelity { loss, screen, windows, finalists, shape })
            }
            _ => None,
        }
    }

    /// CCDS windows this configuration draws.
    fn windows(&self) -> usize {
        match self {
            Self::Ga { windows, .. } | Self::MultiFidelity { windows, .. } => *windows,
            Self::Portfolio { mf, .. } => mf.windows(),
            Self::Oracle { .. } => 0,
        }
    }

    /// The method name in the rows.
    fn name(&self) -> String {
        match self {
            Self::Ga { loss: LossKind::KlToDense, windows: 4 } => "evop-paper".into(),
            Self::Ga { loss, windows } => format!("evop-ga:{}:{windows}", loss_name(*loss)),
            Self::MultiFidelity { loss: LossKind::Nll, screen, windows, finalists, shape } => {
                format!("evop-mf:{screen}/{windows}/{finalists}{}", shape.suffix())
            }
            Self::MultiFidelity { loss, screen, windows, finalists, shape } => {
                format!("evop-mf:{}:{screen}/{windows}/{finalists}{}", loss_name(*loss), shape.suffix())
            }
            Self::Portfolio { sleb_windows, race, decision, decision_seqlen, mf } => {
                let r = race.map_or(sleb_windows.to_string(), |r| format!("{sleb_windows}/{}/{}", r.screen_windows, r.keep));
                let d = decision_seqlen.map_or(decision.to_string(), |s| format!("{decision}x{s}"));
                format!("portfolio:{r}:{d}:{}", mf.name().trim_start_matches("evop-"))
            }
            Self::Oracle { population, stalled } => format!("oracle:{population}/{stalled}"),
        }
    }
}

#[derive(Serialize)]
struct Row {
    model: String,
    n: usize,
    method: String,
    seed: u64,
    /// Calibration tokens the method read.
    tokens: usize,
    removed: Vec<usize>,
    eval_ppl: f64,
    worst_topic_ppl: Option<f64>,
    /// Search wall time (calibration windows to mask).
    seconds: f64,
    /// Time to build the CCDS set (MiniLM embedding and k-means), not included in `seconds`.
    calibration_seconds: f64,
    block_forwards: u64,
    /// EvoP: (elapsed seconds, eval perplexity) of the best-so-far mask at each generation.
    anytime: Vec<(f64, f64)>,
    device: String,
    dtype: String,
    /// Portfolio: the decision (every candidate's score on the decision windows) and, untimed,
    /// every candidate's losses on the study's decision and validation windows and eval perplexity.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<serde_json::Value>,
}

/// Records the best-so-far mask of every generation with its elapsed time.
#[derive(Clone, Default)]
struct Anytime(Arc<Mutex<Vec<(f64, Vec<usize>)>>>);

impl Observer for Anytime {
    fn observe(&mut self, report: &GenerationReport) -> std::result::Result<(), evop::search::BoxError> {
        let removed = report.best_mask.removed().collect();
        self.0.lock().expect("not poisoned").push((report.elapsed_s, removed));
        Ok(())
    }
    fn finish(&mut self, _: StopReason, _: &GenerationReport) -> std::result::Result<(), evop::search::BoxError> {
        Ok(())
    }
}

fn resolve_model(name: &str) -> Result<PathBuf> {
    let path = Path::new(name);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if evop::assets::is_model_name(name) {
        return Ok(evop::assets::AssetStore::from_env().model(name)?);
    }
    bail!("--model {name}: no such file or directory, and not a known model ({})", evop::assets::MODEL_NAMES.join(", "))
}

/// The CCDS set of `windows` x `seqlen` tokens for `seed`, from the cache folder when there.
fn ccds_set(args: &Args, model: &LoadedModel, pool: &evop::data::Corpus, windows: usize, seed: u64) -> Result<(CalibrationSet, f64)> {
    let spec = CalibrationSpec {
        windows,
        seqlen: args.seqlen,
        sampler: SamplerKind::Ccds { embedder: EmbedderKind::MiniLm, k: None, pool: args.pool.max(windows) },
    };
    let stem = Path::new(&args.model).file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let name = format!("{stem}-ccds-pool{}-{windows}x{}-seed{seed}.json", args.pool.max(windows), args.seqlen);
    let path = args.calib_cache.as_ref().map(|d| d.join(&name));
    if let Some(p) = path.as_ref().filter(|p| p.is_file()) {
        let set = CalibrationSet::load(p)?;
        let seconds = std::fs::read_to_string(p.with_extension("seconds")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(f64::NAN);
        return Ok((set, seconds));
    }
    let t = Instant::now();
    let set = build_calibration(model, pool, &spec, seed)?;
    let seconds = t.elapsed().as_secs_f64();
    if let Some(p) = path {
        std::fs::create_dir_all(p.parent().expect("has a folder"))?;
        set.save(&p)?;
        std::fs::write(p.with_extension("seconds"), format!("{seconds}"))?;
    }
    Ok((set, seconds))
}

/// SLEB's greedy answer on `windows` and its block forwards.
fn sleb(lm: &Arc<dyn BlockLm>, windows: &[Vec<u32>], n: usize) -> Result<(Vec<usize>, u64)> {
    sleb_raced(lm, windows, n, None)
}

/// SLEB, raced when `race` is set (`Sleb::race`).
fn sleb_raced(lm: &Arc<dyn BlockLm>, windows: &[Vec<u32>], n: usize, race: Option<Race>) -> Result<(Vec<usize>, u64)> {
    let r = Sleb { race, ..Sleb::default() }.prune(lm, windows, n)?;
    Ok((r.removed(), r.counts.block_forwards))
}

fn main() -> Result<()> {
    evop::model::retain_freed_host_memory();
    let args = Args::parse();
    let configs: Vec<EvopConfig> = args.evop.iter().filter(|s| !s.is_empty()).map(|s| EvopConfig::parse(s)).collect::<Result<_>>()?;
    let device = evop::model::parse_device(&args.device)?;
    let dtype = evop::model::parse_dtype(&args.dtype)?;
    let store = evop::assets::AssetStore::from_env();
    let path = resolve_model(&args.model)?;
    let model = load(&path, &LoadOptions { device, dtype }).with_context(|| format!("loading {}", path.display()))?;
    let lm = model.lm.clone();
    let l = lm.num_blocks();
    for &n in &args.ns {
        if n == 0 || n + 2 > l {
            bail!("--ns {n}: must be between 1 and {} for a model of {l} blocks", l - 2);
        }
    }
    let corpus = read_wikipedia_leads(&store.wikipedia_leads()?)?;
    let split = SplitRule::default().split(&corpus)?;
    if args.prepare_only {
        for &seed in &args.seeds {
            for c in configs.iter().filter(|c| c.windows() > 0) {
                ccds_set(&args, &model, &split.calibration, c.windows(), seed)?;
            }
        }
        return Ok(());
    }
    if args.dense_full_seqlen > 0 {
        let full = EvalSet::from_split(&model, &split, args.dense_full_seqlen, None, Some(0))?;
        let t = Instant::now();
        let d = evaluate(lm.as_ref(), &full, &BlockMask::dense(l), args.batch_size)?;
        println!(
            "{}: dense perplexity {:.3} on the whole evaluation split ({} tokens in windows of {}; {:.1}s)",
            args.model, d.overall.perplexity, full.tokens(), args.dense_full_seqlen, t.elapsed().as_secs_f64()
        );
    }
    let dseqlen = args.decision_seqlen.unwrap_or(args.seqlen);
    let max_eval = (args.eval_windows > 0).then_some(args.eval_windows);
    let eval = EvalSet::from_split(&model, &split, args.eval_seqlen, max_eval, Some(args.topic_windows))?;
    let t = Instant::now();
    let dense = if args.skip_dense { None } else { Some(evaluate(lm.as_ref(), &eval, &BlockMask::dense(l), args.batch_size)?) };
    let dense_ppl = dense.as_ref().map_or(f64::NAN, |d| d.overall.perplexity);
    eprintln!("{}: {l} blocks, dense ppl {:.3} on {} tokens ({:.1}s)", args.model, dense_ppl, eval.tokens(), t.elapsed().as_secs_f64());
    let evopts = EvaluatorOptions { batch_size: args.batch_size, ..Default::default() };
    let rows_path = args.out.with_extension("rows.jsonl");
    if let Some(dir) = rows_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Masks already scored are not evaluated again (the evaluator is deterministic).
    let scored = std::cell::RefCell::new(std::collections::HashMap::<Vec<usize>, (f64, Option<f64>)>::new());
    for file in &args.scored_from {
        for v in read_rows(file)? {
            let same = v["model"] == args.model.as_str() && v["dtype"] == "f32" && v["n"].as_u64().is_some();
            let (Some(ppl), Some(removed)) = (v["eval_ppl"].as_f64(), mask_of(&v["removed"])) else { continue };
            if same && ppl.is_finite() {
                scored.borrow_mut().insert(removed, (ppl, v["worst_topic_ppl"].as_f64()));
            }
        }
    }
    if !args.scored_from.is_empty() {
        eprintln!("{} masks already scored in {:?}", scored.borrow().len(), args.scored_from);
    }
    let score = |removed: &[usize]| -> Result<(f64, Option<f64>)> {
        if let Some(s) = scored.borrow().get(removed) {
            return Ok(*s);
        }
        let e = evaluate(lm.as_ref(), &eval, &BlockMask::from_removed(l, removed)?, args.batch_size)?;
        let s = (e.overall.perplexity, e.worst_topic.map(|w| w.1));
        scored.borrow_mut().insert(removed.to_vec(), s);
        Ok(s)
    };
    let emit = |row: Row| -> Result<()> {
        eprintln!(
            "seed {} n {} {:<14} {:>6} tok {:>7.1}s ppl {:>8.3} worst {:>8.3} {:?}",
            row.seed, row.n, row.method, row.tokens, row.seconds, row.eval_ppl, row.worst_topic_ppl.unwrap_or(f64::NAN), row.removed
        );
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&rows_path)?;
        writeln!(f, "{}", serde_json::to_string(&row)?)?;
        Ok(())
    };
    let base = |n: usize, seed: u64, method: String, tokens: usize| Row {
        model: args.model.clone(),
        n,
        method,
        seed,
        tokens,
        removed: Vec::new(),
        eval_ppl: f64::NAN,
        worst_topic_ppl: None,
        seconds: 0.0,
        calibration_seconds: 0.0,
        block_forwards: 0,
        anytime: Vec::new(),
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        decision: None,
    };
    for &seed in &args.seeds {
        // SLEB's random windows: one draw of the largest budget; smaller budgets take its first windows.
        let portfolio = configs.iter().any(|c| matches!(c, EvopConfig::Portfolio { .. }));
        let max_windows = args.sleb_tokens.iter().flatten().map(|t| t.div_ceil(args.seqlen)).max().unwrap_or(0).max(if portfolio { 64 } else { 0 });
        let random = if max_windows > 0 {
            let spec = CalibrationSpec { windows: max_windows, seqlen: args.seqlen, sampler: SamplerKind::Random };
            build_calibration(&model, &split.calibration, &spec, seed)?.token_windows()
        } else {
            Vec::new()
        };
        // The oracle draws no calibration set.
        let ccds: Vec<Option<(CalibrationSet, f64)>> = configs
            .iter()
            .map(|c| (c.windows() > 0).then(|| ccds_set(&args, &model, &split.calibration, c.windows(), seed)).transpose())
            .collect::<Result<_>>()?;
        // Portfolio: the decision windows (CCDS, a distinct seed, without the windows the searches
        // read) and the validation windows, drawn before any timing.
        let mut decision_sets: Vec<Option<(Vec<Vec<u32>>, f64)>> = Vec::new();
        for (c, set) in configs.iter().zip(&ccds) {
            let (EvopConfig::Portfolio { sleb_windows, decision, decision_seqlen, .. }, Some((calib, _))) = (c, set) else {
                decision_sets.push(None);
                continue;
            };
            let mut exclude = calib.token_windows();
            exclude.extend(random[..*sleb_windows].iter().cloned());
            let count = (*decision).max(args.decision_study_windows);
            let dspec = DecisionSpec { windows: count, seqlen: decision_seqlen.unwrap_or(dseqlen), pool: 256.max(count), loss: LossKind::Nll, ccds: true };
            let t = Instant::now();
            let set = decision_windows(&model, &split.calibration, &dspec, seed, &exclude)?;
            decision_sets.push(Some((set.token_windows(), t.elapsed().as_secs_f64())));
        }
        let validation = if portfolio && args.validation_windows > 0 {
            let spec = CalibrationSpec { windows: args.validation_windows, seqlen: 512, sampler: SamplerKind::Random };
            build_calibration(&model, &split.calibration, &spec, seed ^ 0x7A11_DA7E)?.token_windows()
        } else {
            Vec::new()
        };
        for &n in &args.ns {
            let mut sleb_answers: Vec<Vec<usize>> = Vec::new();
            for &tokens in args.sleb_tokens.iter().flatten() {
                let w = &random[..tokens.div_ceil(args.seqlen)];
                let t = Instant::now();
                let (removed, block_forwards) = sleb(&lm, w, n)?;
                let seconds = t.elapsed().as_secs_f64();
                let (eval_ppl, worst) = score(&removed)?;
                sleb_answers.push(removed.clone());
                emit(Row { removed, eval_ppl, worst_topic_ppl: worst, seconds, block_forwards, ..base(n, seed, "sleb".into(), w.len() * args.seqlen) })?;
            }
            for (ci, (config, set)) in configs.iter().zip(&ccds).enumerate() {
                if let EvopConfig::Oracle { population, stalled } = config {
                    let mut seeds = sleb_answers.clone();
                    for m in known_masks(&args.oracle_seeds_from, &args.model, n)? {
                        if !seeds.contains(&m) {
                            seeds.push(m);
                        }
                    }
                    let spec = SearchSpec {
                        population: *population,
                        generations: 30,
                        stalled: Some(*stalled),
                        seed_masks: seeds.clone(),
                        init_near_seeds: !seeds.is_empty(),
                        ..SearchSpec::default()
                    };
                    let job = SearchJob {
                        remove: n,
                        objective: Objective::MeanNll,
                        search: spec,
                        evaluator: EvaluatorOptions { loss: LossKind::Nll, ..evopts.clone() },
                        seed,
                        checkpoint: None,
                        interrupt: None,
                        observers: Vec::new(),
                    };
                    let t = Instant::now();
                    let report = job.run(lm.clone(), &eval.windows, None)?;
                    let seconds = t.elapsed().as_secs_f64();
                    let (eval_ppl, worst) = score(&report.removed)?;
                    eprintln!("  oracle from {} seed masks: {} generations", seeds.len(), report.generations);
                    emit(Row {
                        removed: report.removed.clone(),
                        eval_ppl,
                        worst_topic_ppl: worst,
                        seconds,
                        block_forwards: report.counts.block_forwards,
                        ..base(n, seed, config.name(), eval.tokens())
                    })?;
                    continue;
                }
                let (calib, calib_seconds) = set.as_ref().expect("drawn for every configuration but the oracle");
                if let EvopConfig::Portfolio { sleb_windows, race, decision, decision_seqlen, mf } = config {
                    let dseqlen = decision_seqlen.unwrap_or(dseqlen);
                    let EvopConfig::MultiFidelity { loss, screen, finalists, shape, .. } = mf.as_ref() else { unreachable!("checked when parsed") };
                    let (dset, dseconds) = decision_sets[ci].as_ref().expect("drawn for every portfolio");
                    let dspec = DecisionSpec { windows: *decision, seqlen: dseqlen, pool: 256, loss: LossKind::Nll, ccds: true };
                    if let Some(file) = &args.replay_from {
                        let candidates = replay_candidates(file, &args.replay_method, &args.model, n, seed)?;
                        let chosen = decide(&lm, &candidates, &dset[..*decision], &dspec, args.batch_size)?;
                        let (eval_ppl, worst) = score(&chosen.removed)?;
                        let study: Vec<serde_json::Value> = chosen
                            .scores
                            .iter()
                            .map(|c| {
                                let known = scored.borrow().get(&c.removed).map(|k| k.0);
                                serde_json::json!({ "sources": c.sources, "removed": c.removed, "decision_score": c.score, "decision_losses": c.window_losses, "eval_ppl": known })
                            })
                            .collect();
                        emit(Row {
                            removed: chosen.removed.clone(),
                            eval_ppl,
                            worst_topic_ppl: worst,
                            seconds: chosen.seconds,
                            calibration_seconds: *dseconds,
                            decision: Some(serde_json::json!({
                                "chosen": chosen.chosen, "tokens": chosen.tokens, "seqlen": dseqlen, "seconds": chosen.seconds, "loss": "nll",
                                "candidates": study, "replayed_from": file, "replayed_method": args.replay_method,
                            })),
                            ..base(n, seed, format!("replay:{}", config.name()), *decision * dseqlen)
                        })?;
                        continue;
                    }
                    let windows = calib.token_windows();
                    let ga = SearchSpec { population: 32, generations: 30, stalled: Some(8), ..SearchSpec::default() };
                    let t = Instant::now();
                    let seed_data: Vec<Vec<u32>> =
                        windows[..*screen].iter().map(|w| w[..shape.seed_tokens.unwrap_or(w.len()).min(w.len())].to_vec()).collect();
                    // `none`: no greedy seed (SLEB's answer seeds the GA).
                    let seeder = if shape.seed == "none" { None } else { Some(ga.seed_pruner(shape.seed, l)?.prune(&lm, &seed_data, n)?) };
                    let mut forwards = seeder.as_ref().map_or(0, |s| s.counts.block_forwards);
                    let mut seeds: Vec<Vec<usize>> = seeder.iter().map(|s| s.removed()).collect();
                    let t_sleb = Instant::now();
                    let sleb_answer = if *sleb_windows > 0 {
                        let (r, f) = sleb_raced(&lm, &random[..*sleb_windows], n, *race)?;
                        forwards += f;
                        if !seeds.contains(&r) {
                            seeds.push(r.clone());
                        }
                        Some(r)
                    } else {
                        None
                    };
                    let sleb_seconds = t_sleb.elapsed().as_secs_f64();
                    let screening = Screening { windows: *screen, tokens: None, position_stride: 1, finalists: *finalists };
                    let spec = SearchSpec { seed_masks: seeds, screening: Some(screening), ..shape.search(ga) };
                    let anytime = Anytime::default();
                    let report = Pipeline::new(&model, split.calibration.clone())
                        .remove(n)
                        .objective(Objective::MeanNll)
                        .search(spec)
                        .seed(seed)
                        .evaluator(EvaluatorOptions { loss: *loss, ..evopts.clone() })
                        .observer(anytime.clone())
                        .run_on(calib)?;
                    let mut candidates: Vec<Candidate> =
                        report.finalists.iter().enumerate().map(|(i, (r, _))| Candidate::new(format!("evop finalist {}", i + 1), r.clone())).collect();
                    if let Some(r) = &sleb_answer {
                        candidates.push(Candidate::new(format!("sleb ({} random tokens)", sleb_windows * args.seqlen), r.clone()));
                    }
                    if let Some(s) = &seeder {
                        candidates.push(Candidate::new(format!("{} seed", shape.seed), s.removed()));
                    }
                    let chosen = decide(&lm, &candidates, &dset[..*decision], &dspec, args.batch_size)?;
                    let seconds = t.elapsed().as_secs_f64();
                    let (eval_ppl, worst) = score(&chosen.removed)?;
                    // Untimed study: the rest of the decision windows, the validation windows, and
                    // the eval perplexity of candidates already scored.
                    let rest = (dset.len() > *decision).then(|| decide(&lm, &candidates, &dset[*decision..], &dspec, args.batch_size)).transpose()?;
                    let val = (!validation.is_empty()).then(|| decide(&lm, &candidates, &validation, &dspec, args.batch_size)).transpose()?;
                    let study: Vec<serde_json::Value> = chosen
                        .scores
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let mut losses = c.window_losses.clone();
                            if let Some(r) = &rest {
                                losses.extend_from_slice(&r.scores[i].window_losses);
                            }
                            let known = scored.borrow().get(&c.removed).copied();
                            serde_json::json!({
                                "sources": c.sources, "removed": c.removed, "decision_score": c.score,
                                "decision_losses": losses, "validation_nll": val.as_ref().map(|v| v.scores[i].score),
                                "eval_ppl": known.map(|k| k.0), "worst_topic_ppl": known.and_then(|k| k.1),
                            })
                        })
                        .collect();
                    let mut curve = Vec::new();
                    for (s, removed) in anytime.0.lock().expect("not poisoned").iter() {
                        let known = scored.borrow().get(removed).map(|k| k.0).unwrap_or(f64::NAN);
                        curve.push((*s, known));
                    }
                    let name = config.name();
                    eprintln!(
                        "  decision on {} tokens ({:.1}s, windows drawn in {:.1}s): {}",
                        chosen.tokens,
                        chosen.seconds,
                        dseconds,
                        chosen.scores.iter().map(|c| format!("{:?} {:.4} [{}]", c.removed, c.score, c.sources.join(", "))).collect::<Vec<_>>().join("; ")
                    );
                    emit(Row {
                        removed: chosen.removed.clone(),
                        eval_ppl,
                        worst_topic_ppl: worst,
                        seconds,
                        calibration_seconds: *calib_seconds + dseconds,
                        block_forwards: report.counts.block_forwards + forwards,
                        anytime: curve,
                        decision: Some(serde_json::json!({
                            "chosen": chosen.chosen, "tokens": chosen.tokens, "seqlen": dseqlen, "seconds": chosen.seconds, "loss": "nll",
                            "sleb_seconds": sleb_seconds, "ga_seconds": report.search_seconds, "generations": report.generations,
                            "candidates": study, "validation_windows": validation.len(), "validation_seqlen": 512,
                        })),
                        ..base(n, seed, name.clone(), calib.len() * args.seqlen + *decision * dseqlen + sleb_windows * args.seqlen)
                    })?;
                    // SLEB given the portfolio's seconds, on the same random draw.
                    if *sleb_windows > 0 && !args.skip_sleb_at_equal_time {
                        // SLEB's seconds per window: from its run inside the portfolio, or, when
                        // that run was raced, from racing's share of SLEB's candidate-windows; a
                        // guess off by more than 15% of the portfolio's seconds is redone (at most
                        // twice) at the window count its own pace gives.
                        let per_window = sleb_seconds / *sleb_windows as f64 / race.map_or(1.0, |r| r.sleb_share(l, n, *sleb_windows));
                        let mut w = ((seconds / per_window).round() as usize).clamp(1, random.len());
                        let (mut removed, mut block_forwards, mut s);
                        let mut tries = 0;
                        loop {
                            tries += 1;
                            let t = Instant::now();
                            (removed, block_forwards) = sleb(&lm, &random[..w], n)?;
                            s = t.elapsed().as_secs_f64();
                            let again = ((seconds / (s / w as f64)).round() as usize).clamp(1, random.len());
                            if race.is_none() || (s - seconds).abs() <= 0.15 * seconds || again == w || tries == 3 {
                                break;
                            }
                            eprintln!("  sleb@time: {w} windows took {s:.1}s against the portfolio's {seconds:.1}s: again on {again}");
                            w = again;
                        }
                        let (eval_ppl, worst) = score(&removed)?;
                        emit(Row { removed, eval_ppl, worst_topic_ppl: worst, seconds: s, block_forwards, ..base(n, seed, format!("sleb@{name}"), w * args.seqlen) })?;
                    }
                    continue;
                }
                let anytime = Anytime::default();
                let windows = calib.token_windows();
                let t = Instant::now();
                let ga = SearchSpec { population: 32, generations: 30, stalled: Some(8), ..SearchSpec::default() };
                let (spec, loss, extra_forwards) = match config {
                    EvopConfig::Ga { loss, .. } => (ga, *loss, 0),
                    EvopConfig::Portfolio { .. } | EvopConfig::Oracle { .. } => unreachable!("run above"),
                    EvopConfig::MultiFidelity { loss, screen, finalists, shape, .. } => {
                        let seed_data: Vec<Vec<u32>> =
                            windows[..*screen].iter().map(|w| w[..shape.seed_tokens.unwrap_or(w.len()).min(w.len())].to_vec()).collect();
                        let seeder = ga.seed_pruner(shape.seed, l)?.prune(&lm, &seed_data, n)?;
                        let (seed_mask, seed_forwards) = (seeder.removed(), seeder.counts.block_forwards);
                        let screening = Screening { windows: *screen, tokens: None, position_stride: 1, finalists: *finalists };
                        (SearchSpec { seed_masks: vec![seed_mask], screening: Some(screening), ..shape.search(ga) }, *loss, seed_forwards)
                    }
                };
                let report = Pipeline::new(&model, split.calibration.clone())
                    .remove(n)
                    .objective(Objective::MeanNll)
                    .search(spec)
                    .seed(seed)
                    .evaluator(EvaluatorOptions { loss, ..evopts.clone() })
                    .observer(anytime.clone())
                    .run_on(calib)?;
                let name = config.name();
                let seconds = t.elapsed().as_secs_f64();
                let (eval_ppl, worst) = score(&report.removed)?;
                let mut curve = Vec::new();
                let mut last: Option<Vec<usize>> = None;
                let mut last_ppl = f64::NAN;
                for (s, removed) in anytime.0.lock().expect("not poisoned").iter() {
                    if last.as_ref() != Some(removed) {
                        last_ppl = score(removed)?.0;
                        last = Some(removed.clone());
                    }
                    curve.push((*s, last_ppl));
                }
                emit(Row {
                    removed: report.removed.clone(),
                    eval_ppl,
                    worst_topic_ppl: worst,
                    seconds,
                    calibration_seconds: *calib_seconds,
                    block_forwards: report.counts.block_forwards + extra_forwards,
                    anytime: curve,
                    ..base(n, seed, name, calib.len() * args.seqlen)
                })?;
            }
        }
    }
    Ok(())
}

/// The decision candidates of the row of `method`, `model`, `n` and `seed` in `file`, in their
/// order (each mask once, its sources joined).
fn replay_candidates(file: &Path, method: &str, model: &str, n: usize, seed: u64) -> Result<Vec<Candidate>> {
    for v in read_rows(file)? {
        if v["method"] != method || v["model"] != model || v["n"].as_u64() != Some(n as u64) || v["seed"].as_u64() != Some(seed) {
            continue;
        }
        let Some(list) = v["decision"]["candidates"].as_array() else {
            bail!("{}: the {method} row of n {n}, seed {seed} has no decision.candidates", file.display());
        };
        return list
            .iter()
            .map(|c| {
                let sources: Vec<&str> = c["sources"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
                let removed = mask_of(&c["removed"]).with_context(|| format!("{}: a candidate of the {method} row of n {n}, seed {seed} without `removed`", file.display()))?;
                Ok(Candidate::new(sources.join(", "), removed))
            })
            .collect();
    }
    bail!("{}: no row of method {method}, model {model}, n {n}, seed {seed}", file.display())
}

/// Every mask that rows of `files` hold for `model` and `n` (method answers and decision
/// candidates, any device and dtype), in order of first appearance.
fn known_masks(files: &[PathBuf], model: &str, n: usize) -> Result<Vec<Vec<usize>>> {
    let mut masks: Vec<Vec<usize>> = Vec::new();
    let mut add = |v: &serde_json::Value| {
        if let Some(m) = mask_of(v) {
            if m.len() == n && !masks.contains(&m) {
                masks.push(m);
            }
        }
    };
    for file in files {
        for v in read_rows(file)? {
            if v["model"] != model || v["n"].as_u64() != Some(n as u64) {
                continue;
            }
            add(&v["removed"]);
            for c in v["decision"]["candidates"].as_array().into_iter().flatten() {
                add(&c["removed"]);
            }
        }
    }
    Ok(masks)
}

/// The rows of a rows file (one JSON object per non-empty line).
fn read_rows(file: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{} line {}", file.display(), i + 1)))
        .collect()
}

/// A `removed` list of a row (block indices), if it is one.
fn mask_of(v: &serde_json::Value) -> Option<Vec<usize>> {
    v.as_array().map(|a| a.iter().filter_map(|b| b.as_u64().map(|b| b as usize)).collect())
}

/// A SLEB budget in tokens, or `none`.
fn parse_budget(s: &str) -> std::result::Result<Option<usize>, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| format!("`{s}` is neither a token count nor `none` ({e})"))
}
