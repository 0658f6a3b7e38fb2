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
    /// Stop after this many fitness evaluations.
    #[arg(long)]
    pub budget: Option<u64>,
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

/// How much search EvoP does by default (`--preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// `full` on a GPU (CUDA, Metal), `quick` on the CPU.
    Auto,
    /// SLEB seed, population 32, stop after 8 stalled generations, 8 finalists.
    Full,
    /// One-shot perplexity seed, population 16, stop after 4 stalled generations, 4 finalists.
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
            Preset::Quick => PresetShape { seed_with: "ppl", population: 16, stalled: 4, finalists: 4 },
            _ => PresetShape { seed_with: "sleb", population: 32, stalled: 8, finalists: 8 },
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

    /// Baselines seeding the GA: --seed-with, else the preset's.
    pub fn seed_with(&self) -> Vec<String> {
        self.seed_with.clone().unwrap_or_else(|| vec![self.preset_shape().seed_with.to_string()])
    }

    /// Tokens of each screening window the seed reads: --seed-tokens, at most --seqlen.
    pub fn seed_tokens(&self) -> usize {
        self.seed_tokens.unwrap_or(self.seqlen).min(self.seqlen)
    }

    fn preset_shape(&self) -> PresetShape {
        self.preset.shape(&self.model.device)
    }

    /// The search settings in words, for the report's header.
    pub fn search_summary(&self) -> String {
        format!(
            "preset {}: seeded by {} on {} tokens per screening window, population {}, stop after {} stalled generations, {} finalists",
            self.preset.name(&self.model.device),
            self.seed_with().join(", "),
            self.seed_tokens(),
            self.population(),
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
            budget: self.budget,
            screening: self.screening()?,
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
    let lm = setup.model.lm.clone();
    let windows = calib.token_windows();
    let start = Instant::now();
    let (mut seed_seconds, mut seed_removed, mut seed_windows, mut seed_method, mut seed_tokens) = (0.0, Vec::new(), 0, String::new(), 0);
    let (removed, counts, detail) = if method == "evop" {
        let mut spec = args.search_spec()?;
        let seeded = spec.screening.as_ref().map_or(windows.len(), |sc| sc.windows.min(windows.len()));
        let t = Instant::now();
        let seed_with = args.seed_with();
        let seed_data: Vec<Vec<u32>> = windows[..seeded].iter().map(|w| w[..args.seed_tokens().min(w.len())].to_vec()).collect();
        spec.seed_with_baselines(&lm, &seed_data, n, &seed_with)?;
        (seed_seconds, seed_windows, seed_tokens) = (t.elapsed().as_secs_f64(), seeded, args.seed_tokens());
        seed_method = seed_with.join(",");
        seed_removed = spec.seed_masks.first().cloned().unwrap_or_default();
        let mut p = Pipeline::new(&setup.model, setup.split.calibration.clone())
            .remove(n)
            .objective(args.objective)
            .search(spec)
            .seed(args.seed)
            .evaluator(evop::model::EvaluatorOptions { batch_size: args.batch_size, loss: args.loss_kind()?, ..Default::default() })
            .observer(SearchProgress::new(args.generations, &format!("evop n={n}")));
        if let Some((path, resume)) = checkpoint {
            p = p.checkpoint(path, resume);
        }
        if let Some(flag) = interrupt {
            p = p.interrupt(flag);
        }
        let report = p.run_on(calib)?;
        if let Some(dir) = plots_dir {
            crate::plots::convergence(&dir.join(format!("convergence-n{n}")), &report.history)?;
        }
        (report.removed.clone(), report.counts, serde_json::to_value(&report)?)
    } else {
        let pruner = evop::baselines::pruner_by_name(method)?;
        let s = spinner(&format!("{method} n={n}"));
        let r = pruner.prune(&lm, &windows, n)?;
        s.finish_and_clear();
        (r.removed(), r.counts, serde_json::to_value(&r.trace)?)
    };
    let search_seconds = start.elapsed().as_secs_f64();
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

/// Evaluates a mask on the evaluation windows (with a spinner).
pub fn evaluate(args: &ExperimentArgs, setup: &Setup, mask: &BlockMask, label: &str) -> Result<EvalReport> {
    let s = spinner(&format!("evaluating {label} on {} tokens", setup.eval.tokens()));
    let r = evop::evaluate(setup.model.lm.as_ref(), &setup.eval, mask, args.batch_size)?;
    s.finish_and_clear();
    Ok(r)
}
