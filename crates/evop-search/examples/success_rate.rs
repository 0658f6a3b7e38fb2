//! Success rate of the GA (EPPS) and the (1+lambda) EA on synthetic problems with a known optimum.
//!
//! L = 32 blocks, n = 8 removed (C(32, 8) = 10.5 M masks), two problems: additive costs plus pairwise
//! interactions, and the deceptive variant (see `evop_search::synthetic`). The true optimum comes from
//! exhaustive enumeration. Each strategy runs from `SEEDS` seeds until it reaches the optimum or spends
//! `MAX_BUDGET` evaluations; the table gives the fraction of seeds that reached the optimum within each
//! budget, and the median number of evaluations needed.
//!
//! ```text
//! cargo run --release -p evop-search --example success_rate [-- SEEDS]
//! ```
//!
//! The (1+lambda) EA with multi-step selection runs on the same problem with fidelity noise (exact at full
//! fidelity 16, noisy below); its cost is also given in full-evaluation equivalents (an evaluation at
//! fidelity f costs f / 16).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use evop_search::synthetic::PairwiseCost;
use evop_search::{
    Fidelity, Fitness, GaParams, Mask, OnePointCrossover, ShiftMutation, MaskSpace, OnePlusLambdaParams, Screen, Search, StopReason, Strategy, Termination,
};
use rayon::prelude::*;

const L: usize = 32;
const N: usize = 8;
const MAX_BUDGET: u64 = 20_000;
const BUDGETS: [u64; 5] = [1_000, 2_000, 4_000, 8_000, 20_000];
const MAX_FIDELITY: u64 = 16;

/// Counts fitness cost in full-evaluation equivalents (fidelity / max per mask).
struct Costed<'a> {
    inner: &'a PairwiseCost,
    units: AtomicU64,
}

impl Fitness for Costed<'_> {
    type Error = std::convert::Infallible;
    fn evaluate(&self, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>, Self::Error> {
        self.units.fetch_add(masks.len() as u64 * fidelity.0.min(MAX_FIDELITY), Ordering::Relaxed);
        self.inner.evaluate(masks, fidelity)
    }
    fn max_fidelity(&self) -> Fidelity {
        self.inner.max_fidelity()
    }
}

struct Trial {
    hit: bool,
    evaluations: u64,
    full_equivalents: f64,
}

fn trials<St: Strategy + Clone + Sync>(strategy: &St, problem: &PairwiseCost, space: &MaskSpace, opt: &(Mask, f64), seeds: u64) -> Vec<Trial> {
    (0..seeds)
        .into_par_iter()
        .map(|seed| {
            let f = Costed { inner: problem, units: AtomicU64::new(0) };
            let out = Search::new(space.clone(), strategy.clone())
                .seed(seed)
                .until(Termination::TargetReached(opt.1))
                .until(Termination::Budget(MAX_BUDGET))
                .run(&f)
                .expect("synthetic fitness never fails");
            Trial {
                hit: out.reason == StopReason::TargetReached && out.best == opt.0,
                evaluations: out.evaluations,
                full_equivalents: f.units.load(Ordering::Relaxed) as f64 / MAX_FIDELITY as f64,
            }
        })
        .collect()
}

fn report(name: &str, t: &[Trial]) {
    let rate = |b: u64| t.iter().filter(|x| x.hit && x.evaluations <= b).count() as f64 / t.len() as f64 * 100.0;
    let mut hits: Vec<u64> = t.iter().filter(|x| x.hit).map(|x| x.evaluations).collect();
    hits.sort_unstable();
    let median = hits.get(hits.len() / 2).map_or("-".to_string(), |m| m.to_string());
    let mut eq: Vec<f64> = t.iter().filter(|x| x.hit).map(|x| x.full_equivalents).collect();
    eq.sort_by(f64::total_cmp);
    let median_eq = eq.get(eq.len() / 2).map_or("-".to_string(), |m| format!("{m:.0}"));
    let cols: Vec<String> = BUDGETS.iter().map(|&b| format!("{:5.0}%", rate(b))).collect();
    println!("| {name:<34} | {} | {median:>6} | {median_eq:>6} |", cols.join(" | "));
}

fn main() {
    let seeds: u64 = std::env::args().nth(1).map_or(100, |s| s.parse().expect("SEEDS must be a number"));
    let space = MaskSpace::new(L, N, []).expect("valid space");
    let ga = GaParams::new().check().expect("valid GA parameters");
    let ga_block_order = GaParams::new().crossover(OnePointCrossover).mutation(ShiftMutation::default()).check().expect("valid GA parameters");
    let opl = OnePlusLambdaParams::new().check().expect("valid (1+lambda) parameters");
    let opl_ms = OnePlusLambdaParams::new()
        .lambda(32)
        .screening([Screen { fidelity: Fidelity(1), survivors: 8 }, Screen { fidelity: Fidelity(4), survivors: 2 }])
        .check()
        .expect("valid (1+lambda) parameters");
    println!("L = {L}, n = {N}, {seeds} seeds, evaluations budget cap {MAX_BUDGET}; success = optimum reached within the budget\n");
    for (pname, problem) in [("additive + pairwise", PairwiseCost::random(L, 2025)), ("deceptive", PairwiseCost::deceptive(L, 2025))] {
        let t0 = Instant::now();
        let opt = problem.optimum(&space);
        println!("### {pname}: optimum {:.4} at {:?} (exhaustive enumeration, {:.1} s)\n", opt.1, opt.0.removed().collect::<Vec<_>>(), t0.elapsed().as_secs_f64());
        let header: Vec<String> = BUDGETS.iter().map(|b| format!("{b:>6}")).collect();
        println!("| {:<34} | {} | median | med.eq |", "strategy / success within budget", header.join(" | "));
        println!("|{}|", ["---"; 8].join("|"));
        report("GA (defaults, pop 32)", &trials(&ga, &problem, &space, &opt, seeds));
        report("GA, block-order operators", &trials(&ga_block_order, &problem, &space, &opt, seeds));
        report("(1+16) EA", &trials(&opl, &problem, &space, &opt, seeds));
        let noisy = problem.clone().with_fidelity_noise(MAX_FIDELITY, 0.1);
        report("(1+32) EA, multi-step 1/4/16", &trials(&opl_ms, &noisy, &space, &opt, seeds));
        println!();
    }
}
