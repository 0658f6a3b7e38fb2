//! EvoP end to end (Wu et al. 2025, arXiv 2502.14910): calibration pool -> token windows ->
//! calibration set (random or CCDS) -> fitness (calibration objective of the masked model) ->
//! evolutionary pattern search (EPPS) -> mask -> report.
//!
//! ```no_run
//! use evop::{Pipeline, CalibrationSpec, SamplerKind};
//! # fn main() -> evop::Result<()> {
//! let store = evop::assets::AssetStore::from_env();
//! let model = evop::model::load(&store.smollm2_gguf()?, &Default::default())?;
//! let corpus = evop::data::read_wikipedia_leads(&store.wikipedia_leads()?)?;
//! let pool = evop::data::SplitRule::default().split(&corpus)?.calibration;
//! let report = Pipeline::new(&model, pool)
//!     .remove(6)
//!     .calibration(CalibrationSpec { windows: 8, seqlen: 128, sampler: SamplerKind::ccds_minilm() })
//!     .seed(0)
//!     .run()?;
//! println!("removed {:?}, calibration loss {:.4}", report.removed, report.objective_value);
//! # Ok(()) }
//! ```
use crate::error::{EvopError, Result};
use crate::fitness::CalibrationFitness;
use crate::objective::Objective;
use evop_data::{
    make_windows, CalibrationSet, CcdsOptions, CcdsSampler, Corpus, HiddenStateEmbedder, KChoice, MiniLm,
    MiniLmOptions, RandomSampler, Sampler, Window, WindowOptions,
};
use evop_model::{BlockLm, BlockMask, EvaluatorOptions, ForwardCounts, LoadedModel};
use evop_search::{
    Fidelity, Fitness, GaParams, Tournament, GenerationReport, Mask, MaskSpace, Observer, OnePlusLambdaParams, Screen, Search,
    StopReason, Termination,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Which embedder CCDS clusters with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 sentence embeddings (fetched into the asset cache).
    MiniLm,
    /// The target model's own mean-pooled hidden state at this block boundary.
    Hidden { block: usize },
}

/// How the calibration windows are chosen from the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SamplerKind {
    /// Uniformly at random (SLEB's protocol).
    Random,
    /// CCDS: embed `pool` candidate windows, k-means (`k = None`: the automatic rule), draw across clusters.
    Ccds { embedder: EmbedderKind, k: Option<usize>, pool: usize },
}

impl SamplerKind {
    /// CCDS with MiniLM, automatic k, 256 candidate windows.
    pub fn ccds_minilm() -> Self {
        Self::Ccds { embedder: EmbedderKind::MiniLm, k: None, pool: 256 }
    }
}

/// Size and source of the calibration set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSpec {
    /// Calibration windows.
    pub windows: usize,
    /// Tokens per window.
    pub seqlen: usize,
    pub sampler: SamplerKind,
}

impl Default for CalibrationSpec {
    /// 8 windows of 128 tokens drawn with CCDS (MiniLM, automatic k, 256 candidates): sized so the
    /// default run finishes on a 2-core CPU. On a GPU, raise `windows` and `seqlen` (e.g. 128 x 2048).
    fn default() -> Self {
        Self { windows: 8, seqlen: 128, sampler: SamplerKind::ccds_minilm() }
    }
}

/// Which evolutionary strategy searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// EPPS: the generational GA of EvoP.
    Ga,
    /// The (1+lambda) EA of EvoPress.
    OnePlusLambda,
}

/// The GA's variation operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GaOperators {
    /// Shared-removed crossover and uniform swap mutation (evop_search's defaults).
    #[default]
    Uniform,
    /// One-point crossover in block order and uniform swap mutation: a child keeps its first
    /// parent's choices up to a cut point.
    OnePoint,
    /// One-point crossover in block order and shift mutation (reach 3): a child keeps a parent's
    /// choices up to a cut point and moves removals to nearby blocks, so the evaluator's prefix
    /// cache resumes it from a deeper state (fewer block forwards per candidate).
    BlockOrder,
}

impl GaOperators {
    fn crossover(self) -> Box<dyn evop_search::Crossover> {
        match self {
            GaOperators::Uniform => Box::new(evop_search::SharedRemovedCrossover),
            GaOperators::OnePoint | GaOperators::BlockOrder => Box::new(evop_search::OnePointCrossover),
        }
    }

    fn mutation(self) -> Box<dyn evop_search::Mutation> {
        match self {
            GaOperators::Uniform | GaOperators::OnePoint => Box::new(evop_search::SwapMutation::default()),
            GaOperators::BlockOrder => Box::new(evop_search::ShiftMutation::default()),
        }
    }
}

/// Search budget and strategy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchSpec {
    pub strategy: StrategyKind,
    /// GA population, or lambda (offspring per generation) for (1+lambda).
    pub population: usize,
    /// Generations after initialisation.
    pub generations: u64,
    /// Stop early after this many generations without improvement.
    pub stalled: Option<u64>,
    /// Stop once the fitness has been called on this many masks.
    pub budget: Option<u64>,
    /// Never remove the first and the last block (as SLEB never does).
    pub protect_ends: bool,
    /// Masks (lists of removed blocks) placed in the initial population, e.g. a baseline's answer.
    pub seed_masks: Vec<Vec<usize>>,
    /// Screen candidates on a subset of the calibration data (approximate; `None`, the default,
    /// evaluates every candidate on everything).
    #[serde(default)]
    pub screening: Option<Screening>,
    /// Answer masks evaluated before from the search's memo cache (the default). `false`
    /// evaluates every mask the search asks for, repeats included, as the reference search loops
    /// do: the naive path of the reuse measurements. The result is the same either way.
    #[serde(default = "memoize_default")]
    pub memoize: bool,
    /// GA: the fraction of each generation replaced by uniformly random masks (`None`: the GA's
    /// own default, 0.1). EvoP's default is `Some(0.0)`: over 3 seeds at n = 6 and 9 the GA without
    /// immigrants ended on equal or better masks than with 10 %, and a random mask shares almost
    /// no computation with the rest (docs/search.md). Ignored by (1+lambda).
    #[serde(default)]
    pub immigrants: Option<f64>,
    /// GA: the variation operators.
    #[serde(default)]
    pub operators: GaOperators,
    /// GA: start from mutants of the seed masks instead of filling the initial population with
    /// random masks (see `evop_search::GaParams::init_near_seeds`). Default `false`.
    #[serde(default)]
    pub init_near_seeds: bool,
    /// Stop after the generation running this many seconds after the search started (a time
    /// budget; `None`: no limit). Where it binds, the answer depends on the machine's speed.
    #[serde(default)]
    pub time_limit_s: Option<f64>,
}

fn memoize_default() -> bool {
    true
}

/// Screening: a cheaper, approximate search. Candidates are ranked on the first `windows`
/// calibration windows (cluster-balanced, see [`CalibrationFitness`]), optionally on their first
/// `tokens` tokens only (causal attention makes that the exact loss of the shortened windows, and
/// blocks run on `tokens` positions), with the loss over every `position_stride`-th predicted
/// position; full fidelity (every window, token and position) decides among the `finalists`.
/// - GA: every evaluation of the search is screened; the `finalists` best distinct masks of the
///   final population are then evaluated at full fidelity and the best of them is the answer.
/// - (1+lambda): EvoPress's multi-step selection: each generation's offspring are screened and the
///   `finalists` best are evaluated at full fidelity (the parent is always a full-fidelity value).
///   `windows` must be fewer than the calibration set's and `tokens` is not supported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Screening {
    /// Calibration windows used to screen.
    pub windows: usize,
    /// Leading tokens of each window used to screen (`None`: all).
    #[serde(default)]
    pub tokens: Option<usize>,
    /// Loss over every `position_stride`-th predicted position when screening (1: all).
    pub position_stride: usize,
    /// Candidates evaluated at full fidelity (GA: at the end; (1+lambda): per generation).
    pub finalists: usize,
}

impl Default for SearchSpec {
    /// GA without random immigrants, population 12, 10 generations, stop after 5 stalled generations, no evaluation cap,
    /// ends protected, no seed masks: sized for a 2-core CPU; on a GPU use e.g. population 32
    /// and 50 generations.
    fn default() -> Self {
        Self {
            strategy: StrategyKind::Ga,
            population: 12,
            generations: 10,
            stalled: Some(5),
            budget: None,
            protect_ends: true,
            seed_masks: Vec::new(),
            screening: None,
            memoize: true,
            immigrants: Some(0.0),
            operators: GaOperators::Uniform,
            init_near_seeds: false,
            time_limit_s: None,
        }
    }
}

impl SearchSpec {
    /// Places the answers of cheap baselines for removing `n` blocks on `windows` in the initial
    /// population, as `evop prune --seed-with` does. `names` are [`evop_baselines::pruner_by_name`]
    /// names (`none` is skipped); with `protect_ends`, the one-shot ranking (`ppl`) skips the first
    /// and last block, and any other answer that removes one of them cannot seed the search and is
    /// left out.
    pub fn seed_with_baselines(
        &mut self,
        lm: &Arc<dyn BlockLm>,
        windows: &[Vec<u32>],
        n: usize,
        names: &[String],
    ) -> Result<()> {
        let last = lm.num_blocks().saturating_sub(1);
        for name in names.iter().filter(|m| m.as_str() != "none") {
            let removed = self.seed_pruner(name, lm.num_blocks())?.prune(lm, windows, n)?.removed();
            if !self.protect_ends || !(removed.contains(&0) || removed.contains(&last)) {
                self.seed_masks.push(removed);
            }
        }
        Ok(())
    }

    /// The baseline `name` as a seed of this search: [`evop_baselines::pruner_by_name`], except that
    /// with `protect_ends` the one-shot ranking never ranks the first or last of the `l` blocks.
    pub fn seed_pruner(&self, name: &str, l: usize) -> Result<Box<dyn evop_baselines::Pruner>> {
        if self.protect_ends && name.trim().eq_ignore_ascii_case("ppl") {
            return Ok(Box::new(evop_baselines::OneShotPpl { protected: vec![0, l.saturating_sub(1)], ..Default::default() }));
        }
        Ok(evop_baselines::pruner_by_name(name)?)
    }
}

/// The outcome of a pruning run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneReport {
    /// Removed blocks, ascending.
    pub removed: Vec<usize>,
    pub num_blocks: usize,
    /// The objective's value for the chosen mask at full fidelity.
    pub objective_value: f64,
    pub objective: Objective,
    /// Mean NLL per calibration window under the chosen mask.
    pub window_losses: Vec<f64>,
    pub stop_reason: Option<StopReason>,
    pub generations: u64,
    pub evaluations: u64,
    pub cache_hits: u64,
    /// Block and head applications spent by the search.
    pub counts: ForwardCounts,
    /// One entry per generation.
    pub history: Vec<GenerationReport>,
    /// The best distinct masks of the final population with their full-fidelity objective
    /// values, best first: the screening's finalists, or (unscreened) up to 4 of the population.
    #[serde(default)]
    pub finalists: Vec<(Vec<usize>, f64)>,
    /// Seconds spent building the calibration set and searching.
    pub calibration_seconds: f64,
    pub search_seconds: f64,
}

impl PruneReport {
    /// The chosen mask.
    pub fn mask(&self) -> Result<BlockMask> {
        Ok(BlockMask::from_removed(self.num_blocks, &self.removed)?)
    }
}

/// EvoP's pipeline, configured with a builder.
pub struct Pipeline<'m> {
    model: &'m LoadedModel,
    pool: Corpus,
    remove: usize,
    calibration: CalibrationSpec,
    objective: Objective,
    search: SearchSpec,
    evaluator: EvaluatorOptions,
    seed: u64,
    checkpoint: Option<PathBuf>,
    resume: bool,
    interrupt: Option<Arc<AtomicBool>>,
    observers: Vec<Box<dyn Observer>>,
}

impl<'m> Pipeline<'m> {
    /// A pipeline over `model` drawing calibration text from `pool`. Defaults: remove 6 blocks,
    /// [`CalibrationSpec::default`], [`Objective::MeanNll`], [`SearchSpec::default`], seed 0.
    pub fn new(model: &'m LoadedModel, pool: Corpus) -> Self {
        Self {
            model,
            pool,
            remove: 6,
            calibration: CalibrationSpec::default(),
            objective: Objective::default(),
            search: SearchSpec::default(),
            evaluator: EvaluatorOptions::default(),
            seed: 0,
            checkpoint: None,
            resume: false,
            interrupt: None,
            observers: Vec::new(),
        }
    }

    /// Number of blocks to remove.
    pub fn remove(mut self, n: usize) -> Self {
        self.remove = n;
        self
    }
    pub fn calibration(mut self, spec: CalibrationSpec) -> Self {
        self.calibration = spec;
        self
    }
    pub fn objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }
    pub fn search(mut self, spec: SearchSpec) -> Self {
        self.search = spec;
        self
    }
    /// How candidates are evaluated (batch size, reuse).
    pub fn evaluator(mut self, options: EvaluatorOptions) -> Self {
        self.evaluator = options;
        self
    }
    /// Seed of every random choice (pool subsampling, clustering, search).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Write a checkpoint after every generation to `path`; with `resume`, continue from it.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>, resume: bool) -> Self {
        self.checkpoint = Some(path.into());
        self.resume = resume;
        self
    }
    /// Stop cleanly after the current generation once `flag` is set (e.g. by Ctrl-C).
    pub fn interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }
    /// Report every generation to `observer`.
    pub fn observer(mut self, observer: impl Observer + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    fn check(&self) -> Result<()> {
        let l = self.model.lm.num_blocks();
        let protected = if self.search.protect_ends { 2 } else { 0 };
        if self.remove == 0 || self.remove + protected > l {
            return Err(EvopError::config(
                "remove",
                self.remove,
                format!("must be between 1 and {} for a model of {l} blocks{}", l - protected, if protected > 0 { " with the first and last protected" } else { "" }),
            ));
        }
        if self.calibration.windows == 0 {
            return Err(EvopError::config("calibration.windows", 0, "at least one window"));
        }
        if self.calibration.seqlen < 2 {
            return Err(EvopError::config("calibration.seqlen", self.calibration.seqlen, "at least 2 tokens"));
        }
        Ok(())
    }

    /// Cuts the pool into windows and draws the calibration set with the configured sampler.
    pub fn build_calibration(&self) -> Result<CalibrationSet> {
        self.check()?;
        build_calibration(self.model, &self.pool, &self.calibration, self.seed)
    }

    /// Builds the calibration set and searches.
    pub fn run(self) -> Result<PruneReport> {
        let start = Instant::now();
        let calib = self.build_calibration()?;
        let calibration_seconds = start.elapsed().as_secs_f64();
        let mut report = self.run_on(&calib)?;
        report.calibration_seconds = calibration_seconds;
        Ok(report)
    }

    /// Searches with a given calibration set (e.g. shared with baselines).
    pub fn run_on(mut self, calib: &CalibrationSet) -> Result<PruneReport> {
        self.check()?;
        let windows = calib.token_windows();
        let job = SearchJob {
            remove: self.remove,
            objective: self.objective,
            search: self.search.clone(),
            evaluator: self.evaluator.clone(),
            seed: self.seed,
            checkpoint: self.checkpoint.clone().map(|p| (p, self.resume)),
            interrupt: self.interrupt.clone(),
            observers: std::mem::take(&mut self.observers),
        };
        job.run(self.model.lm.clone(), &windows, calib.clusters.as_deref())
    }
}

/// EvoP's search on given calibration windows: everything after the calibration set is drawn.
pub struct SearchJob {
    pub remove: usize,
    pub objective: Objective,
    pub search: SearchSpec,
    pub evaluator: EvaluatorOptions,
    pub seed: u64,
    /// Checkpoint path and whether to resume from it.
    pub checkpoint: Option<(PathBuf, bool)>,
    pub interrupt: Option<Arc<AtomicBool>>,
    pub observers: Vec<Box<dyn Observer>>,
}

impl SearchJob {
    /// A job with the default search, objective and evaluator.
    pub fn new(remove: usize, seed: u64) -> Self {
        Self {
            remove,
            objective: Objective::default(),
            search: SearchSpec::default(),
            evaluator: EvaluatorOptions::default(),
            seed,
            checkpoint: None,
            interrupt: None,
            observers: Vec::new(),
        }
    }

    /// Searches the masks of `lm` removing `remove` blocks on `windows` (with optional cluster labels).
    pub fn run(mut self, lm: Arc<dyn BlockLm>, windows: &[Vec<u32>], groups: Option<&[usize]>) -> Result<PruneReport> {
        let start = Instant::now();
        let l = lm.num_blocks();
        let mut fitness = CalibrationFitness::new(lm.clone(), windows, groups, self.objective, self.evaluator.clone())?;
        let screening = self.search.screening.clone();
        let mut screen_fitness = None;
        if let Some(sc) = &screening {
            let seqlen = windows[0].len();
            let tokens = sc.tokens.unwrap_or(seqlen);
            let ga = self.search.strategy == StrategyKind::Ga;
            let max_windows = if ga { windows.len() } else { windows.len() - 1 };
            if sc.windows == 0 || sc.windows > max_windows {
                return Err(EvopError::config("screening.windows", sc.windows, format!("must be between 1 and {max_windows}")));
            }
            if tokens < 2 || tokens > seqlen || (!ga && tokens != seqlen) {
                return Err(EvopError::config("screening.tokens", tokens, format!("must be between 2 and the window length {seqlen} (GA only)")));
            }
            if sc.windows == windows.len() && tokens == seqlen && sc.position_stride <= 1 {
                return Err(EvopError::config("screening", format!("{sc:?}"), "screens on everything: nothing is saved"));
            }
            if sc.finalists == 0 {
                return Err(EvopError::config("screening.finalists", 0, "at least one finalist"));
            }
            // Shortened windows: as many tokens per forward batch as at full length.
            let batch_size = (self.evaluator.batch_size * seqlen / tokens).max(1);
            let options = EvaluatorOptions { position_stride: sc.position_stride.max(1), batch_size, ..self.evaluator.clone() };
            if ga {
                let short: Vec<Vec<u32>> = windows.iter().map(|w| w[..tokens].to_vec()).collect();
                screen_fitness = Some(CalibrationFitness::new(lm.clone(), &short, groups, self.objective, options)?);
            } else {
                fitness = fitness.with_screen_options(options);
            }
        }
        let outcome = match (&screening, self.search.strategy) {
            (None, _) => self.search_on(&fitness, l)?,
            (Some(sc), StrategyKind::Ga) => {
                let (space, seeds) = self.space_and_seeds(l)?;
                let ga = self.ga()?;
                let inner = screen_fitness.as_ref().expect("built for the GA");
                let screened = AtFidelity { inner, fidelity: Fidelity(sc.windows as u64) };
                let mut outcome = self.configure(Search::new(space, ga), seeds).run(&screened)?;
                // The final population is sorted best first (screened values).
                let mut finalists: Vec<Mask> = Vec::new();
                for m in &outcome.population {
                    if finalists.len() < sc.finalists && !finalists.contains(m) {
                        finalists.push(m.clone());
                    }
                }
                let values = fitness.evaluate(&finalists, fitness.max_fidelity())?;
                let cost = |v: f64| evop_search::Direction::Minimize.cost(v);
                let best = (0..values.len()).min_by(|&a, &b| cost(values[a]).total_cmp(&cost(values[b]))).expect("at least one finalist");
                outcome.best = finalists[best].clone();
                outcome.best_value = values[best];
                outcome.evaluations += finalists.len() as u64;
                // Reported best first, at full fidelity.
                let mut order: Vec<usize> = (0..finalists.len()).collect();
                order.sort_by(|&a, &b| cost(values[a]).total_cmp(&cost(values[b])));
                outcome.population = order.iter().map(|&i| finalists[i].clone()).collect();
                outcome.values = order.iter().map(|&i| values[i]).collect();
                outcome
            }
            (Some(sc), StrategyKind::OnePlusLambda) => {
                let (space, seeds) = self.space_and_seeds(l)?;
                let es = OnePlusLambdaParams::new()
                    .lambda(self.search.population)
                    .screening([Screen { fidelity: Fidelity(sc.windows as u64), survivors: sc.finalists }]);
                self.configure(Search::new(space, es.check()?), seeds).run(&fitness)?
            }
        };
        let counts = match &screen_fitness {
            Some(sf) => {
                let (a, b) = (fitness.counts(), sf.counts());
                ForwardCounts {
                    block_forwards: a.block_forwards + b.block_forwards,
                    head_forwards: a.head_forwards + b.head_forwards,
                    candidates: a.candidates + b.candidates,
                }
            }
            None => fitness.counts(),
        };
        self.report(outcome, &fitness, counts, start.elapsed().as_secs_f64())
    }

    /// The unscreened search of [`SearchJob::run`] (strategy, seed masks, termination, checkpoint,
    /// observers) on any fitness over masks of `num_blocks` blocks: for callers that evaluate
    /// candidates elsewhere, such as the MPI work queue. The observers are consumed.
    pub fn search_on<F: Fitness>(&mut self, fitness: &F, num_blocks: usize) -> Result<evop_search::Outcome> {
        let (space, seeds) = self.space_and_seeds(num_blocks)?;
        Ok(match self.search.strategy {
            StrategyKind::Ga => {
                let ga = self.ga()?;
                self.configure(Search::new(space, ga), seeds).run(fitness)?
            }
            StrategyKind::OnePlusLambda => {
                let es = OnePlusLambdaParams::new().lambda(self.search.population).check()?;
                self.configure(Search::new(space, es), seeds).run(fitness)?
            }
        })
    }

    /// The report of a finished search: the best mask re-scored on `fitness` at full fidelity,
    /// with the given forward counts and search time.
    pub fn report(&self, outcome: evop_search::Outcome, fitness: &CalibrationFitness, counts: ForwardCounts, search_seconds: f64) -> Result<PruneReport> {
        let mask = CalibrationFitness::block_mask(&outcome.best);
        let (value, window_losses) = fitness.score_mask(&mask)?;
        let keep = self.search.screening.as_ref().map_or(4, |sc| sc.finalists);
        let mut finalists: Vec<(Vec<usize>, f64)> = Vec::new();
        for (m, v) in outcome.population.iter().zip(&outcome.values) {
            let removed: Vec<usize> = CalibrationFitness::block_mask(m).removed().collect();
            if finalists.len() < keep && !finalists.iter().any(|(r, _)| *r == removed) {
                finalists.push((removed, *v));
            }
        }
        Ok(PruneReport {
            removed: mask.removed().collect(),
            num_blocks: mask.num_blocks(),
            objective_value: value,
            objective: self.objective,
            window_losses,
            stop_reason: Some(outcome.reason),
            generations: outcome.generations,
            evaluations: outcome.evaluations,
            cache_hits: outcome.cache_hits,
            counts,
            history: outcome.history,
            finalists,
            calibration_seconds: 0.0,
            search_seconds,
        })
    }

    /// The GA of [`SearchSpec`] (population, immigrants, operators).
    fn ga(&self) -> Result<evop_search::Ga<Tournament, Box<dyn evop_search::Crossover>, Box<dyn evop_search::Mutation>>> {
        let ops = self.search.operators;
        let mut params =
            GaParams::new().population(self.search.population).init_near_seeds(self.search.init_near_seeds).crossover(ops.crossover()).mutation(ops.mutation());
        if let Some(f) = self.search.immigrants {
            params = params.immigrants(f);
        }
        Ok(params.check()?)
    }

    fn space_and_seeds(&self, num_blocks: usize) -> Result<(MaskSpace, Vec<Mask>)> {
        let protected: Vec<usize> = if self.search.protect_ends { vec![0, num_blocks - 1] } else { vec![] };
        let space = MaskSpace::new(num_blocks, self.remove, protected)?;
        let seeds = self.search.seed_masks.iter().map(|r| Mask::from_removed(&space, r)).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((space, seeds))
    }

    fn configure<St: evop_search::Strategy>(&mut self, search: Search<St>, seeds: Vec<Mask>) -> Search<St> {
        let mut s = search.seed(self.seed).seed_masks(seeds).memoize(self.search.memoize).until(Termination::MaxGenerations(self.search.generations));
        if let Some(n) = self.search.stalled {
            s = s.until(Termination::Stalled(n));
        }
        if let Some(b) = self.search.budget {
            s = s.until(Termination::Budget(b));
        }
        if let Some(flag) = &self.interrupt {
            s = s.until(Termination::Interrupted(flag.clone()));
        }
        if let Some(limit) = self.search.time_limit_s.filter(|t| t.is_finite() && *t >= 0.0) {
            // A timer raises the flag; the search stops after the generation it lands in.
            let flag = Arc::new(AtomicBool::new(false));
            let raise = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs_f64(limit));
                raise.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            s = s.until(Termination::Interrupted(flag));
        }
        if let Some((path, resume)) = &self.checkpoint {
            s = s.checkpoint(path.clone());
            if *resume && path.exists() {
                s = s.resume_from(path.clone());
            }
        }
        for o in self.observers.drain(..) {
            s = s.observer(BoxedObserver(o));
        }
        s
    }
}

/// Tokens in a row two windows must share to count as overlapping (see [`Overlap`]), at most.
const OVERLAP_RUN: usize = 16;

/// The windows a draw must not touch, by their token runs: a candidate window overlaps them when
/// it equals one, or shares a run of `run` consecutive tokens with one ([`OVERLAP_RUN`], or the
/// shortest excluded window's length if shorter), so a window of 256 tokens holding a 128-token
/// window a search read is left out too, wherever it sits.
struct Overlap<'a> {
    run: usize,
    whole: std::collections::HashSet<&'a [u32]>,
    runs: std::collections::HashSet<&'a [u32]>,
}

impl<'a> Overlap<'a> {
    fn new(exclude: &'a [Vec<u32>]) -> Self {
        let run = exclude.iter().map(Vec::len).filter(|&n| n > 0).min().unwrap_or(OVERLAP_RUN).min(OVERLAP_RUN);
        let whole = exclude.iter().map(|w| w.as_slice()).collect();
        let runs = exclude.iter().flat_map(|w| w.windows(run)).collect();
        Self { run, whole, runs }
    }

    fn touches(&self, window: &[u32]) -> bool {
        self.whole.contains(window) || window.windows(self.run).any(|r| self.runs.contains(r))
    }
}

/// Draws a calibration set from `pool` (see [`CalibrationSpec`]).
pub fn build_calibration(model: &LoadedModel, pool: &Corpus, spec: &CalibrationSpec, seed: u64) -> Result<CalibrationSet> {
    build_calibration_excluding(model, pool, spec, seed, &[])
}

/// [`build_calibration`] without the windows that equal or overlap one of `exclude` (share a
/// run of 16 tokens, or of the shortest excluded window's length, with one; e.g. windows another
/// search read, of any length).
pub fn build_calibration_excluding(model: &LoadedModel, pool: &Corpus, spec: &CalibrationSpec, seed: u64, exclude: &[Vec<u32>]) -> Result<CalibrationSet> {
    let tokenizer = model.tokenizer()?;
    let wopts = WindowOptions::new(spec.seqlen).boundary(evop_data::Boundary::AcrossDocuments);
    let mut windows: Vec<Window> = make_windows(pool, tokenizer, &wopts)?;
    if !exclude.is_empty() {
        let excluded = Overlap::new(exclude);
        // A padded window is checked with and without its padding; an unpadded one once.
        windows.retain(|w| !excluded.touches(w.real_ids()) && (w.n_tokens >= w.ids.len() || !excluded.touches(&w.ids)));
    }
    let candidates = match &spec.sampler {
        SamplerKind::Random => windows.len(),
        SamplerKind::Ccds { pool, .. } => (*pool).max(spec.windows),
    };
    if windows.len() > candidates {
        // A seeded subsample of candidate windows bounds the embedding cost.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_CA11);
        windows.shuffle(&mut rng);
        windows.truncate(candidates);
    }
    let sampler: Box<dyn Sampler> = match &spec.sampler {
        SamplerKind::Random => Box::new(RandomSampler { seed }),
        SamplerKind::Ccds { embedder, k, .. } => {
            let mut options = CcdsOptions::seeded(seed);
            if let Some(k) = k {
                options.kmeans.k = KChoice::Fixed(*k);
            }
            match embedder {
                EmbedderKind::MiniLm => {
                    let dir = evop_assets::AssetStore::from_env().minilm_dir()?;
                    let minilm = MiniLm::load(&dir, MiniLmOptions::default())?.with_window_tokenizer(tokenizer.clone());
                    Box::new(CcdsSampler::new(minilm, options))
                }
                EmbedderKind::Hidden { block } => {
                    Box::new(CcdsSampler::new(HiddenStateEmbedder::new(model.lm.clone(), *block)?, options))
                }
            }
        }
    };
    let name = format!("{}/calibration", pool.name);
    Ok(CalibrationSet::build(&windows, spec.windows, sampler.as_ref(), wopts, name)?)
}

/// A fitness seen at a lower full fidelity: a search run on it evaluates everything at `fidelity`.
struct AtFidelity<'f> {
    inner: &'f CalibrationFitness,
    fidelity: Fidelity,
}

impl Fitness for AtFidelity<'_> {
    type Error = evop_model::ModelError;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> std::result::Result<Vec<f64>, Self::Error> {
        self.inner.evaluate(masks, fidelity.min(self.fidelity))
    }
    fn max_fidelity(&self) -> Fidelity {
        self.fidelity
    }
}

/// Forwards to a boxed observer (the search takes observers by value).
struct BoxedObserver(Box<dyn Observer>);

impl Observer for BoxedObserver {
    fn observe(&mut self, report: &GenerationReport) -> std::result::Result<(), evop_search::BoxError> {
        self.0.observe(report)
    }
    fn finish(&mut self, reason: StopReason, last: &GenerationReport) -> std::result::Result<(), evop_search::BoxError> {
        self.0.finish(reason, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_finds_windows_of_other_lengths_that_hold_an_excluded_run() {
        let stream: Vec<u32> = (0..1024).collect();
        let read = vec![stream[128..256].to_vec(), stream[700..705].to_vec()];
        let o = Overlap::new(&read);
        // A 256-token window holding a 128-token window read, aligned or not.
        assert!(o.touches(&stream[0..256]));
        assert!(o.touches(&stream[100..356]));
        // Sharing a run of 16 tokens (the tail of the window read).
        assert!(o.touches(&stream[240..496]));
        // Sharing nothing.
        assert!(!o.touches(&stream[256..512]));
        // The run shrinks to the shortest window read (5 tokens here): holding it counts.
        assert!(o.touches(&stream[690..720]));
        assert!(!o.touches(&stream[701..720]));
        let long = vec![stream[128..256].to_vec()];
        let o = Overlap::new(&long);
        assert!(!o.touches(&stream[241..497]), "15 shared tokens are under the 16-token run");
    }
}
