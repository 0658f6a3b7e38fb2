//! The memo cache in front of every fitness call: keyed by (mask, fidelity), so no mask is ever evaluated
//! twice at the same fidelity. Duplicates inside one batch are evaluated once too. Hits are counted.
//! [`Memo::recomputing`] turns the cache off (every mask asked for is evaluated, as the reference search
//! loops do), so that the cache's saving can be measured against it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::fitness::{Fidelity, Fitness};
use crate::mask::Mask;

/// Cached fitness values and evaluation counters.
#[derive(Clone, Debug, Default)]
pub struct Memo {
    table: HashMap<Fidelity, HashMap<Mask, f64>>,
    hits: u64,
    evaluations: u64,
    non_finite: u64,
    /// Evaluate every mask asked for, cached or not (nothing is stored).
    recompute: bool,
}

impl Memo {
    /// A memo that caches nothing: every mask asked for is passed to the fitness, repeats included.
    /// With a deterministic fitness the values, and so the search, are the same as with the cache.
    pub fn recomputing() -> Self {
        Memo { recompute: true, ..Memo::default() }
    }

    /// Whether the cache is off ([`Memo::recomputing`]).
    pub fn is_recomputing(&self) -> bool {
        self.recompute
    }

    /// The cached value of `mask` at `fidelity`, if any.
    pub fn get(&self, mask: &Mask, fidelity: Fidelity) -> Option<f64> {
        self.table.get(&fidelity)?.get(mask).copied()
    }

    /// Number of cached (mask, fidelity) pairs.
    pub fn len(&self) -> usize {
        self.table.values().map(HashMap::len).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lookups answered without calling the fitness.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Masks passed to the fitness, at any fidelity.
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// Evaluations that returned NaN or an infinite value.
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// Values of `masks` at `fidelity`, calling `fitness` once for the masks not yet cached.
    pub fn evaluate<F: Fitness + ?Sized>(&mut self, fitness: &F, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>> {
        if self.recompute {
            return self.call(fitness, masks, fidelity);
        }
        let table = self.table.entry(fidelity).or_default();
        let mut out = vec![f64::NAN; masks.len()];
        let mut misses: Vec<Mask> = Vec::new();
        let mut miss_of: HashMap<&Mask, usize> = HashMap::new();
        let mut pending: Vec<(usize, usize)> = Vec::new();
        for (i, m) in masks.iter().enumerate() {
            if let Some(&v) = table.get(m) {
                out[i] = v;
                self.hits += 1;
            } else if let Some(&j) = miss_of.get(m) {
                pending.push((i, j));
                self.hits += 1;
            } else {
                miss_of.insert(m, misses.len());
                pending.push((i, misses.len()));
                misses.push(m.clone());
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        let values = self.call(fitness, &misses, fidelity)?;
        for (i, j) in pending {
            out[i] = values[j];
        }
        let table = self.table.entry(fidelity).or_default();
        for (m, v) in misses.into_iter().zip(values) {
            table.insert(m, v);
        }
        Ok(out)
    }

    /// One fitness call on `masks`, counted.
    fn call<F: Fitness + ?Sized>(&mut self, fitness: &F, masks: &[Mask], fidelity: Fidelity) -> Result<Vec<f64>> {
        let values = fitness.evaluate(masks, fidelity).map_err(|e| SearchError::Fitness(Box::new(e)))?;
        if values.len() != masks.len() {
            return Err(SearchError::FitnessCount { expected: masks.len(), found: values.len() });
        }
        self.evaluations += masks.len() as u64;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            self.non_finite += bad as u64;
            tracing::warn!(count = bad, fidelity = fidelity.0, "fitness returned non-finite values; they rank worst");
        }
        Ok(values)
    }

    pub(crate) fn snapshot(&self) -> MemoSnapshot {
        let mut levels: Vec<MemoLevel> = self
            .table
            .iter()
            .map(|(&fidelity, t)| {
                let mut entries: Vec<(Mask, u64)> = t.iter().map(|(m, v)| (m.clone(), v.to_bits())).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                MemoLevel { fidelity, entries }
            })
            .collect();
        levels.sort_by_key(|l| l.fidelity);
        MemoSnapshot { hits: self.hits, evaluations: self.evaluations, non_finite: self.non_finite, levels }
    }

    /// The memo of a checkpoint; `recompute` as in [`Memo::recomputing`] (the snapshot then holds no
    /// values, only counters).
    pub(crate) fn restore(s: MemoSnapshot, recompute: bool) -> Self {
        let table = s
            .levels
            .into_iter()
            .map(|l| (l.fidelity, l.entries.into_iter().map(|(m, b)| (m, f64::from_bits(b))).collect()))
            .collect();
        Memo { table, hits: s.hits, evaluations: s.evaluations, non_finite: s.non_finite, recompute }
    }

    pub(crate) fn masks(&self) -> impl Iterator<Item = &Mask> {
        self.table.values().flat_map(HashMap::keys)
    }
}

/// The cache as stored in a checkpoint: sorted (so files are deterministic), values as IEEE bits (so NaN
/// survives JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MemoSnapshot {
    hits: u64,
    evaluations: u64,
    non_finite: u64,
    levels: Vec<MemoLevel>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MemoLevel {
    fidelity: Fidelity,
    entries: Vec<(Mask, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fitness::BatchFitness;
    use crate::mask::MaskSpace;
    use std::cell::RefCell;

    #[test]
    fn never_evaluates_twice_and_counts_hits() {
        let s = MaskSpace::new(6, 2, []).unwrap();
        let a = Mask::from_removed(&s, &[0, 1]).unwrap();
        let b = Mask::from_removed(&s, &[2, 3]).unwrap();
        let calls = RefCell::new(Vec::new());
        let f = BatchFitness::new(|ms: &[Mask], fid: Fidelity| {
            calls.borrow_mut().push((ms.to_vec(), fid));
            Ok::<_, std::convert::Infallible>(ms.iter().map(|m| m.removed().sum::<usize>() as f64).collect())
        });
        let mut memo = Memo::default();
        let v = memo.evaluate(&f, &[a.clone(), b.clone(), a.clone()], Fidelity(1)).unwrap();
        assert_eq!(v, vec![1.0, 5.0, 1.0]);
        assert_eq!((memo.evaluations(), memo.hits()), (2, 1));
        let v = memo.evaluate(&f, &[b.clone(), a.clone()], Fidelity(1)).unwrap();
        assert_eq!(v, vec![5.0, 1.0]);
        assert_eq!((memo.evaluations(), memo.hits()), (2, 3));
        // Another fidelity is another key.
        memo.evaluate(&f, std::slice::from_ref(&a), Fidelity(2)).unwrap();
        assert_eq!(memo.evaluations(), 3);
        assert_eq!(calls.borrow().len(), 2);
        assert_eq!(calls.borrow()[0].0, vec![a.clone(), b.clone()]);
        // Snapshot round trip.
        let back = Memo::restore(serde_json::from_str(&serde_json::to_string(&memo.snapshot()).unwrap()).unwrap(), false);
        assert_eq!(back.get(&b, Fidelity(1)), Some(5.0));
        assert_eq!((back.hits(), back.evaluations(), back.len()), (3, 3, 3));
    }

    #[test]
    fn recomputing_passes_every_mask_to_the_fitness() {
        let s = MaskSpace::new(6, 2, []).unwrap();
        let a = Mask::from_removed(&s, &[0, 1]).unwrap();
        let b = Mask::from_removed(&s, &[2, 3]).unwrap();
        let calls = RefCell::new(Vec::new());
        let f = BatchFitness::new(|ms: &[Mask], _: Fidelity| {
            calls.borrow_mut().push(ms.to_vec());
            Ok::<_, std::convert::Infallible>(ms.iter().map(|m| m.removed().sum::<usize>() as f64).collect())
        });
        let mut memo = Memo::recomputing();
        assert_eq!(memo.evaluate(&f, &[a.clone(), b.clone(), a.clone()], Fidelity(1)).unwrap(), vec![1.0, 5.0, 1.0]);
        assert_eq!(memo.evaluate(&f, std::slice::from_ref(&b), Fidelity(1)).unwrap(), vec![5.0]);
        assert_eq!((memo.evaluations(), memo.hits(), memo.len()), (4, 0, 0));
        assert_eq!(*calls.borrow(), vec![vec![a.clone(), b.clone(), a], vec![b]]);
        // A checkpoint keeps the counters and the setting.
        let back = Memo::restore(memo.snapshot(), true);
        assert!(back.is_recomputing());
        assert_eq!(back.evaluations(), 4);
    }

    #[test]
    fn wrong_value_count_is_an_error() {
        let s = MaskSpace::new(4, 1, []).unwrap();
        let f = BatchFitness::new(|_: &[Mask], _| Ok::<_, std::convert::Infallible>(vec![1.0]));
        let ms: Vec<Mask> = s.iter().collect();
        assert!(matches!(
            Memo::default().evaluate(&f, &ms, Fidelity::FULL),
            Err(SearchError::FitnessCount { expected: 4, found: 1 })
        ));
    }

    #[test]
    fn non_finite_values_are_counted_and_survive_snapshots() {
        let s = MaskSpace::new(4, 1, []).unwrap();
        let f = BatchFitness::new(|ms: &[Mask], _| Ok::<_, std::convert::Infallible>(vec![f64::NAN; ms.len()]));
        let mut memo = Memo::default();
        let ms: Vec<Mask> = s.iter().collect();
        memo.evaluate(&f, &ms, Fidelity::FULL).unwrap();
        assert_eq!(memo.non_finite(), 4);
        let back = Memo::restore(serde_json::from_str(&serde_json::to_string(&memo.snapshot()).unwrap()).unwrap(), false);
        assert!(back.get(&ms[0], Fidelity::FULL).unwrap().is_nan());
    }
}
