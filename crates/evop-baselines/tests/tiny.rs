//! Every method on the tiny random-weight fixtures of evop-model (4 blocks): invariants, errors,
//! SLEB against a naive re-implementation, and the exhaustive optimum as a lower bound.
use evop_baselines::*;
use evop_model::perplexity::window_nlls;
use evop_model::{load, BlockLm, BlockMask, CalibrationEvaluator, EvaluatorOptions, LoadOptions};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn tiny(name: &str) -> Arc<dyn BlockLm> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name);
    load(&dir, &LoadOptions::default()).unwrap().lm
}

/// Seeded random windows of ids 4..127 (the fixtures' WordLevel vocabulary).
fn windows(seed: u64, count: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..count).map(|_| (0..len).map(|_| rng.random_range(4..128u32)).collect()).collect()
}

fn loss(lm: &Arc<dyn BlockLm>, w: &[Vec<u32>], mask: &BlockMask) -> f64 {
    window_nlls(lm.as_ref(), w, mask, 8).unwrap().iter().sum()
}

fn all_pruners(seed: u64) -> Vec<Box<dyn Pruner>> {
    vec![
        Box::new(Sleb::default()),
        Box::new(ShortGpt::default()),
        Box::new(OneShotPpl::default()),
        Box::new(Angular::default()),
        Box::new(Angular { tokens: AngularTokens::All, ..Default::default() }),
        Box::new(LastN),
        Box::new(RandomBlocks::new(seed)),
        Box::new(Exhaustive::default()),
    ]
}

#[test]
fn every_method_removes_exactly_n_blocks() {
    let lm = tiny("llama");
    let w = windows(1, 3, 16);
    for n in 1..=2 {
        for p in all_pruners(7) {
            let r = p.prune(&lm, &w, n).unwrap();
            assert_eq!(r.mask.num_blocks(), 4);
            assert_eq!(r.mask.num_removed(), n, "{}", p.name());
            assert_eq!(r.n, n);
            assert_eq!(r.method, p.name());
            let json = serde_json::to_string(&r).unwrap();
            let back: PruneResult = serde_json::from_str(&json).unwrap();
            assert_eq!((&back.mask, &back.method, back.n, back.counts), (&r.mask, &r.method, r.n, r.counts));
            assert_eq!(std::mem::discriminant(&back.trace), std::mem::discriminant(&r.trace), "{}", p.name());
        }
    }
    let r = LastN.prune(&lm, &w, 2).unwrap();
    assert_eq!(r.removed(), vec![1, 2]);
}

#[test]
fn sleb_matches_a_naive_greedy_with_the_reference_barriers() {
    for fixture in ["llama", "opt_pre"] {
        let lm = tiny(fixture);
        let w = windows(3, 4, 20);
        let r = Sleb::default().prune(&lm, &w, 2).unwrap();
        let Trace::Sleb(trace) = &r.trace else { panic!("sleb trace") };
        // Naive: a full forward per candidate; alive[1..len-1] as in sleb.py.
        let mut alive: Vec<usize> = (0..4).collect();
        let mut removed = Vec::new();
        for step in &trace.steps {
            let cands = alive[1..alive.len() - 1].to_vec();
            assert_eq!(step.candidates.iter().map(|c| c.block).collect::<Vec<_>>(), cands);
            let mut best = (f64::INFINITY, usize::MAX);
            for (c, got) in cands.iter().zip(&step.candidates) {
                let mut r2 = removed.clone();
                r2.push(*c);
                let l = loss(&lm, &w, &BlockMask::from_removed(4, &r2).unwrap());
                assert!((l - got.loss).abs() <= 1e-6 * l.abs(), "{fixture}: {l} vs {}", got.loss);
                if l < best.0 {
                    best = (l, *c);
                }
            }
            assert_eq!(step.removed, best.1);
            removed.push(best.1);
            alive.retain(|&b| b != best.1);
        }
        assert_eq!(trace.removal_order, removed);
        assert!(r.counts.block_forwards > 0 && r.counts.candidates > 0);
    }
}

#[test]
fn one_shot_ranking_and_shortgpt_agree_with_their_tables() {
    let lm = tiny("mistral");
    let w = windows(5, 3, 16);
    let r = OneShotPpl::default().prune(&lm, &w, 2).unwrap();
    let Trace::OneShotPpl(t) = &r.trace else { panic!() };
    for s in &t.removals {
        let l = loss(&lm, &w, &BlockMask::from_removed(4, &[s.block]).unwrap());
        assert!((l - s.loss).abs() <= 1e-6 * l);
    }
    let mut best = t.ranking[..2].to_vec();
    best.sort();
    assert_eq!(r.removed(), best);
    let r = ShortGpt::default().prune(&lm, &w, 1).unwrap();
    let Trace::ShortGpt(t) = &r.trace else { panic!() };
    assert_eq!(t.scores.len(), 4);
    assert!(t.scores.iter().all(|s| (0.0..=2.0).contains(s)));
    let min = (0..4).min_by(|&a, &b| t.scores[a].partial_cmp(&t.scores[b]).unwrap()).unwrap();
    assert_eq!(r.removed(), vec![min]);
}

#[test]
fn protection_is_respected() {
    let lm = tiny("llama");
    let w = windows(2, 2, 12);
    let protected = vec![0, 3];
    let ps: Vec<Box<dyn Pruner>> = vec![
        Box::new(ShortGpt { protected: protected.clone(), ..Default::default() }),
        Box::new(OneShotPpl { protected: protected.clone(), ..Default::default() }),
        Box::new(Angular { protected: protected.clone(), ..Default::default() }),
        Box::new(RandomBlocks { seed: 3, protected: protected.clone() }),
        Box::new(Exhaustive { protected: protected.clone(), ..Default::default() }),
    ];
    for p in &ps {
        let r = p.prune(&lm, &w, 2).unwrap();
        assert_eq!(r.removed(), vec![1, 2], "{}", p.name());
        assert!(matches!(p.prune(&lm, &w, 3), Err(BaselineError::NotEnoughEligible { n: 3, eligible: 2, .. })), "{}", p.name());
    }
    let sleb = Sleb { early_barrier: 0, latter_barrier: 0, ..Default::default() };
    assert_eq!(sleb.prune(&lm, &w, 3).unwrap().n, 3);
    assert!(matches!(Sleb::default().prune(&lm, &w, 3), Err(BaselineError::NotEnoughEligible { eligible: 2, .. })));
    let bad = ShortGpt { protected: vec![4], ..Default::default() };
    assert!(matches!(bad.prune(&lm, &w, 1), Err(BaselineError::ProtectedOutOfRange { block: 4, num_blocks: 4 })));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let lm = tiny("llama");
    let w = windows(2, 2, 12);
    for p in all_pruners(0) {
        assert!(matches!(p.prune(&lm, &w, 0), Err(BaselineError::NothingToRemove)), "{}", p.name());
        assert!(matches!(p.prune(&lm, &w, 4), Err(BaselineError::TooManyBlocks { n: 4, num_blocks: 4 })), "{}", p.name());
        assert!(matches!(p.prune(&lm, &w, 9), Err(BaselineError::TooManyBlocks { n: 9, .. })), "{}", p.name());
        if !matches!(p.name(), "last-n" | "random") {
            assert!(matches!(p.prune(&lm, &[], 1), Err(BaselineError::EmptyCalibration)), "{}", p.name());
            let ragged = vec![vec![5u32; 12], vec![6u32; 11]];
            assert!(matches!(p.prune(&lm, &ragged, 1), Err(BaselineError::BadWindow { index: 1, len: 11, .. })), "{}", p.name());
            let oov = vec![vec![5u32, 9999, 7]];
            assert!(matches!(p.prune(&lm, &oov, 1), Err(BaselineError::Model(_))), "{}", p.name());
        }
    }
    let small = Exhaustive { max_masks: 5, ..Default::default() };
    let err = small.prune(&lm, &w, 2).unwrap_err();
    assert!(matches!(err, BaselineError::TooManyMasks { eligible: 4, n: 2, limit: 5, .. }), "{err}");
    assert!(err.to_string().contains("C(4, 2) = 6"), "{err}");
    let zero_chunk = Exhaustive { chunk_size: 0, ..Default::default() };
    assert!(matches!(zero_chunk.prune(&lm, &w, 1), Err(BaselineError::InvalidSetting { setting: "chunk_size", .. })));
    assert!(matches!(LastN.prune_sparsity(&lm, &w, 1.5), Err(BaselineError::InvalidSparsity(_))));
    assert_eq!(LastN.prune_sparsity(&lm, &w, 0.5).unwrap().removed(), vec![1, 2]);
}

#[test]
fn random_is_seeded() {
    let lm = tiny("llama");
    let a = RandomBlocks::new(11).prune(&lm, &[], 2).unwrap();
    let b = RandomBlocks::new(11).prune(&lm, &[], 2).unwrap();
    assert_eq!(a.mask, b.mask);
    let masks: std::collections::HashSet<Vec<usize>> =
        (0..20).map(|s| RandomBlocks::new(s).prune(&lm, &[], 2).unwrap().removed()).collect();
    assert!(masks.len() > 1, "20 seeds gave one mask");
}

#[test]
fn exhaustive_distribution_is_complete_and_sorted() {
    let lm = tiny("opt_pre");
    let w = windows(9, 3, 16);
    let r = Exhaustive { chunk_size: 2, ..Default::default() }.prune(&lm, &w, 2).unwrap();
    let Trace::Exhaustive(t) = &r.trace else { panic!() };
    assert_eq!(t.distribution.len(), 6);
    assert!(t.distribution.windows(2).all(|p| p[0].loss <= p[1].loss));
    for m in &t.distribution {
        let l = loss(&lm, &w, &BlockMask::from_removed(4, &m.removed).unwrap());
        assert!((l - m.loss).abs() <= 1e-6 * l);
    }
    assert_eq!(t.fraction_better(t.best().unwrap().loss), 0.0);
    assert_eq!(r.removed(), t.best().unwrap().removed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// No method beats the exhaustive optimum of the same loss on the same calibration set.
    #[test]
    fn exhaustive_is_a_lower_bound(seed in 0u64..1000, n in 1usize..=2, fixture in 0usize..3) {
        let lm = tiny(["llama", "mistral", "opt_post"][fixture]);
        let w = windows(seed, 3, 12);
        let ev = CalibrationEvaluator::new(lm.clone(), &w, EvaluatorOptions::default()).unwrap();
        let (best_mask, trace) = Exhaustive::default().run(&ev, n).unwrap();
        let best: f64 = ev.window_losses(&best_mask).unwrap().iter().sum();
        prop_assert!((best - trace.best().unwrap().loss).abs() <= 1e-9 * best.abs());
        for p in all_pruners(seed) {
            let r = p.prune(&lm, &w, n).unwrap();
            let l: f64 = ev.window_losses(&r.mask).unwrap().iter().sum();
            prop_assert!(best <= l + 1e-9 * l.abs(), "{}: {} beats the optimum {}", p.name(), l, best);
            prop_assert!(trace.fraction_better(l) < 1.0);
        }
    }
}

fn tiny32() -> Arc<dyn BlockLm> {
    evop_model::io::synthetic::load_synthetic("tiny-32", 3, &LoadOptions::default()).unwrap().lm
}

#[test]
fn raced_sleb_keeping_every_candidate_is_sleb() {
    let lm = tiny32();
    let w = windows(4, 6, 16);
    let plain = Sleb::default().prune(&lm, &w, 5).unwrap();
    let raced = Sleb { race: Some(Race { screen_windows: 2, keep: 64 }), ..Default::default() }.prune(&lm, &w, 5).unwrap();
    assert_eq!(raced.mask, plain.mask);
    let (Trace::Sleb(a), Trace::Sleb(b)) = (&plain.trace, &raced.trace) else { panic!("sleb traces") };
    assert_eq!(a.removal_order, b.removal_order);
    for (sa, sb) in a.steps.iter().zip(&b.steps) {
        assert!(sb.screened_out.is_empty());
        for (ca, cb) in sa.candidates.iter().zip(&sb.candidates) {
            assert_eq!(ca.block, cb.block);
            assert!((ca.loss - cb.loss).abs() < 1e-9 * ca.loss.abs().max(1.0), "{} vs {}", ca.loss, cb.loss);
        }
    }
    assert_eq!(b.race, Some(Race { screen_windows: 2, keep: 64 }));
}

#[test]
fn raced_sleb_removes_the_lowest_full_loss_among_the_screened_in() {
    let lm = tiny32();
    let w = windows(5, 6, 16);
    let race = Race { screen_windows: 2, keep: 3 };
    let r = Sleb { race: Some(race), ..Default::default() }.prune(&lm, &w, 4).unwrap();
    assert_eq!(r.mask.num_removed(), 4);
    let Trace::Sleb(t) = &r.trace else { panic!("a sleb trace") };
    let mut mask = BlockMask::dense(32);
    for step in &t.steps {
        assert_eq!(step.candidates.len(), 3);
        assert_eq!(step.candidates.len() + step.screened_out.len(), 32 - 2 - step.removed_before.len());
        // Each kept candidate's loss is its loss over every window; the screen's order decided who
        // went on: every screened-out candidate scored no lower on the screen windows than any kept one.
        let screen_loss = |block: usize| loss(&lm, &w[..2], &mask.with_removed(block).unwrap());
        for c in &step.candidates {
            let full = loss(&lm, &w, &mask.with_removed(c.block).unwrap());
            assert!((c.loss - full).abs() < 1e-4 * full, "block {}: {} vs {full}", c.block, c.loss);
        }
        let worst_kept = step.candidates.iter().map(|c| screen_loss(c.block)).fold(f64::MIN, f64::max);
        for c in &step.screened_out {
            assert!(c.loss >= worst_kept - 1e-4 * worst_kept.abs(), "block {} screened out at {} below {worst_kept}", c.block, c.loss);
        }
        let best = step.candidates.iter().min_by(|a, b| a.loss.total_cmp(&b.loss)).unwrap();
        assert_eq!(step.removed, best.block);
        mask = mask.with_removed(step.removed).unwrap();
    }
    assert_eq!(mask, r.mask);
    let zero = Sleb { race: Some(Race { screen_windows: 0, keep: 3 }), ..Default::default() };
    assert!(matches!(zero.prune(&lm, &w, 1), Err(BaselineError::InvalidSetting { .. })));
}

#[test]
fn race_settings_parse_and_count() {
    assert_eq!(Race::parse("none").unwrap(), None);
    assert_eq!(Race::parse("4/6").unwrap(), Some(Race { screen_windows: 4, keep: 6 }));
    for bad in ["0/6", "4/0", "4", "a/b", "4/6/8", ""] {
        assert!(Race::parse(bad).unwrap_err().contains(bad), "{bad}");
    }
    let r = Race { screen_windows: 2, keep: 3 };
    // Steps of 5 and 2 candidates on 10 windows: 5*2 + 3*8, then 2*2 + 2*8.
    assert_eq!(r.candidate_windows(&[5, 2], 10), 34.0 + 20.0);
}

#[test]
fn race_share_of_sleb_counts_every_step() {
    // 6 blocks, 2 steps: 4 then 3 candidates; on 5 windows, screen 1, keep 2: (4 + 2*4) + (3 + 2*4) of (4 + 3) * 5.
    let r = Race { screen_windows: 1, keep: 2 };
    assert!((r.sleb_share(6, 2, 5) - 23.0 / 35.0).abs() < 1e-12);
    assert_eq!(Race { screen_windows: 1, keep: 99 }.sleb_share(6, 2, 5), 1.0);
}
