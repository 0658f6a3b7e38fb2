//! The driver: [`Search`] collects the configuration (space, strategy, seed, termination, observers,
//! checkpoint) and [`Run`] owns the loop state. [`Search::run`] is `start` followed by `step` until a
//! criterion is met; callers who want to drive the loop themselves (a bench, a UI) use [`Search::start`]
//! and [`Run::step`] directly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{Checkpoint, RngState, FORMAT};
use crate::error::{Result, SearchError};
use crate::fitness::{Direction, Fitness};
use crate::mask::{Mask, MaskSpace};
use crate::memo::Memo;
use crate::observer::{diversity, GenerationReport, Observer};
use crate::strategy::{Context, Strategy};
use crate::termination::{Progress, StopReason, Termination};

/// A search configuration. Consumed by [`Search::run`] or [`Search::start`].
pub struct Search<St> {
    space: MaskSpace,
    strategy: St,
    seed: u64,
    direction: Direction,
    seeds: Vec<Mask>,
    termination: Vec<Termination>,
    observers: Vec<Box<dyn Observer>>,
    checkpoint: Option<PathBuf>,
    resume: Option<PathBuf>,
    memoize: bool,
}

/// The result of a finished run.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Best mask found (full fidelity).
    pub best: Mask,
    /// Its value (NaN or infinite only if every evaluation was).
    pub best_value: f64,
    /// Which criterion stopped the run.
    pub reason: StopReason,
    /// Generations run after initialisation.
    pub generations: u64,
    /// Masks evaluated by the fitness (any fidelity).
    pub evaluations: u64,
    /// Memo-cache hits.
    pub cache_hits: u64,
    /// Evaluations that returned NaN or an infinite value.
    pub non_finite: u64,
    /// The final population and its full-fidelity values.
    pub population: Vec<Mask>,
    pub values: Vec<f64>,
    /// One report per generation, generation 0 (initialisation) first.
    pub history: Vec<GenerationReport>,
}

impl<St: Strategy> Search<St> {
    /// A search of `space` with `strategy` (a checked [`crate::Ga`] or [`crate::OnePlusLambda`]).
    ///
    /// Defaults: seed 0, [`Direction::Minimize`], no seed masks, no observers, no checkpoint, and no
    /// termination criterion: add at least one with [`Search::until`].
    pub fn new(space: MaskSpace, strategy: St) -> Self {
        Search {
            space,
            strategy,
            seed: 0,
            direction: Direction::Minimize,
            seeds: Vec::new(),
            termination: Vec::new(),
            observers: Vec::new(),
            checkpoint: None,
            resume: None,
            memoize: true,
        }
    }

    /// Seeds the ChaCha8 RNG that all randomness comes from.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Minimise (default) or maximise.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Masks to put in the initial population (e.g. the answer of a one-shot baseline); checked against
    /// the space when the run starts.
    pub fn seed_masks(mut self, masks: impl IntoIterator<Item = Mask>) -> Self {
        self.seeds.extend(masks);
        self
    }

    /// Adds a stopping criterion; the run stops at the first one met (checked in the order added).
    pub fn until(mut self, criterion: Termination) -> Self {
        self.termination.push(criterion);
        self
    }

    /// Adds an observer.
    pub fn observer(mut self, observer: impl Observer + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// Answer masks evaluated before from the memo cache (the default). `false` evaluates every mask
    /// the strategy asks for, repeats included, as the reference search loops do: for measuring the
    /// cache's saving. With a deterministic fitness the run is the same either way.
    pub fn memoize(mut self, on: bool) -> Self {
        self.memoize = on;
        self
    }

    /// Writes a checkpoint to `path` after every generation.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Continues from the checkpoint at `path` instead of initialising; fails if it was written by another
    /// configuration. Termination criteria and observers are this run's own.
    pub fn resume_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.resume = Some(path.into());
        self
    }

    fn fingerprint(&self, max_fidelity: u64) -> Vec<(String, String)> {
        let mut f = vec![
            ("space.len".to_string(), self.space.len().to_string()),
            ("space.n_removed".to_string(), self.space.n_removed().to_string()),
            ("space.protected".to_string(), format!("{:?}", self.space.protected())),
            ("seed".to_string(), self.seed.to_string()),
            ("direction".to_string(), format!("{:?}", self.direction)),
            ("max_fidelity".to_string(), max_fidelity.to_string()),
            ("strategy".to_string(), self.strategy.name().to_string()),
        ];
        if !self.memoize {
            f.push(("memoize".to_string(), "false".to_string()));
        }
        f.extend(self.strategy.params().into_iter().map(|(k, v)| (format!("{}.{k}", self.strategy.name()), v)));
        f
    }

    /// Initialises (or resumes) a run without stepping it. Initialisation evaluates the first population
    /// and reports it as generation 0.
    pub fn start<F: Fitness + ?Sized>(self, fitness: &F) -> Result<Run<'_, St, F>> {
        if self.termination.is_empty() {
            return Err(SearchError::NoTermination);
        }
        self.strategy.validate(fitness.max_fidelity())?;
        for m in &self.seeds {
            self.space.check(m)?;
        }
        let fingerprint = self.fingerprint(fitness.max_fidelity().0);
        let started = Instant::now();
        if let Some(path) = &self.resume {
            let ck: Checkpoint<St::State> = Checkpoint::read(path, &fingerprint)?;
            let (pop, vals) = self.strategy.population(&ck.state);
            if pop.is_empty() || pop.len() != vals.len() {
                return Err(SearchError::CheckpointCorrupt("population and values disagree".into()));
            }
            for m in pop.iter().chain(std::iter::once(&ck.best)) {
                self.space.check(m).map_err(|e| SearchError::CheckpointCorrupt(format!("illegal mask: {e}")))?;
            }
            let memo = Memo::restore(ck.memo, !self.memoize);
            if let Some(m) = memo.masks().find(|m| self.space.check(m).is_err()) {
                return Err(SearchError::CheckpointCorrupt(format!("illegal cached mask {m}")));
            }
            return Ok(Run {
                rng: ck.rng.restore()?,
                memo,
                state: ck.state,
                history: ck.history,
                generation: ck.generation,
                best: (ck.best, f64::from_bits(ck.best_bits)),
                last_improvement: ck.last_improvement,
                elapsed_before: ck.elapsed,
                started,
                fingerprint,
                fitness,
                search: self,
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut memo = if self.memoize { Memo::default() } else { Memo::recomputing() };
        let state = {
            let mut ctx = Context { space: &self.space, fitness, memo: &mut memo, rng: &mut rng, direction: self.direction };
            self.strategy.init(&self.seeds, &mut ctx)?
        };
        let (pop, vals) = self.strategy.population(&state);
        let best = (pop[0].clone(), vals[0]);
        let mut run = Run {
            rng,
            memo,
            state,
            history: Vec::new(),
            generation: 0,
            best,
            last_improvement: 0,
            elapsed_before: Duration::ZERO,
            started,
            fingerprint,
            fitness,
            search: self,
        };
        run.after_generation()?;
        Ok(run)
    }

    /// Runs until a termination criterion is met.
    pub fn run<F: Fitness + ?Sized>(self, fitness: &F) -> Result<Outcome> {
        let mut run = self.start(fitness)?;
        loop {
            if let Some(reason) = run.stop_reason() {
                return run.finish(reason);
            }
            run.step()?;
        }
    }
}

/// A run in progress: the strategy state plus the RNG, memo cache, history and best-so-far.
pub struct Run<'f, St: Strategy, F: ?Sized> {
    search: Search<St>,
    fitness: &'f F,
    fingerprint: Vec<(String, String)>,
    state: St::State,
    rng: ChaCha8Rng,
    memo: Memo,
    history: Vec<GenerationReport>,
    generation: u64,
    best: (Mask, f64),
    last_improvement: u64,
    elapsed_before: Duration,
    started: Instant,
}

impl<St: Strategy, F: Fitness + ?Sized> Run<'_, St, F> {
    /// Runs one generation, then updates the best-so-far, writes the checkpoint and informs observers.
    pub fn step(&mut self) -> Result<&GenerationReport> {
        let s = &self.search;
        let mut ctx = Context { space: &s.space, fitness: self.fitness, memo: &mut self.memo, rng: &mut self.rng, direction: s.direction };
        s.strategy.step(&mut self.state, &mut ctx)?;
        self.generation += 1;
        self.after_generation()
    }

    fn after_generation(&mut self) -> Result<&GenerationReport> {
        let s = &self.search;
        let (pop, vals) = s.strategy.population(&self.state);
        for (m, &v) in pop.iter().zip(vals) {
            if s.direction.is_better(v, self.best.1) {
                self.best = (m.clone(), v);
                self.last_improvement = self.generation;
            }
        }
        let (population_best, mean, worst, non_finite) = GenerationReport::population_stats(vals, s.direction);
        let (div, unique) = diversity(&s.space, pop);
        let report = GenerationReport {
            generation: self.generation,
            best: self.best.1.is_finite().then_some(self.best.1),
            best_mask: self.best.0.clone(),
            population_best,
            mean,
            worst,
            non_finite,
            diversity: div,
            unique,
            evaluations: self.memo.evaluations(),
            cache_hits: self.memo.hits(),
            elapsed_s: self.elapsed().as_secs_f64(),
        };
        tracing::debug!(generation = report.generation, best = ?report.best, evaluations = report.evaluations, "generation done");
        self.history.push(report);
        if let Some(path) = &self.search.checkpoint {
            self.checkpoint_now().write(path)?;
        }
        let report = self.history.last().expect("just pushed");
        for o in &mut self.search.observers {
            o.observe(report).map_err(SearchError::Observer)?;
        }
        Ok(report)
    }

    fn checkpoint_now(&self) -> Checkpoint<St::State> {
        Checkpoint {
            format: FORMAT,
            fingerprint: self.fingerprint.clone(),
            generation: self.generation,
            rng: RngState::capture(&self.rng),
            state: self.state.clone(),
            memo: self.memo.snapshot(),
            history: self.history.clone(),
            best: self.best.0.clone(),
            best_bits: self.best.1.to_bits(),
            last_improvement: self.last_improvement,
            elapsed: self.elapsed(),
        }
    }

    /// Cumulative wall time, including runs this one resumed from.
    pub fn elapsed(&self) -> Duration {
        self.elapsed_before + self.started.elapsed()
    }

    /// The first termination criterion met now, if any.
    pub fn stop_reason(&self) -> Option<StopReason> {
        let p = Progress {
            generation: self.generation,
            evaluations: self.memo.evaluations(),
            since_improvement: self.generation - self.last_improvement,
            elapsed: self.elapsed(),
            best: self.best.1,
            direction: self.search.direction,
        };
        self.search.termination.iter().find_map(|t| t.check(&p))
    }

    /// Generations run after initialisation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The best mask so far and its value.
    pub fn best(&self) -> (&Mask, f64) {
        (&self.best.0, self.best.1)
    }

    /// The reports so far.
    pub fn history(&self) -> &[GenerationReport] {
        &self.history
    }

    /// The memo cache.
    pub fn memo(&self) -> &Memo {
        &self.memo
    }

    /// The strategy's state.
    pub fn state(&self) -> &St::State {
        &self.state
    }

    /// Ends the run: tells the observers, returns the outcome.
    pub fn finish(mut self, reason: StopReason) -> Result<Outcome> {
        if let Some(last) = self.history.last() {
            for o in &mut self.search.observers {
                o.finish(reason, last).map_err(SearchError::Observer)?;
            }
        }
        let (pop, vals) = self.search.strategy.population(&self.state);
        Ok(Outcome {
            best: self.best.0,
            best_value: self.best.1,
            reason,
            generations: self.generation,
            evaluations: self.memo.evaluations(),
            cache_hits: self.memo.hits(),
            non_finite: self.memo.non_finite(),
            population: pop.to_vec(),
            values: vals.to_vec(),
            history: self.history,
        })
    }
}
