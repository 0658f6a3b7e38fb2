//! What `prune` and `compare` share: the corpus and its split, the calibration set, running a
//! method by name on it, and evaluating masks on the evaluation split.
use crate::common::ModelArgs;
use crate::progress::{spinner, SearchProgress};
use anyhow::{bail, Context, Result};
use evop::data::{read_wikipedia_leads, Corpus, CorpusSplit, SplitRule};
use evop::model::{BlockMask, ForwardCounts, LoadedModel};
use evop::{CalibrationSpec, EmbedderKind, EvalReport, EvalSet, Objective, Pipeline, SamplerKind, SearchSpec, StrategyKind};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Calibration, search and evaluation settings shared by `prune` and `compare`.
#[derive(clap::Args, Clone, Debug)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to calibrate and evaluate on: a .txt file (one document per paragraph), a directory of .txt files, a .jsonl file
    /// (field `text`), or the Wikipedia leads JSON; default: the Wikipedia leads (fetched if missing).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Calibration sampler: `ccds` (cluster-based, EvoP) or `random` (SLEB's protocol).
    #[arg(long, default_value = "ccds")]
    pub calib: String,
    /// CCDS embedder: `minilm` or `hidden:B` (the model's own mean-pooled state at block boundary B).
    #[arg(long, default_value = "minilm")]
    pub embedder: String,
    /// CCDS clusters (default: the automatic rule of evop-data).
    #[arg(long)]
    pub clusters: Option<usize>,
    /// CCDS candidate windows embedded and clustered.
    #[arg(long, default_value_t = 512)]
    pub pool: usize,
    /// Calibration windows (default 16 x 128 tokens; with the default screening, EvoP's candidates
    /// are ranked on the first 4 and its finalists decided on all 16: the configuration that beat
    /// or tied SLEB at equal wall time in docs/results.md, "EvoP at equal compute").
    #[arg(long, default_value_t = 16)]
    pub calib_windows: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    pub seqlen: usize,
    /// EvoP's objective: mean, balanced, worst-cluster, cvar:Q.
    #[arg(long, default_value = "mean")]
    pub objective: Objective,
    /// EvoP's per-window loss: `nll` (next-token NLL) or `kl` (KL divergence to the dense model's
    /// next-token distributions, as EvoPress; keeps windows x seqlen x vocab floats in memory).
    #[arg(long, default_value = "kl")]
    pub loss: String,
    /// EvoP's strategy: ga (EPPS) or one-plus-lambda (EvoPress).
    #[arg(long, default_value = "ga")]
    pub strategy: String,
    /// Search effort: `full` (seeded by SLEB's greedy answer, GA population 32, stop after 8
    /// stalled generations, 8 finalists: the configuration with the best worst case at equal GPU
    /// time in docs/results.md), `quick` (seeded by the one-shot perplexity ranking, population 16,
    /// 4 stalled, 4 finalists: sized so the default run fits in 5 minutes on 2 CPU cores,
    /// docs/results.md "The default CPU run"), or `auto`: `full` on a GPU, `quick` on the CPU.
    /// --seed-with, --population, --stalled and --finalists override it.
    #[arg(long, default_value = "auto")]
    pub preset: Preset,
    /// GA population (or lambda for one-plus-lambda); default from --preset.
    #[arg(long)]
    pub population: Option<usize>,
    /// Maximum generations.
    #[arg(long, default_value_t = 30)]
    pub generations: u64,
    /// Stop after this many generations without improvement (0: never); default from --preset.
    #[arg(long)]
    pub stalled: Option<u64>,
    /// One budget for the run: seconds with a unit (`300s`, `5m`: EvoP's searches and decision
    /// share them, as --time-budget) or a bare number of fitness evaluations (`2000`).
    #[arg(long, value_name = "N|Ns|Nm", value_parser = parse_budget)]
    pub budget: Option<Budget>,
    /// EvoP: one time budget in seconds for the searches and the decision together: the greedy
    /// seed and SLEB inside the run go first (timed), the decision is given its estimated scoring
    /// time (from their seconds per candidate and window), the GA the rest (it stops after the
    /// generation that reaches it, or earlier by the preset's stall rule). Where the limit binds,
    /// the answer depends on the machine's speed. Default: no limit.
    #[arg(long, value_name = "SECONDS")]
    pub time_budget: Option<f64>,
    /// EvoP: windows of the decision stage (CCDS from the calibration pool under a distinct seed,
    /// without any window a search read) on which every searcher's answers (the GA's finalists,
    /// SLEB on its own protocol, the greedy seed, --also) are scored; the lowest wins. 0: off (the
    /// GA's own choice among its finalists on the calibration windows, as before). Default from
    /// --preset: 16 for `quick` and for `full`.
    #[arg(long, value_name = "N")]
    pub decision_windows: Option<usize>,
    /// EvoP: tokens per decision window (default from --preset: --seqlen, the calibration windows'
    /// length, for `quick`; 512 for `full`; the windows drawn leave out every window a search read
    /// and every window overlapping one).
    #[arg(long, value_name = "N")]
    pub decision_seqlen: Option<usize>,
    /// EvoP: the decision's per-window loss: `nll` (mean next-token NLL) or `kl` (KL to the dense model).
    #[arg(long, default_value = "nll")]
    pub decision_loss: String,
    /// EvoP with the decision stage: random calibration windows (--seqlen tokens each) on which SLEB
    /// runs on its own protocol inside EvoP's run; its answer seeds the GA and is a candidate (0: none).
    /// Default 16, raced 3/4 (--portfolio-sleb-race): about the seconds of plain SLEB on 5 windows.
    #[arg(long, default_value_t = 16)]
    pub portfolio_sleb_windows: usize,
    /// EvoP with the decision stage: race SLEB inside EvoP's run: `S/K` scores every candidate of a
    /// greedy step on the first S of its random windows and only the K best on the rest
    /// (`evop_baselines::Race`; docs/results.md, "Racing SLEB inside the run"), or `none` (SLEB as
    /// published, every candidate on every window).
    #[arg(long, value_name = "S/K|none", default_value = "3/4")]
    pub portfolio_sleb_race: String,
    /// EvoP with the decision stage: other pruners (baseline names, comma-separated) run on the
    /// calibration windows whose answers join the decision.
    #[arg(long, value_delimiter = ',')]
    pub also: Vec<String>,
    /// Screen EvoP's candidates on the first N tokens of every calibration window (approximate:
    /// the GA ranks on the shortened windows; the --finalists best masks of its final population are
    /// then compared on the whole windows). Off by default; see docs/performance.md, "Screening".
    #[arg(long, value_name = "N")]
    pub screen_tokens: Option<usize>,
    /// Screen EvoP's candidates on the loss at every N-th predicted position only (approximate: the
    /// blocks still run every position; the head and loss, a third of a candidate's time on the
    /// CPU, run on 1/N of them); the --finalists are compared on every position.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub screen_stride: usize,
    /// Multi-fidelity EvoP: rank the GA's candidates on the first S calibration windows and decide
    /// among the --finalists best on all of them; the greedy seed (--seed-with) is computed on
    /// those S windows too. 0, or S at least --calib-windows, evaluates every candidate on every
    /// window.
    #[arg(long, value_name = "S", default_value_t = 4)]
    pub screen_windows: usize,
    /// Distinct masks of the GA's final population re-evaluated on every calibration window when
    /// screening; default from --preset.
    #[arg(long)]
    pub finalists: Option<usize>,
    /// The GA's first population besides its seeds: `near-seeds` (mutants of the seeds) or
    /// `random` (uniformly random masks); default from --preset (`near-seeds` with the decision
    /// stage, else `random`).
    #[arg(long, value_name = "INIT")]
    pub ga_init: Option<GaInit>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cheap baselines whose answers join EvoP's initial population (comma-separated; `none`),
    /// computed on the screening windows when screening; default from --preset (`sleb` for
    /// `full`, `ppl`, the one-shot ranking, for `quick`).
    #[arg(long, value_delimiter = ',')]
    pub seed_with: Option<Vec<String>>,
    /// Compute the --seed-with answers on the first N tokens of each screening window (cheaper,
    /// approximate); default: whole windows.
    #[arg(long, value_name = "N")]
    pub seed_tokens: Option<usize>,
    /// Evaluation windows of the evaluation split (the first ones; 0 = all).
    #[arg(long, default_value_t = 24)]
    pub eval_windows: usize,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 256)]
    pub eval_seqlen: usize,
    /// Also report perplexity per topic (Wikipedia leads only), this many windows per topic (0 = off).
    #[arg(long, default_value_t = 0)]
    pub topic_windows: usize,
    /// Windows per forward batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// The GA's first population besides its seeds (`--ga-init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GaInit {
    /// Mutants of the seeds (`evop::SearchSpec::init_near_seeds`).
    NearSeeds,
    /// Uniformly random masks.
    Random,
}

/// How much search EvoP does by default (`--preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// `full` on a GPU (CUDA, Metal), `quick` on the CPU.
    Auto,
    /// With the decision stage (the default on a GPU): SLEB inside the run seeds the GA, whose
    /// first population is mutants of its seeds (--ga-init), population 64, stop after 8 stalled
    /// generations, 8 finalists, 16 decision windows of 512 tokens; without it (--decision-windows 0): SLEB
    /// seed, random first population, population 32, 8 stalled generations, 8 finalists.
    Full,
    /// With the decision stage (the default): SLEB inside the run (--portfolio-sleb-windows) seeds
    /// the GA, whose first population is mutants of its seeds (--ga-init), population 16, stop
    /// after 3 stalled generations, 4 finalists; without it (--decision-windows 0):
    /// one-shot perplexity seed, population 16, stop after 4 stalled generations, 4 finalists.
    Quick,
}

/// The GA's shape a preset stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresetShape {
    /// The baseline whose answer seeds the GA.
    pub seed_with: &'static str,
    pub population: usize,
    pub stalled: u64,
    pub finalists: usize,
    /// The GA starts from mutants of its seeds (`evop::SearchSpec::init_near_seeds`), not random masks.
    pub near_seeds: bool,
    /// Windows of the decision stage (0: off).
    pub decision_windows: usize,
    /// Tokens per decision window (None: --seqlen, the calibration windows' length).
    pub decision_seqlen: Option<usize>,
}

impl Preset {
    /// The preset in force on `device` (`cpu`, `cuda[:N]`, `metal[:N]`).
    pub fn resolve(self, device: &str) -> Preset {
        match self {
            Preset::Auto if device == "cpu" => Preset::Quick,
            Preset::Auto => Preset::Full,
            p => p,
        }
    }

    pub fn shape(self, device: &str) -> PresetShape {
        match self.resolve(device) {
            Preset::Quick => PresetShape { seed_with: "ppl", population: 16, stalled: 4, finalists: 4, near_seeds: false, decision_windows: 16, decision_seqlen: None },
            // 16 decision windows of 512 tokens (docs/results.md, "Deciding on 512-token windows").
            _ => PresetShape { seed_with: "sleb", population: 32, stalled: 8, finalists: 8, near_seeds: false, decision_windows: 16, decision_seqlen: Some(512) },
        }
    }

    pub fn name(self, device: &str) -> &'static str {
        match self.resolve(device) {
            Preset::Quick => "quick",
            _ => "full",
        }
    }
}

/// The model, the split and the evaluation windows.
pub struct Setup {
    pub model: LoadedModel,
    pub split: CorpusSplit,
    pub eval: EvalSet,
}

impl ExperimentArgs {
    /// The GA population: --population, else the preset's.
    pub fn population(&self) -> usize {
        self.population.unwrap_or(self.preset_shape().population)
    }

    /// Generations without improvement before the GA stops (0: never): --stalled, else the preset's.
    pub fn stalled(&self) -> u64 {
        self.stalled.unwrap_or(self.preset_shape().stalled)
    }

    /// Finalists decided at full fidelity: --finalists, else the preset's.
    pub fn finalists(&self) -> usize {
        self.finalists.unwrap_or(self.preset_shape().finalists)
    }

    /// Whether the GA's first population is mutants of its seeds: --ga-init, else the preset's.
    pub fn init_near_seeds(&self) -> bool {
        match self.ga_init {
            Some(init) => init == GaInit::NearSeeds,
            None => self.preset_shape().near_seeds,
        }
    }

    /// Windows of the decision stage (0: off): --decision-windows, else the preset's.
    pub fn decision_windows(&self) -> usize {
        self.decision_windows.unwrap_or(self.preset.shape(&self.model.device).decision_windows)
    }

    /// Baselines seeding the GA: --seed-with, else the preset's.
    pub fn seed_with(&self) -> Vec<String> {
        self.seed_with.clone().unwrap_or_else(|| vec![self.preset_shape().seed_with.to_string()])
    }

    /// Tokens of each screening window the seed reads: --seed-tokens, at most --seqlen.
    pub fn seed_tokens(&self) -> usize {
        self.seed_tokens.unwrap_or(self.seqlen).min(self.seqlen)
    }

    fn preset_shape(&self) -> PresetShape {
        let shape = self.preset.shape(&self.model.device);
        if self.decision_windows() == 0 {
            return shape;
        }
        match self.preset.resolve(&self.model.device) {
            // The decision stage's CPU split (docs/results.md, "The decision stage"): SLEB inside
            // the run (--portfolio-sleb-windows) seeds the GA instead of the one-shot ranking.
            // Its GA starts from mutants of SLEB's answer (docs/results.md, "The GA started near
            // its seeds").
            Preset::Quick => PresetShape { seed_with: "none", stalled: 3, near_seeds: true, ..shape },
            // The decision stage's GPU split (docs/results.md, "The GPU default, near its seeds"):
            // SLEB inside the run seeds the GA, which starts from mutants of its seeds with a
            // population of 64; the finalists are decided on 16 fresh windows of 512 tokens.
            _ => PresetShape { population: 64, near_seeds: true, ..shape },
        }
    }

    /// The search settings in words, for the report's header.
    pub fn search_summary(&self) -> String {
        let race = match self.portfolio_sleb_race.as_str() {
            "none" => String::new(),
            r => format!(" (raced {r})"),
        };
        let decision = match self.decision_windows() {
            0 => String::new(),
            d => format!(
                "; SLEB on {} random windows{race} seeds it; the finalists, SLEB's answer and the seed decided on {d} fresh CCDS windows of {} tokens ({})",
                self.portfolio_sleb_windows, self.decision_seqlen(), self.decision_loss
            ),
        };
        let budget = self.time_budget_s().map_or(String::new(), |b| format!("; time budget {b} s"));
        format!(
            "preset {}: seeded by {} on {} tokens per screening window, population {}{}, stop after {} stalled generations, {} finalists{decision}{budget}",
            self.preset.name(&self.model.device),
            self.seed_with().join(", "),
            self.seed_tokens(),
            self.population(),
            if self.init_near_seeds() { " (mutants of the seeds)" } else { "" },
            self.stalled(),
            self.finalists()
        )
    }

    pub fn setup(&self) -> Result<Setup> {
        let s = spinner("loading model and text");
        let model = self.model.load()?;
        let corpus = self.corpus()?;
        let split = SplitRule::default().split(&corpus).context("splitting the corpus")?;
        let max = (self.eval_windows > 0).then_some(self.eval_windows);
        let topics = Some(self.topic_windows);
        let eval = EvalSet::from_split(&model, &split, self.eval_seqlen, max, topics)?;
        if eval.windows.is_empty() {
            bail!("the evaluation split has fewer than {} tokens: use a larger corpus or a smaller --eval-seqlen", self.eval_seqlen);
        }
        s.finish_and_clear();
        Ok(Setup { model, split, eval })
    }

    fn corpus(&self) -> Result<Corpus> {
        match &self.corpus {
            Some(p) => read_corpus(p),
            None => Ok(read_wikipedia_leads(&evop::assets::AssetStore::from_env().wikipedia_leads()?)?),
        }
    }

    pub fn calibration_spec(&self) -> Result<CalibrationSpec> {
        let sampler = match self.calib.as_str() {
            "random" => SamplerKind::Random,
            "ccds" => {
                let embedder = match self.embedder.as_str() {
                    "minilm" => EmbedderKind::MiniLm,
                    e => match e.strip_prefix("hidden:").and_then(|b| b.parse().ok()) {
                        Some(block) => EmbedderKind::Hidden { block },
                        None => bail!("unknown --embedder `{e}` (expected minilm or hidden:B)"),
                    },
                };
                SamplerKind::Ccds { embedder, k: self.clusters, pool: self.pool }
            }
            other => bail!("unknown --calib `{other}` (expected ccds or random)"),
        };
        Ok(CalibrationSpec { windows: self.calib_windows, seqlen: self.seqlen, sampler })
    }

    pub fn loss_kind(&self) -> Result<evop::model::LossKind> {
        match self.loss.as_str() {
            "nll" => Ok(evop::model::LossKind::Nll),
            "kl" => Ok(evop::model::LossKind::KlToDense),
            other => bail!("unknown --loss `{other}` (expected nll or kl)"),
        }
    }

    /// The screening of `--screen-windows`, `--screen-tokens` and `--finalists`, if any.
    pub fn screening(&self) -> Result<Option<evop::Screening>> {
        let windows = if self.screen_windows == 0 || self.screen_windows >= self.calib_windows {
            self.calib_windows
        } else {
            self.screen_windows
        };
        if let Some(t) = self.screen_tokens {
            if t == 0 {
                bail!("--screen-tokens must be at least 1");
            }
            if t >= self.seqlen {
                bail!("--screen-tokens {t} must be below --seqlen {}", self.seqlen);
            }
        }
        if self.screen_stride == 0 {
            bail!("--screen-stride must be at least 1");
        }
        if windows == self.calib_windows && self.screen_tokens.is_none() && self.screen_stride == 1 {
            return Ok(None);
        }
        if self.finalists() == 0 {
            bail!("--finalists must be at least 1");
        }
        Ok(Some(evop::Screening { windows, tokens: self.screen_tokens, position_stride: self.screen_stride, finalists: self.finalists() }))
    }

    /// `--portfolio-sleb-race` parsed.
    pub fn sleb_race(&self) -> Result<Option<evop::baselines::Race>> {
        evop::baselines::Race::parse(&self.portfolio_sleb_race).map_err(|e| anyhow::anyhow!("--portfolio-sleb-race {e}"))
    }

    /// Tokens per decision window: --decision-seqlen, else the preset's, else --seqlen.
    pub fn decision_seqlen(&self) -> usize {
        self.decision_seqlen.or(self.preset.shape(&self.model.device).decision_seqlen).unwrap_or(self.seqlen)
    }

    /// The run's time budget in seconds: `--time-budget`, or `--budget` given in seconds.
    pub fn time_budget_s(&self) -> Option<f64> {
        match self.budget {
            Some(Budget::Seconds(s)) => Some(s),
            _ => self.time_budget,
        }
    }

    /// The decision stage's settings (`None`: off).
    pub fn decision_spec(&self) -> Result<Option<evop::DecisionSpec>> {
        let windows = self.decision_windows();
        if windows == 0 {
            return Ok(None);
        }
        let loss = match self.decision_loss.as_str() {
            "nll" => evop::model::LossKind::Nll,
            "kl" => evop::model::LossKind::KlToDense,
            other => bail!("unknown --decision-loss `{other}` (expected nll or kl)"),
        };
        let spec = evop::DecisionSpec { windows, seqlen: self.decision_seqlen(), pool: self.pool.max(windows).min(256.max(windows)), loss, ccds: self.calib == "ccds" };
        spec.check().map_err(|e| anyhow::anyhow!("--decision-windows {windows} --decision-seqlen {}: {e}", spec.seqlen))?;
        if let (Some(Budget::Seconds(_)), Some(t)) = (self.budget, self.time_budget) {
            bail!("--budget in seconds and --time-budget {t} both set a time budget: give one");
        }
        if let Some(b) = self.time_budget_s() {
            if !(b.is_finite() && b > 0.0) {
                bail!("--time-budget {b}: must be a positive number of seconds");
            }
        }
        Ok(Some(spec))
    }

    pub fn search_spec(&self) -> Result<SearchSpec> {
        let strategy = match self.strategy.as_str() {
            "ga" => StrategyKind::Ga,
            "one-plus-lambda" | "1+lambda" => StrategyKind::OnePlusLambda,
            other => bail!("unknown --strategy `{other}` (expected ga or one-plus-lambda)"),
        };
        Ok(SearchSpec {
            strategy,
            population: self.population(),
            generations: self.generations,
            stalled: (self.stalled() > 0).then_some(self.stalled()),
            budget: match self.budget {
                Some(Budget::Evaluations(n)) => Some(n),
                _ => None,
            },
            screening: self.screening()?,
            init_near_seeds: self.init_near_seeds(),
            ..SearchSpec::default()
        })
    }
}

/// Reads a corpus: a directory of text files, a JSONL file (`text` field), the Wikipedia leads
/// JSON, or a plain text file (one document per blank-line-separated paragraph, so the
/// evaluation split (every tenth document) and the calibration pool both get text).
pub fn read_corpus(path: &std::path::Path) -> Result<Corpus> {
    let name = path.to_string_lossy().to_string();
    Ok(if path.is_dir() {
        Corpus::from_text_dir(path)?
    } else if name.ends_with(".jsonl") {
        Corpus::from_jsonl(path, "text")?
    } else if name.ends_with(".json") {
        read_wikipedia_leads(path)?
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let paragraphs: Vec<&str> = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).collect();
        if paragraphs.is_empty() {
            bail!("{}: the corpus is empty", path.display());
        }
        Corpus::from_texts(name, &paragraphs)
    })
}

/// One method's answer.
#[derive(Clone, Debug, Serialize)]
pub struct MethodRun {
    pub method: String,
    pub n: usize,
    pub removed: Vec<usize>,
    pub search_seconds: f64,
    pub counts: ForwardCounts,
    /// Mean calibration NLL of the answer (same calibration set for all methods).
    pub calibration_nll: f64,
    pub eval: Option<EvalReport>,
    /// Full report (EvoP) or trace (baselines).
    pub detail: serde_json::Value,
    /// EvoP: seconds of the greedy seed (`--seed-with`) on the screening windows, and its mask
    /// (SLEB's answer on those windows); 0 and empty otherwise.
    pub seed_seconds: f64,
    pub seed_removed: Vec<usize>,
    /// EvoP: the windows its seed was computed on.
    pub seed_windows: usize,
    /// EvoP: the baselines that seeded it (`--seed-with`, comma-separated), and the tokens of
    /// each window they read.
    pub seed_method: String,
    pub seed_tokens: usize,
    /// The answer after `--heal` (none without it).
    pub healed: Option<crate::heal::HealedRun>,
}

/// How a command runs one method: [`run_method`] in one process, or `mpi::run_method` across ranks.
pub type MethodRunner = fn(
    &ExperimentArgs,
    &Setup,
    &evop::data::CalibrationSet,
    &str,
    usize,
    Option<(PathBuf, bool)>,
    Option<Arc<AtomicBool>>,
    Option<&std::path::Path>,
) -> Result<MethodRun>;

/// Runs `method` (`evop` or a baseline name) removing `n` blocks, on `calib`.
#[allow(clippy::too_many_arguments)]
pub fn run_method(
    args: &ExperimentArgs,
    setup: &Setup,
    calib: &evop::data::CalibrationSet,
    method: &str,
    n: usize,
    checkpoint: Option<(PathBuf, bool)>,
    interrupt: Option<Arc<AtomicBool>>,
    plots_dir: Option<&std::path::Path>,
) -> Result<MethodRun> {
    if method == "evop" {
        let (mut checkpoint, mut interrupt) = (checkpoint, interrupt);
        return run_evop(args, setup, calib, n, plots_dir, &mut |spec: evop::SearchSpec| {
            let mut p = Pipeline::new(&setup.model, setup.split.calibration.clone())
                .remove(n)
                .objective(args.objective)
                .search(spec)
                .seed(args.seed)
                .evaluator(evop::model::EvaluatorOptions { batch_size: args.batch_size, loss: args.loss_kind()?, ..Default::default() })
                .observer(SearchProgress::new(args.generations, &format!("evop n={n}")));
            if let Some((path, resume)) = checkpoint.take() {
                p = p.checkpoint(path, resume);
            }
            if let Some(flag) = interrupt.take() {
                p = p.interrupt(flag);
            }
            Ok((p.run_on(calib)?, serde_json::Value::Null))
        });
    }
    let start = Instant::now();
    let pruner = evop::baselines::pruner_by_name(method)?;
    let s = spinner(&format!("{method} n={n}"));
    let r = pruner.prune(&setup.model.lm, &calib.token_windows(), n)?;
    s.finish_and_clear();
    finish(args, setup, calib, method, n, start, 0.0, r.removed(), r.counts, serde_json::to_value(&r.trace)?, (0.0, Vec::new(), 0, String::new(), 0))
}

/// The search step of an EvoP run: given the prepared spec (seed masks, time limit), returns the
/// search's report and any extra detail to record under `detail["distributed"]` (null for none).
/// One process runs `Pipeline::run_on`; `mpi::run_method` spreads the fitness over ranks.
pub type EvopSearchStep<'a> = dyn FnMut(evop::SearchSpec) -> Result<(evop::PruneReport, serde_json::Value)> + 'a;

/// EvoP's whole run, the same in one process and across MPI ranks: the greedy seed
/// (`--seed-with`), SLEB on its own random windows (a seed and a candidate), `--also` baselines,
/// the search (`search`), then the decision stage (`evop::decision`) over every finalist.
pub fn run_evop(
    args: &ExperimentArgs,
    setup: &Setup,
    calib: &evop::data::CalibrationSet,
    n: usize,
    plots_dir: Option<&std::path::Path>,
    search: &mut EvopSearchStep<'_>,
) -> Result<MethodRun> {
    let method = "evop";
    let lm = setup.model.lm.clone();
    let windows = calib.token_windows();
    let start = Instant::now();
    let mut excluded_seconds = 0.0;
    let mut spec = args.search_spec()?;
    let decision = args.decision_spec()?;
    let seeded = spec.screening.as_ref().map_or(windows.len(), |sc| sc.windows.min(windows.len()));
    let t = Instant::now();
    let seed_with = args.seed_with();
    let seed_data: Vec<Vec<u32>> = windows[..seeded].iter().map(|w| w[..args.seed_tokens().min(w.len())].to_vec()).collect();
    spec.seed_with_baselines(&lm, &seed_data, n, &seed_with)?;
    let (seed_seconds, seed_windows, seed_tokens) = (t.elapsed().as_secs_f64(), seeded, args.seed_tokens());
    let seed_method = seed_with.join(",");
    let seed_removed = spec.seed_masks.first().cloned().unwrap_or_default();
    let l = lm.num_blocks();
    // Seconds of one candidate on one whole window, from the seed's own timing (the one-shot
    // ranking scores ppl_candidates masks, SLEB sleb_candidates), else from SLEB's below.
    let mut per_candidate_window = match seed_method.as_str() {
        "ppl" => seed_seconds / (seeded as f64 * ppl_candidates(l)),
        "sleb" => seed_seconds / (seeded as f64 * sleb_candidates(l, n)),
        _ => f64::NAN,
    } * args.seqlen as f64 / args.seed_tokens().max(1) as f64;
    // SLEB on its own protocol inside the run (random windows, mean NLL): a candidate, and a
    // seed of the GA.
    let mut portfolio_sleb = serde_json::Value::Null;
    let mut sleb_candidate = None;
    let mut sleb_windows_read: Vec<Vec<u32>> = Vec::new();
    let r = args.portfolio_sleb_windows;
    if decision.is_some() && r > 0 {
        let ts = Instant::now();
        let rspec = CalibrationSpec { windows: r, seqlen: args.seqlen, sampler: SamplerKind::Random };
        // A small corpus may hold fewer windows than asked: SLEB then reads them all.
        let draw = |windows| evop::build_calibration(&setup.model, &setup.split.calibration, &CalibrationSpec { windows, ..rspec.clone() }, args.seed);
        let random = evop::draw_at_most(r, 1, draw)
            .with_context(|| format!("drawing {r} random windows for SLEB inside EvoP's run (--portfolio-sleb-windows)"))?
            .0
            .token_windows();
        let r = random.len();
        let s = spinner(&format!("sleb on {r} random windows n={n}"));
        let race = args.sleb_race()?;
        let answer = evop::baselines::Pruner::prune(&evop::baselines::Sleb { race, ..Default::default() }, &lm, &random, n)?.removed();
        s.finish_and_clear();
        let seconds = ts.elapsed().as_secs_f64();
        // Racing scores a share of plain SLEB's candidate-windows on the same windows.
        let raced_share = match race.filter(|q| q.screen_windows < r) {
            Some(q) => q.sleb_share(l, n, r),
            None => 1.0,
        };
        if !per_candidate_window.is_finite() {
            per_candidate_window = seconds / (r as f64 * sleb_candidates(l, n) * raced_share);
        }
        if !spec.seed_masks.contains(&answer) {
            spec.seed_masks.push(answer.clone());
        }
        portfolio_sleb = serde_json::json!({ "windows": r, "tokens": r * args.seqlen, "seconds": seconds, "removed": answer,
            "race": race.map(|q| serde_json::json!({ "screen_windows": q.screen_windows, "keep": q.keep })), "raced_share": raced_share });
        sleb_candidate = Some((format!("sleb ({} random tokens)", r * args.seqlen), answer));
        sleb_windows_read = random;
    }
    let mut also = Vec::new();
    if decision.is_some() {
        for name in args.also.iter().filter(|m| m.as_str() != "none") {
            let r = evop::baselines::pruner_by_name(name)?.prune(&lm, &windows, n)?;
            also.push((name.clone(), r.removed()));
        }
    }
    if let (Some(b), Some(d)) = (args.time_budget_s(), &decision) {
        let candidates = args.finalists() + 2 + also.len();
        // Seconds per candidate and window scale with the window's tokens.
        let per_decision_window = per_candidate_window * d.seqlen as f64 / args.seqlen.max(1) as f64;
        let decide_estimate = if per_decision_window.is_finite() { per_decision_window * (candidates * d.windows) as f64 } else { 0.0 };
        spec.time_limit_s = Some((b - start.elapsed().as_secs_f64() - decide_estimate).max(0.0));
    } else if let Some(b) = args.time_budget_s() {
        spec.time_limit_s = Some((b - start.elapsed().as_secs_f64()).max(0.0));
    }
    let (report, distributed) = search(spec)?;
    if let Some(dir) = plots_dir {
        crate::plots::convergence(&dir.join(format!("convergence-n{n}")), &report.history)?;
    }
    let mut detail = serde_json::to_value(&report)?;
    if !distributed.is_null() {
        detail["distributed"] = distributed;
    }
    let mut removed = report.removed.clone();
    if let Some(dspec) = &decision {
        // The decision windows' draw (MiniLM embedding and k-means) is timed apart, like the
        // calibration set's; scoring the candidates counts in EvoP's seconds.
        let paused = Instant::now();
        let mut exclude = windows.clone();
        exclude.extend(sleb_windows_read.iter().cloned());
        let s = spinner("drawing the decision windows");
        // A small corpus may hold fewer fresh windows than asked: decide on those there are;
        // with none left, the GA's own choice stands (said on stderr and in report.json).
        let draw = |windows| {
            let fewer = evop::DecisionSpec { windows, pool: dspec.pool.max(windows), ..dspec.clone() };
            evop::decision_windows(&setup.model, &setup.split.calibration, &fewer, args.seed, &exclude)
        };
        let fresh = match evop::draw_at_most(dspec.windows, 1, draw) {
            Ok((w, _)) => Some(w),
            Err(evop::EvopError::Data(evop::data::DataError::NotEnoughWindows { .. })) => None,
            Err(e) => return Err(e.into()),
        };
        s.finish_and_clear();
        let Some(fresh) = fresh else {
            eprintln!("warning: the calibration pool has no window left that no search read: no decision stage (the GA's choice stands); use a larger corpus");
            detail["decision"] = serde_json::Value::Null;
            detail["decision_skipped"] = serde_json::json!("no fresh window left in the calibration pool");
            detail["portfolio_sleb"] = portfolio_sleb;
            excluded_seconds += paused.elapsed().as_secs_f64();
            return finish(args, setup, calib, method, n, start, excluded_seconds, report.removed.clone(), report.counts, detail, (seed_seconds, seed_removed, seed_windows, seed_method, seed_tokens));
        };
        if let Some(dir) = plots_dir {
            fresh.save(&dir.join("decision-windows.json"))?;
        }
        let draw_seconds = paused.elapsed().as_secs_f64();
        let mut candidates: Vec<evop::Candidate> =
            report.finalists.iter().enumerate().map(|(i, (r, _))| evop::Candidate::new(format!("evop finalist {}", i + 1), r.clone())).collect();
        if candidates.is_empty() {
            candidates.push(evop::Candidate::new("evop", report.removed.clone()));
        }
        if let Some((label, r)) = &sleb_candidate {
            candidates.push(evop::Candidate::new(label.clone(), r.clone()));
        }
        if !seed_removed.is_empty() {
            candidates.push(evop::Candidate::new(format!("{seed_method} seed"), seed_removed.clone()));
        }
        for (name, r) in &also {
            candidates.push(evop::Candidate::new(name.clone(), r.clone()));
        }
        let s = spinner(&format!("deciding among {} candidates on {} fresh tokens", candidates.len(), dspec.tokens()));
        let d = evop::decide(&lm, &candidates, &fresh.token_windows(), dspec, args.batch_size)?;
        s.finish_and_clear();
        removed = d.removed.clone();
        detail["decision"] = serde_json::to_value(&d)?;
        detail["decision"]["windows_drawn_seconds"] = serde_json::json!(draw_seconds);
        detail["decision"]["calibration_clusters"] = serde_json::json!(fresh.clusters);
        detail["portfolio_sleb"] = portfolio_sleb;
        // The draw is not search time.
        excluded_seconds += draw_seconds;
    }
    finish(args, setup, calib, method, n, start, excluded_seconds, removed, report.counts, detail, (seed_seconds, seed_removed, seed_windows, seed_method, seed_tokens))
}

/// The seed's seconds, mask, windows, method and tokens.
type SeedInfo = (f64, Vec<usize>, usize, String, usize);

/// The [`MethodRun`] of an answer: its seconds (less `excluded_seconds`) and calibration NLL.
#[allow(clippy::too_many_arguments)]
fn finish(
    args: &ExperimentArgs,
    setup: &Setup,
    calib: &evop::data::CalibrationSet,
    method: &str,
    n: usize,
    start: Instant,
    excluded_seconds: f64,
    removed: Vec<usize>,
    counts: ForwardCounts,
    detail: serde_json::Value,
    seed: SeedInfo,
) -> Result<MethodRun> {
    let (seed_seconds, seed_removed, seed_windows, seed_method, seed_tokens) = seed;
    let lm = &setup.model.lm;
    let windows = calib.token_windows();
    let search_seconds = start.elapsed().as_secs_f64() - excluded_seconds;
    let mask = BlockMask::from_removed(lm.num_blocks(), &removed)?;
    let calibration_nll = evop::model::perplexity::perplexity(lm.as_ref(), &windows, &mask, args.batch_size)?.mean_nll;
    Ok(MethodRun {
        method: method.to_string(),
        n,
        removed,
        search_seconds,
        counts,
        calibration_nll,
        eval: None,
        detail,
        seed_seconds,
        seed_removed,
        seed_windows,
        seed_method,
        seed_tokens,
        healed: None,
    })
}

/// Candidates SLEB scores removing `n` of `l` blocks: at each step every alive block but the
/// first and last alive, plus its dense pass.
pub fn sleb_candidates(l: usize, n: usize) -> f64 {
    1.0 + (0..n).map(|k| l.saturating_sub(k + 2) as f64).sum::<f64>()
}

/// Candidates of the one-shot ranking seeding EvoP (the ends protected), plus its dense pass.
pub fn ppl_candidates(l: usize) -> f64 {
    (l.saturating_sub(2) + 1) as f64
}

/// Evaluates a mask on the evaluation windows (with a spinner).
pub fn evaluate(args: &ExperimentArgs, setup: &Setup, mask: &BlockMask, label: &str) -> Result<EvalReport> {
    let s = spinner(&format!("evaluating {label} on {} tokens", setup.eval.tokens()));
    let r = evop::evaluate(setup.model.lm.as_ref(), &setup.eval, mask, args.batch_size)?;
    s.finish_and_clear();
    Ok(r)
}

/// `--budget`: fitness evaluations, or seconds for the whole search and decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Evaluations(u64),
    Seconds(f64),
}

/// Parses `--budget`: `2000` (evaluations), `300s` or `5m` (seconds).
fn parse_budget(s: &str) -> std::result::Result<Budget, String> {
    let t = s.trim();
    let seconds = |v: &str, scale: f64| match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(Budget::Seconds(x * scale)),
        _ => Err(format!("`{s}`: expected a positive number before the unit")),
    };
    if let Some(v) = t.strip_suffix('s') {
        seconds(v, 1.0)
    } else if let Some(v) = t.strip_suffix('m') {
        seconds(v, 60.0)
    } else {
        match t.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Budget::Evaluations(n)),
            _ => Err(format!("`{s}`: expected a number of evaluations (2000) or seconds with a unit (300s, 5m)")),
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn budgets_parse_as_evaluations_or_seconds() {
        assert_eq!(parse_budget("2000"), Ok(Budget::Evaluations(2000)));
        assert_eq!(parse_budget("300s"), Ok(Budget::Seconds(300.0)));
        assert_eq!(parse_budget("2.5m"), Ok(Budget::Seconds(150.0)));
        for bad in ["0", "-3s", "fast", "s", "1h", "0m"] {
            assert!(parse_budget(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod ga_init_tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        exp: ExperimentArgs,
    }

    fn args(extra: &[&str]) -> ExperimentArgs {
        Cli::try_parse_from(std::iter::once("evop").chain(extra.iter().copied())).unwrap().exp
    }

    /// Both defaults with the decision stage (quick on the CPU, full on a GPU) start the GA near
    /// its seeds; either preset without the decision stage and `--ga-init random` do not.
    #[test]
    fn ga_init_follows_the_preset_unless_given() {
        assert!(args(&[]).init_near_seeds());
        assert!(args(&[]).search_spec().unwrap().init_near_seeds);
        assert!(!args(&["--ga-init", "random"]).search_spec().unwrap().init_near_seeds);
        assert!(args(&["--preset", "full"]).init_near_seeds());
        assert!(!args(&["--preset", "full", "--decision-windows", "0"]).init_near_seeds());
        assert!(!args(&["--decision-windows", "0"]).init_near_seeds());
        assert!(!args(&["--preset", "full", "--ga-init", "random"]).init_near_seeds());
        assert!(Cli::try_parse_from(["evop", "--ga-init", "nearby"]).is_err());
    }

    /// The GPU default (`full` with the decision stage): population 64, 8 finalists, 16 decision
    /// windows of 512 tokens; without the decision stage `full` keeps population 32; the CPU
    /// default decides on 16 windows of --seqlen tokens; explicit flags win.
    #[test]
    fn decision_and_population_follow_the_preset_unless_given() {
        let gpu = args(&["--preset", "full"]);
        assert_eq!((gpu.population(), gpu.finalists(), gpu.decision_windows(), gpu.decision_seqlen()), (64, 8, 16, 512));
        let spec = gpu.decision_spec().unwrap().unwrap();
        assert_eq!((spec.windows, spec.seqlen), (16, 512));
        let gpu_off = args(&["--preset", "full", "--decision-windows", "0"]);
        assert_eq!((gpu_off.population(), gpu_off.decision_windows()), (32, 0));
        assert!(gpu_off.decision_spec().unwrap().is_none());
        let cpu = args(&[]);
        assert_eq!((cpu.population(), cpu.decision_windows(), cpu.decision_seqlen()), (16, 16, 128));
        let given = args(&["--preset", "full", "--decision-windows", "24", "--decision-seqlen", "256", "--population", "48"]);
        assert_eq!((given.population(), given.decision_windows(), given.decision_seqlen()), (48, 24, 256));
    }
}
