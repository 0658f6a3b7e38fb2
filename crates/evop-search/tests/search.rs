//! End-to-end properties of the driver: resume == uninterrupted, thread-count independence, checkpoint
//! fingerprints, memo guarantees, NaN handling, directions, termination, observers, and that the GA finds a
//! known optimum.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use evop_search::synthetic::PairwiseCost;
use evop_search::*;
use evop_search::Strategy as SearchStrategy;
use proptest::prelude::*;

fn space() -> MaskSpace {
    MaskSpace::new(20, 5, [0, 19]).unwrap()
}

fn ga() -> Ga {
    GaParams::new().population(12).check().unwrap()
}

fn opl() -> OnePlusLambda {
    OnePlusLambdaParams::new()
        .lambda(8)
        .initial(6)
        .screening([Screen { fidelity: Fidelity(1), survivors: 4 }, Screen { fidelity: Fidelity(4), survivors: 2 }])
        .check()
        .unwrap()
}

fn noisy() -> PairwiseCost {
    PairwiseCost::random(20, 11).with_fidelity_noise(16, 0.3)
}

/// The outcome with wall-clock times zeroed, for exact comparisons.
fn strip(mut o: Outcome) -> Outcome {
    for r in &mut o.history {
        r.elapsed_s = 0.0;
    }
    o
}

fn run_to<St: SearchStrategy + Clone>(st: &St, f: &PairwiseCost, seed: u64, gens: u64, ck: Option<&Path>, resume: bool) -> Outcome {
    let mut s = Search::new(space(), st.clone()).seed(seed).until(Termination::MaxGenerations(gens));
    if let Some(p) = ck {
        s = s.checkpoint(p);
        if resume {
            s = s.resume_from(p);
        }
    }
    strip(s.run(f).unwrap())
}

fn resume_equals_uninterrupted<St: SearchStrategy + Clone>(st: &St, seed: u64, cut: u64) {
    let f = noisy();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("run.json");
    let full = run_to(st, &f, seed, 12, None, false);
    let first = run_to(st, &f, seed, cut, Some(&ck), false);
    assert_eq!(first.generations, cut);
    let resumed = run_to(st, &f, seed, 12, Some(&ck), true);
    assert_eq!(resumed, full);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn ga_resume_equals_uninterrupted(seed: u64, cut in 0u64..12) {
        resume_equals_uninterrupted(&ga(), seed, cut);
    }

    #[test]
    fn one_plus_lambda_resume_equals_uninterrupted(seed: u64, cut in 0u64..12) {
        resume_equals_uninterrupted(&opl(), seed, cut);
    }

    #[test]
    fn results_do_not_depend_on_thread_count(seed: u64) {
        let p = noisy();
        let per_mask = |m: &Mask, f: Fidelity| Ok::<_, Infallible>(p.evaluate(std::slice::from_ref(m), f).unwrap()[0]);
        let reference = strip(Search::new(space(), ga()).seed(seed).until(Termination::MaxGenerations(8)).run(&p).unwrap());
        for threads in [1, 4] {
            let pf = ParallelFitness::new(threads, per_mask).unwrap().max_fidelity(Fidelity(16));
            let o = strip(Search::new(space(), ga()).seed(seed).until(Termination::MaxGenerations(8)).run(&pf).unwrap());
            prop_assert_eq!(&o, &reference);
        }
        let pool = WorkerPool::new(vec![p.clone(), p.clone(), p.clone()]).unwrap();
        let o = strip(Search::new(space(), ga()).seed(seed).until(Termination::MaxGenerations(8)).run(&pool).unwrap());
        prop_assert_eq!(&o, &reference);
        // The (1+lambda) EA too, with multi-step selection spread over workers.
        let a = strip(Search::new(space(), opl()).seed(seed).until(Termination::MaxGenerations(8)).run(&p).unwrap());
        let b = strip(Search::new(space(), opl()).seed(seed).until(Termination::MaxGenerations(8)).run(&pool).unwrap());
        prop_assert_eq!(a, b);
    }
}

#[test]
fn different_seeds_give_different_trajectories() {
    let f = noisy();
    let a = run_to(&ga(), &f, 1, 5, None, false);
    let b = run_to(&ga(), &f, 2, 5, None, false);
    assert_ne!(a.history, b.history);
}

#[test]
fn interrupted_run_resumes_exactly() {
    let f = noisy();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.json");
    let full = run_to(&ga(), &f, 7, 10, None, false);
    let flag = Arc::new(AtomicBool::new(false));
    let setter = flag.clone();
    let out = Search::new(space(), ga())
        .seed(7)
        .until(Termination::MaxGenerations(10))
        .until(Termination::Interrupted(flag))
        .observer(FnObserver(move |r: &GenerationReport| {
            if r.generation == 4 {
                setter.store(true, Ordering::SeqCst); // as a Ctrl-C handler would
            }
        }))
        .checkpoint(&ck)
        .run(&f)
        .unwrap();
    assert_eq!((out.reason, out.generations), (StopReason::Interrupted, 4));
    let resumed = run_to(&ga(), &f, 7, 10, Some(&ck), true);
    assert_eq!(resumed, full);
}

#[test]
fn checkpoint_of_another_configuration_is_rejected() {
    let f = noisy();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck.json");
    run_to(&ga(), &f, 3, 2, Some(&ck), false);
    let mismatch = |s: Search<Ga>| match s.until(Termination::MaxGenerations(5)).resume_from(&ck).run(&f) {
        Err(SearchError::CheckpointMismatch { key, .. }) => key,
        other => panic!("expected a mismatch, got {other:?}"),
    };
    assert_eq!(mismatch(Search::new(space(), ga()).seed(4)), "seed");
    assert_eq!(mismatch(Search::new(MaskSpace::new(20, 6, [0, 19]).unwrap(), ga()).seed(3)), "space.n_removed");
    assert_eq!(mismatch(Search::new(MaskSpace::new(21, 5, [0, 19]).unwrap(), ga()).seed(3)), "space.len");
    assert_eq!(mismatch(Search::new(MaskSpace::new(20, 5, [0]).unwrap(), ga()).seed(3)), "space.protected");
    assert_eq!(mismatch(Search::new(space(), GaParams::new().population(13).check().unwrap()).seed(3)), "ga.population");
    assert_eq!(mismatch(Search::new(space(), GaParams::new().population(12).elites(1).check().unwrap()).seed(3)), "ga.elites");
    assert_eq!(
        mismatch(Search::new(space(), ga()).seed(3).direction(Direction::Maximize)),
        "direction"
    );
    match Search::new(space(), opl()).seed(3).until(Termination::MaxGenerations(5)).resume_from(&ck).run(&f) {
        Err(SearchError::CheckpointMismatch { key, .. }) => assert_eq!(key, "strategy"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // The same configuration resumes.
    assert!(Search::new(space(), ga()).seed(3).until(Termination::MaxGenerations(5)).resume_from(&ck).run(&f).is_ok());
    // A missing or garbled file is an error too.
    std::fs::write(&ck, "{").unwrap();
    assert!(matches!(
        Search::new(space(), ga()).seed(3).until(Termination::MaxGenerations(5)).resume_from(&ck).run(&f),
        Err(SearchError::CheckpointFormat { .. })
    ));
    assert!(matches!(
        Search::new(space(), ga()).seed(3).until(Termination::MaxGenerations(5)).resume_from(dir.path().join("nope")).run(&f),
        Err(SearchError::Io { .. })
    ));
}

/// Records every (mask, fidelity) the fitness sees.
struct Recording {
    inner: PairwiseCost,
    seen: Mutex<Vec<(Mask, Fidelity)>>,
}

impl Fitness for Recording {
    type Error = Infallible;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, Infallible> {
        self.seen.lock().unwrap().extend(masks.iter().map(|m| (m.clone(), fidelity)));
        self.inner.evaluate(masks, fidelity)
    }
    fn max_fidelity(&self) -> Fidelity {
        self.inner.max_fidelity()
    }
}

#[test]
fn no_mask_is_evaluated_twice_at_a_fidelity() {
    for strategy in ["ga", "opl"] {
        let f = Recording { inner: noisy(), seen: Mutex::new(Vec::new()) };
        let search = |s| Search::new(MaskSpace::new(8, 2, []).unwrap(), s).until(Termination::MaxGenerations(30));
        let out = if strategy == "ga" {
            search(GaParams::new().population(12).check().unwrap()).run(&f).unwrap()
        } else {
            let o = OnePlusLambdaParams::new().lambda(6).screening([Screen { fidelity: Fidelity(2), survivors: 3 }]).check().unwrap();
            Search::new(MaskSpace::new(8, 2, []).unwrap(), o).until(Termination::MaxGenerations(30)).run(&f).unwrap()
        };
        let seen = f.seen.into_inner().unwrap();
        let distinct: HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(distinct.len(), seen.len(), "{strategy}: a mask was evaluated twice");
        assert_eq!(out.evaluations, seen.len() as u64);
        assert!(out.cache_hits > 0, "{strategy}: a space of 28 masks must produce cache hits");
    }
}

#[test]
fn multi_step_selection_evaluates_the_schedule() {
    let f = Recording { inner: noisy(), seen: Mutex::new(Vec::new()) };
    let out = Search::new(space(), opl()).seed(5).until(Termination::MaxGenerations(1)).run(&f).unwrap();
    let seen = f.seen.into_inner().unwrap();
    let count = |fid: u64| seen.iter().filter(|(_, f)| f.0 == fid).count();
    // 6 initial candidates at full fidelity; then 8 offspring at 1, 4 survivors at 4, 2 at full (16).
    assert_eq!((count(1), count(4), count(16)), (8, 4, 6 + 2));
    assert_eq!(out.evaluations, 20);
    // The parent is replaced only by a better child at full fidelity.
    let p = noisy();
    for w in out.history.windows(2) {
        assert!(w[1].best.unwrap() <= w[0].best.unwrap());
    }
    assert_eq!(p.cost(&out.best), out.best_value);
}

#[test]
fn non_finite_values_rank_worst_and_are_reported() {
    let p = PairwiseCost::random(20, 2);
    // Masks removing block 5 "diverge".
    let f = BatchFitness::new(|ms: &[Mask], _| {
        Ok::<_, Infallible>(ms.iter().map(|m| if m.is_removed(5) { f64::NAN } else { p.cost(m) }).collect())
    });
    for dir in [Direction::Minimize, Direction::Maximize] {
        let out = Search::new(space(), ga()).seed(1).direction(dir).until(Termination::MaxGenerations(20)).run(&f).unwrap();
        assert!(!out.best.is_removed(5));
        assert!(out.best_value.is_finite());
        assert!(out.non_finite > 0);
        assert!(out.history.iter().any(|r| r.non_finite > 0));
    }
}

#[test]
fn direction_is_respected() {
    let space = MaskSpace::new(10, 3, []).unwrap();
    let f = FnFitness(|m: &Mask| m.removed().sum::<usize>() as f64);
    let run = |d| Search::new(space.clone(), GaParams::new().population(10).check().unwrap()).direction(d).until(Termination::MaxGenerations(40)).run(&f).unwrap();
    assert_eq!(run(Direction::Minimize).best.removed().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(run(Direction::Maximize).best.removed().collect::<Vec<_>>(), vec![7, 8, 9]);
}

#[test]
fn seed_masks_enter_the_first_population() {
    let p = PairwiseCost::random(20, 9);
    let s = space();
    let (opt, cost) = p.optimum(&s);
    for out in [
        Search::new(s.clone(), ga()).seed_masks([opt.clone()]).until(Termination::MaxGenerations(0)).run(&p).unwrap(),
        Search::new(s.clone(), opl()).seed_masks([opt.clone()]).until(Termination::MaxGenerations(0)).run(&p).unwrap(),
    ] {
        assert_eq!((out.best, out.best_value, out.generations), (opt.clone(), cost, 0));
    }
    let other = Mask::from_removed(&MaskSpace::new(20, 5, []).unwrap(), &[0, 1, 2, 3, 4]).unwrap();
    assert!(matches!(
        Search::new(s, ga()).seed_masks([other]).until(Termination::MaxGenerations(1)).run(&p),
        Err(SearchError::ProtectedRemoved { index: 0 })
    ));
}

#[test]
fn near_seed_initialisation_starts_in_the_seeds_neighbourhood() {
    use rand::SeedableRng;
    let p = PairwiseCost::random(20, 9);
    let s = space();
    let seed = s.sample(&mut rand::rngs::StdRng::seed_from_u64(5));
    let first = |near: bool| {
        let ga = GaParams::new().population(16).init_near_seeds(near).check().unwrap();
        Search::new(s.clone(), ga).seed(3).seed_masks([seed.clone()]).until(Termination::MaxGenerations(0)).run(&p).unwrap().population
    };
    let near = first(true);
    assert_eq!(near.len(), 16);
    assert_eq!(near.iter().collect::<HashSet<_>>().len(), 16, "distinct members");
    assert!(near.contains(&seed));
    // One mutation of the default swap operator makes at most 3 swaps (6 bits), plus up to 8
    // duplicate retries in the worst case: every member stays far closer than a random mask.
    let far = |pop: &[Mask]| pop.iter().map(|m| m.hamming(&seed)).max().unwrap();
    assert!(near.iter().filter(|m| m.hamming(&seed) <= 6).count() >= 12, "{:?}", near.iter().map(|m| m.hamming(&seed)).collect::<Vec<_>>());
    assert!(far(&first(false)) > far(&near), "random initialisation reaches further");
    // Without seed masks the option changes nothing.
    let unseeded = |near: bool| {
        let ga = GaParams::new().population(16).init_near_seeds(near).check().unwrap();
        Search::new(s.clone(), ga).seed(3).until(Termination::MaxGenerations(0)).run(&p).unwrap().population
    };
    assert_eq!(unseeded(true), unseeded(false));
}

#[test]
fn termination_criteria_stop_the_run() {
    let p = PairwiseCost::random(20, 1);
    let base = || Search::new(space(), ga()).seed(2);
    assert!(matches!(base().run(&p), Err(SearchError::NoTermination)));
    let o = base().until(Termination::Budget(100)).run(&p).unwrap();
    assert_eq!(o.reason, StopReason::Budget);
    assert!(o.evaluations >= 100 && o.evaluations < 100 + 12);
    let o = base().until(Termination::Stalled(3)).until(Termination::MaxGenerations(1000)).run(&p).unwrap();
    assert_eq!(o.reason, StopReason::Stalled);
    let last_gain = o.history.iter().rposition(|r| r.generation == 0 || r.best < o.history[r.generation as usize - 1].best).unwrap();
    assert_eq!(o.generations, last_gain as u64 + 3);
    let (_, cost) = p.optimum(&space());
    let o = base().until(Termination::TargetReached(cost + 0.5)).until(Termination::MaxGenerations(1000)).run(&p).unwrap();
    assert_eq!(o.reason, StopReason::TargetReached);
    assert!(o.best_value <= cost + 0.5);
    let o = base().until(Termination::WallTime(std::time::Duration::ZERO)).run(&p).unwrap();
    assert_eq!((o.reason, o.generations), (StopReason::WallTime, 0));
}

#[test]
fn errors_from_fitness_and_operators_surface() {
    #[derive(Debug, thiserror::Error)]
    #[error("out of memory")]
    struct Oom;
    let f = BatchFitness::new(|_: &[Mask], _| Err::<Vec<f64>, _>(Oom));
    match Search::new(space(), ga()).until(Termination::MaxGenerations(1)).run(&f) {
        Err(SearchError::Fitness(e)) => assert_eq!(e.to_string(), "out of memory"),
        other => panic!("{other:?}"),
    }
    // A mutation that breaks the constraint is caught before the fitness sees its mask.
    #[derive(Debug)]
    struct Broken;
    impl Mutation for Broken {
        fn mutate(&self, _: &MaskSpace, m: &mut Mask, _: &mut dyn rand::RngCore) {
            *m = Mask::from_removed(&MaskSpace::new(20, 6, []).unwrap(), &[1, 2, 3, 4, 5, 6]).unwrap();
        }
    }
    let bad = GaParams::new().population(8).mutation(Broken).check().unwrap();
    let p = PairwiseCost::random(20, 1);
    assert!(matches!(
        Search::new(space(), bad).until(Termination::MaxGenerations(1)).run(&p),
        Err(SearchError::WrongRemovedCount { expected: 5, found: 6 })
    ));
    // An observer's error stops the run.
    struct Failing;
    impl Observer for Failing {
        fn observe(&mut self, _: &GenerationReport) -> Result<(), BoxError> {
            Err("disk full".into())
        }
    }
    assert!(matches!(
        Search::new(space(), ga()).observer(Failing).until(Termination::MaxGenerations(1)).run(&p),
        Err(SearchError::Observer(_))
    ));
    // A fidelity schedule that reaches the fitness's maximum is refused.
    let o = OnePlusLambdaParams::new().lambda(4).screening([Screen { fidelity: Fidelity(16), survivors: 2 }]).check().unwrap();
    assert!(matches!(
        Search::new(space(), o).until(Termination::MaxGenerations(1)).run(&noisy()),
        Err(SearchError::ScheduleFidelity { step: 0, .. })
    ));
}

#[test]
fn jsonl_history_matches_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let p = PairwiseCost::random(20, 4);
    let out = Search::new(space(), ga()).seed(9).observer(JsonlHistory::create(&path).unwrap()).until(Termination::MaxGenerations(6)).run(&p).unwrap();
    let read = JsonlHistory::read(&path).unwrap();
    assert_eq!(read, out.history);
    assert_eq!(read.len(), 7);
    let r = &read[6];
    assert_eq!(r.generation, 6);
    assert!(r.population_best.unwrap() <= r.mean.unwrap() && r.mean.unwrap() <= r.worst.unwrap());
    assert!(r.diversity > 0.0 && r.diversity <= 1.0);
    assert!(r.unique <= 12 && r.unique > 1);
    assert_eq!(r.best, Some(out.best_value));
}

#[test]
fn ga_finds_the_optimum_of_a_small_problem() {
    // L = 16, n = 4: C(16, 4) = 1820 masks. Every seed must find the optimum within the budget (uniform
    // random sampling would miss it with probability 0.58 at 1000 draws and 0.33 at 2000, per seed).
    let space = MaskSpace::new(16, 4, []).unwrap();
    for (k, p, budget) in [(0, PairwiseCost::random(16, 21), 1000), (1, PairwiseCost::deceptive(16, 22), 2000)] {
        let (opt, cost) = p.optimum(&space);
        for seed in 0..10 {
            let out = Search::new(space.clone(), GaParams::new().check().unwrap())
                .seed(seed)
                .until(Termination::TargetReached(cost))
                .until(Termination::Budget(budget))
                .run(&p)
                .unwrap();
            assert_eq!(out.best, opt, "problem {k}, seed {seed}: stopped by {:?} after {} evaluations", out.reason, out.evaluations);
        }
    }
}

#[test]
fn without_the_memo_every_request_is_evaluated_and_the_run_is_the_same() {
    for strategy in ["ga", "opl"] {
        let f = Recording { inner: noisy(), seen: Mutex::new(Vec::new()) };
        let run = |memoize: bool, f: &Recording| {
            let space = MaskSpace::new(8, 2, []).unwrap();
            if strategy == "ga" {
                let ga = GaParams::new().population(12).check().unwrap();
                Search::new(space, ga).seed(7).memoize(memoize).until(Termination::MaxGenerations(30)).run(f).unwrap()
            } else {
                let o = OnePlusLambdaParams::new().lambda(6).screening([Screen { fidelity: Fidelity(2), survivors: 3 }]).check().unwrap();
                Search::new(space, o).seed(7).memoize(memoize).until(Termination::MaxGenerations(30)).run(f).unwrap()
            }
        };
        let cached = strip(run(true, &f));
        let g = Recording { inner: noisy(), seen: Mutex::new(Vec::new()) };
        let recomputed = strip(run(false, &g));
        // Every request reaches the fitness: what the cache answered is evaluated again.
        assert!(cached.cache_hits > 0, "{strategy}");
        assert_eq!(recomputed.cache_hits, 0, "{strategy}");
        assert_eq!(recomputed.evaluations, cached.evaluations + cached.cache_hits, "{strategy}");
        assert_eq!(g.seen.into_inner().unwrap().len() as u64, recomputed.evaluations, "{strategy}");
        // And nothing else changes.
        assert_eq!((&recomputed.best, recomputed.best_value.to_bits()), (&cached.best, cached.best_value.to_bits()), "{strategy}");
        assert_eq!((&recomputed.population, recomputed.generations), (&cached.population, cached.generations), "{strategy}");
        let bests = |o: &Outcome| o.history.iter().map(|r| r.best.map(f64::to_bits)).collect::<Vec<_>>();
        assert_eq!(bests(&recomputed), bests(&cached), "{strategy}");
    }
}
