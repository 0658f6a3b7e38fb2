//! Property tests: every operator keeps length, n and protected blocks; selection returns the requested
//! count; masks survive serde.

use evop_search::{Crossover, Mask, MaskSpace, Mutation, OnePointCrossover, Selection, SharedRemovedCrossover, ShiftMutation, SwapMutation, Tournament};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A space with 1..=300 blocks, up to 12 protected, and any legal n.
fn space() -> impl Strategy<Value = MaskSpace> {
    (1usize..=300)
        .prop_flat_map(|len| (Just(len), proptest::collection::vec(0..len, 0..12)))
        .prop_flat_map(|(len, protected)| {
            let s = MaskSpace::new(len, 0, protected.clone()).unwrap();
            (Just(len), Just(protected), 0..=s.free().len())
        })
        .prop_map(|(len, protected, n)| MaskSpace::new(len, n, protected).unwrap())
}

fn legal(space: &MaskSpace, m: &Mask) -> Result<(), TestCaseError> {
    prop_assert_eq!(m.len(), space.len());
    prop_assert_eq!(m.n_removed(), space.n_removed());
    for &p in space.protected() {
        prop_assert!(!m.is_removed(p), "protected block {} removed", p);
    }
    prop_assert!(space.check(m).is_ok());
    Ok(())
}

/// The child removes every block both parents remove and nothing neither removes.
fn inherits(a: &Mask, b: &Mask, c: &Mask) -> Result<(), TestCaseError> {
    for i in 0..a.len() {
        if a.is_removed(i) && b.is_removed(i) {
            prop_assert!(c.is_removed(i));
        }
        if c.is_removed(i) {
            prop_assert!(a.is_removed(i) || b.is_removed(i));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn sampling_is_legal(space in space(), seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..4 {
            legal(&space, &space.sample(&mut rng))?;
        }
    }

    #[test]
    fn crossover_is_legal_and_inherits(space in space(), seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (a, b) = (space.sample(&mut rng), space.sample(&mut rng));
        let c = SharedRemovedCrossover.crossover(&space, &a, &b, &mut rng);
        legal(&space, &c)?;
        inherits(&a, &b, &c)?;
        // Crossing a mask with itself gives it back.
        prop_assert_eq!(SharedRemovedCrossover.crossover(&space, &a, &a, &mut rng), a);
    }

    #[test]
    fn one_point_crossover_is_legal_inherits_and_keeps_a_prefix(space in space(), seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (a, b) = (space.sample(&mut rng), space.sample(&mut rng));
        let c = OnePointCrossover.crossover(&space, &a, &b, &mut rng);
        legal(&space, &c)?;
        inherits(&a, &b, &c)?;
        // The child agrees with the first parent up to and including the parents' first difference.
        if let Some(first) = (0..space.len()).find(|&i| a.is_removed(i) != b.is_removed(i)) {
            for i in 0..=first {
                prop_assert_eq!(c.is_removed(i), a.is_removed(i), "block {} before the cut", i);
            }
        }
        prop_assert_eq!(OnePointCrossover.crossover(&space, &a, &a, &mut rng), a);
    }

    #[test]
    fn shift_mutation_is_legal_and_moves_removals_nearby(space in space(), seed: u64, reach in 1usize..5) {
        let m = ShiftMutation::new(&[1.0], reach).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let parent = space.sample(&mut rng);
        let mut child = parent.clone();
        m.mutate(&space, &mut child, &mut rng);
        legal(&space, &child)?;
        if space.max_distance() > 0 {
            prop_assert_eq!(child.hamming(&parent), 2);
            let restored = (0..space.len()).find(|&i| parent.is_removed(i) && !child.is_removed(i)).unwrap();
            let moved_to = (0..space.len()).find(|&i| child.is_removed(i) && !parent.is_removed(i)).unwrap();
            // Within reach whenever a kept free block was that close.
            let close = space.free().iter().any(|&i| !parent.is_removed(i) && i.abs_diff(restored) <= reach);
            if close {
                prop_assert!(moved_to.abs_diff(restored) <= reach, "moved {} -> {} with reach {}", restored, moved_to, reach);
            }
        }
    }

    #[test]
    fn mutation_is_legal_and_local(space in space(), seed: u64, weights in proptest::collection::vec(0.0f64..1.0, 1..5)) {
        prop_assume!(weights.iter().sum::<f64>() > 0.0);
        let m = SwapMutation::new(&weights).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let parent = space.sample(&mut rng);
        let mut child = parent.clone();
        m.mutate(&space, &mut child, &mut rng);
        legal(&space, &child)?;
        let d = child.hamming(&parent);
        prop_assert!(d % 2 == 0 && d <= 2 * weights.len());
        // A mutation always moves when the space allows it.
        if space.max_distance() > 0 {
            prop_assert!(d >= 2);
        }
    }

    #[test]
    fn tournament_returns_the_requested_count(costs in proptest::collection::vec(-1e6f64..1e6, 1..100), size in 1usize..8, count in 0usize..200, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let picks = Tournament::new(size).unwrap().select(&costs, count, &mut rng);
        prop_assert_eq!(picks.len(), count);
        prop_assert!(picks.iter().all(|&i| i < costs.len()));
    }

    #[test]
    fn masks_round_trip(space in space(), seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let m = space.sample(&mut rng);
        let removed: Vec<usize> = m.removed().collect();
        prop_assert_eq!(&Mask::from_removed(&space, &removed).unwrap(), &m);
        prop_assert_eq!(&Mask::from_bools(&space, &m.to_bools()).unwrap(), &m);
        let back: Mask = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(m.kept().count() + removed.len(), space.len());
    }
}
