//! The memo cache in front of every fitness call: keyed by (mask, fidelity), so no mask is ever evaluated
//! twice at the same fidelity. Duplicates inside one batch are evaluated once too. Hits are counted.

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
}

impl Memo {
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
        let values = fitness.evaluate(&misses, fidelity).map_err(|e| SearchError::Fitness(Box::new(e)))?;
        if values.len() != misses.len() {
            return Err(SearchError::FitnessCount { expected: misses.len(), found: values.len() });
        }
        self.evaluations += misses.len() as u64;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            self.non_finite += bad as u64;
            tracing::warn!(count = bad, fidelity = fidelity.0, "fitness returned non-finite values; they rank worst");
        }
        for (i, j) in pending {
            out[i] = values[j];
        }
        for (m, v) in misses.into_iter().zip(values) {
            table.insert(m, v);
        }
        Ok(out)
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

    pub(crate) fn restore(s: MemoSnapshot) -> Self {
        let table = s
            .levels
            .into_iter()
            .map(|l| (l.fidelity, l.entries.into_iter().map(|(m, b)| (m, f64::from_bits(b))).collect()))
            .collect();
        Memo { table, hits: s.hits, evaluations: s.evaluations, non_finite: s.non_finite }
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
        let back = Memo::restore(serde_json::from_str(&serde_json::to_string(&memo.snapshot()).unwrap()).unwrap());
        assert_eq!(back.get(&b, Fidelity(1)), Some(5.0));
        assert_eq!((back.hits(), back.evaluations(), back.len()), (3, 3, 3));
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
        let back = Memo::restore(serde_json::from_str(&serde_json::to_string(&memo.snapshot()).unwrap()).unwrap());
        assert!(back.get(&ms[0], Fidelity::FULL).unwrap().is_nan());
    }
}
