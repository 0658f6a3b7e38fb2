//! A budgeted store of residual-stream states at block boundaries, kept across evaluation calls
//! (across GA generations, SLEB steps and any other sequence of candidate batches).
//!
//! The state reached by applying kept blocks `k_1 < ... < k_d` to a calibration batch's embeddings
//! depends on nothing but that set of blocks, so the key is `(calibration batch, set of applied
//! blocks)` ([`KeptSet`]). Any later candidate whose kept-block sequence starts with exactly those
//! blocks resumes from the stored state instead of recomputing the prefix: a GA child resumes where
//! it first departs from every mask evaluated before (its parents among them), an SLEB candidate
//! from the previous step's states (the winner's path, and for blocks before the winner the state
//! just before it).
//!
//! Pinned states (the dense model's, at every block boundary some candidate started from) are
//! kept outside the budget and never evicted: there are at most `L + 1` per calibration batch.
//!
//! Budget and eviction: states are stored while their total size stays within `budget` bytes.
//! When a new state does not fit, entries last used in *earlier* calls are evicted: the oldest call
//! first and, within a call, the entries whose best candidate (lowest loss among the candidates
//! that passed through them) was worst. Entries used in the current call are never evicted during
//! it; a state that still does not fit is not stored (counted as `rejected`). Optionally states are
//! stored in a narrower dtype (bf16 or f16), which halves the memory but makes results inexact:
//! a resumed candidate continues from a rounded state.
use crate::error::Result;
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// The set of blocks applied so far, as a bitset over block indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeptSet(Box<[u64]>);

impl KeptSet {
    /// No block applied (the embeddings), for a model of `num_blocks` blocks.
    pub fn empty(num_blocks: usize) -> Self {
        Self(vec![0u64; num_blocks.div_ceil(64).max(1)].into_boxed_slice())
    }

    /// This set plus `block`.
    pub fn with(&self, block: usize) -> Self {
        let mut words = self.0.clone();
        words[block / 64] |= 1u64 << (block % 64);
        Self(words)
    }

    /// Number of blocks in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether no block is in the set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the set is `{0, 1, ..., len - 1}`: the dense model's state at boundary `len`.
    pub fn is_dense_prefix(&self) -> bool {
        let n = self.len();
        self.0.iter().enumerate().all(|(i, &w)| {
            let lo = i * 64;
            let want = if n >= lo + 64 {
                u64::MAX
            } else if n > lo {
                (1u64 << (n - lo)) - 1
            } else {
                0
            };
            w == want
        })
    }
}

/// What the cache has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    /// Lookups that found a state.
    pub hits: u64,
    /// States stored.
    pub inserts: u64,
    /// States evicted to make room.
    pub evictions: u64,
    /// States not stored for lack of room.
    pub rejected: u64,
    /// States held now.
    pub entries: usize,
    /// Bytes held now.
    pub bytes: usize,
    /// Most bytes held at any time.
    pub peak_bytes: usize,
    /// Pinned states held now (outside the budget).
    pub pinned: usize,
    /// Their bytes.
    pub pinned_bytes: usize,
}

struct Entry {
    state: Tensor,
    bytes: usize,
    /// The call that last used the entry.
    epoch: u64,
    /// Lowest loss of a candidate that passed through the entry in that call (`+inf` until known).
    score: f64,
}

/// States at block boundaries keyed by (calibration batch, applied blocks), within a byte budget.
pub struct PrefixCache {
    budget: usize,
    store_dtype: Option<DType>,
    bytes: usize,
    entries: HashMap<(usize, KeptSet), Entry>,
    pinned: HashMap<(usize, KeptSet), Tensor>,
    pinned_bytes: usize,
    /// Eviction order for the current call: entries of earlier calls, best to keep last.
    queue: Vec<(usize, KeptSet)>,
    queue_epoch: u64,
    stats: CacheStats,
}

impl PrefixCache {
    /// A cache of at most `budget` bytes; `store_dtype` = `None` stores states as computed (exact).
    pub fn new(budget: usize, store_dtype: Option<DType>) -> Self {
        Self {
            budget,
            store_dtype,
            bytes: 0,
            entries: HashMap::new(),
            pinned: HashMap::new(),
            pinned_bytes: 0,
            queue: Vec::new(),
            queue_epoch: 0,
            stats: CacheStats::default(),
        }
    }

    /// The state stored for `key` in calibration batch `batch`, in `dtype`; marks it used in `epoch`.
    pub fn get(&mut self, batch: usize, key: &KeptSet, epoch: u64, dtype: DType) -> Result<Option<Tensor>> {
        if self.entries.is_empty() && self.pinned.is_empty() {
            return Ok(None);
        }
        let k = (batch, key.clone());
        if let Some(t) = self.pinned.get(&k) {
            self.stats.hits += 1;
            return Ok(Some(t.clone()));
        }
        let Some(e) = self.entries.get_mut(&k) else { return Ok(None) };
        if e.epoch != epoch {
            e.epoch = epoch;
            e.score = f64::INFINITY;
        }
        self.stats.hits += 1;
        Ok(Some(if e.state.dtype() == dtype { e.state.clone() } else { e.state.to_dtype(dtype)? }))
    }

    /// Stores `state` (which must own its storage) for `key`, evicting entries of earlier calls if
    /// needed. Returns whether it was stored.
    pub fn insert(&mut self, batch: usize, key: &KeptSet, state: &Tensor, epoch: u64) -> Result<bool> {
        if self.budget == 0 {
            return Ok(false);
        }
        let k = (batch, key.clone());
        if self.entries.contains_key(&k) {
            return Ok(true);
        }
        let state = match self.store_dtype {
            Some(dt) if dt != state.dtype() => state.to_dtype(dt)?,
            _ => state.clone(),
        };
        let bytes = state.elem_count() * state.dtype().size_in_bytes();
        if bytes > self.budget {
            self.stats.rejected += 1;
            return Ok(false);
        }
        while self.bytes + bytes > self.budget {
            if !self.evict_one(epoch) {
                self.stats.rejected += 1;
                return Ok(false);
            }
        }
        self.bytes += bytes;
        self.entries.insert(k, Entry { state, bytes, epoch, score: f64::INFINITY });
        self.stats.inserts += 1;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.bytes);
        Ok(true)
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Keeps `state` for `key` outside the budget until the cache is dropped (stored as computed).
    pub fn pin(&mut self, batch: usize, key: &KeptSet, state: &Tensor) {
        let k = (batch, key.clone());
        if let Some(e) = self.entries.remove(&k) {
            self.bytes -= e.bytes;
        }
        if !self.pinned.contains_key(&k) {
            self.pinned_bytes += state.elem_count() * state.dtype().size_in_bytes();
            self.pinned.insert(k, state.clone());
        }
    }

    /// Records that a candidate with loss `loss` passed through `key` in `epoch` (no-op if absent).
    pub fn score(&mut self, batch: usize, key: &KeptSet, epoch: u64, loss: f64) {
        if self.entries.is_empty() {
            return;
        }
        let loss = if loss.is_nan() { f64::INFINITY } else { loss };
        if let Some(e) = self.entries.get_mut(&(batch, key.clone())) {
            if e.epoch != epoch {
                e.epoch = epoch;
                e.score = loss;
            } else {
                e.score = e.score.min(loss);
            }
        }
    }

    /// Evicts the next entry of an earlier call; false if none is left.
    fn evict_one(&mut self, epoch: u64) -> bool {
        if self.queue_epoch != epoch {
            // Entries used before this call, in eviction order: oldest call first, then worst score,
            // then key order (deterministic).
            let mut old: Vec<(&(usize, KeptSet), &Entry)> = self.entries.iter().filter(|(_, e)| e.epoch < epoch).collect();
            old.sort_by(|a, b| {
                a.1.epoch.cmp(&b.1.epoch).then(b.1.score.total_cmp(&a.1.score)).then_with(|| a.0.cmp(b.0))
            });
            // Popped from the back.
            self.queue = old.into_iter().rev().map(|(k, _)| k.clone()).collect();
            self.queue_epoch = epoch;
        }
        while let Some(k) = self.queue.pop() {
            // Entries used again in this call have left the eviction order.
            if self.entries.get(&k).is_some_and(|e| e.epoch < epoch) {
                let e = self.entries.remove(&k).expect("present");
                self.bytes -= e.bytes;
                self.stats.evictions += 1;
                return true;
            }
        }
        false
    }

    /// Drops every state that is not pinned.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.queue.clear();
        self.bytes = 0;
    }

    /// Counters and current size.
    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.entries.len(), bytes: self.bytes, pinned: self.pinned.len(), pinned_bytes: self.pinned_bytes, ..self.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn state(v: f32) -> Tensor {
        Tensor::full(v, (2, 4), &Device::Cpu).unwrap() // 32 bytes
    }

    #[test]
    fn kept_sets_and_dense_prefixes() {
        let e = KeptSet::empty(70);
        assert!(e.is_empty() && e.is_dense_prefix());
        let mut d = e.clone();
        for i in 0..66 {
            d = d.with(i);
            assert!(d.is_dense_prefix(), "{i}");
        }
        assert_eq!(d.len(), 66);
        assert!(!e.with(1).is_dense_prefix());
        assert!(!e.with(0).with(65).is_dense_prefix());
        assert_ne!(e.with(3), e.with(4));
        assert_eq!(e.with(3).with(4), e.with(4).with(3));
    }

    #[test]
    fn evicts_older_calls_worst_first_and_never_the_current_call() {
        let k = KeptSet::empty(8);
        let mut c = PrefixCache::new(96, None); // room for 3 states
        for (i, loss) in [(1, 3.0), (2, 1.0), (3, 2.0)] {
            assert!(c.insert(0, &k.with(i), &state(i as f32), 1).unwrap());
            c.score(0, &k.with(i), 1, loss);
        }
        // Call 2: the worst of call 1 (block 1, loss 3) goes first, then block 3 (loss 2).
        assert!(c.insert(0, &k.with(4), &state(4.0), 2).unwrap());
        assert!(c.get(0, &k.with(1), 2, DType::F32).unwrap().is_none());
        assert!(c.get(0, &k.with(2), 2, DType::F32).unwrap().is_some()); // now used in call 2
        assert!(c.insert(0, &k.with(5), &state(5.0), 2).unwrap());
        assert!(c.get(0, &k.with(3), 2, DType::F32).unwrap().is_none());
        // Everything left was used in call 2: nothing can be evicted.
        assert!(!c.insert(0, &k.with(6), &state(6.0), 2).unwrap());
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions, s.rejected, s.inserts), (3, 96, 2, 1, 5));
        let got: Vec<f32> = c.get(0, &k.with(5), 3, DType::F32).unwrap().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, vec![5.0; 8]);
        // Another calibration batch is another key.
        assert!(c.get(1, &k.with(5), 3, DType::F32).unwrap().is_none());
    }

    #[test]
    fn pinned_states_are_outside_the_budget_and_survive_clear() {
        let k = KeptSet::empty(4);
        let mut c = PrefixCache::new(32, None);
        c.insert(0, &k.with(1), &state(1.0), 1).unwrap();
        c.pin(0, &k.with(0), &state(2.0));
        c.pin(0, &k.with(1), &state(3.0)); // replaces the budgeted entry
        c.clear();
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.pinned, s.pinned_bytes), (0, 0, 2, 64));
        let got: Vec<f32> = c.get(0, &k.with(1), 2, DType::F32).unwrap().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, vec![3.0; 8]);
    }

    #[test]
    fn narrow_storage_halves_the_bytes_and_zero_budget_stores_nothing() {
        let k = KeptSet::empty(4).with(2);
        let mut c = PrefixCache::new(1 << 20, Some(DType::BF16));
        c.insert(0, &k, &state(1.5), 1).unwrap();
        assert_eq!(c.stats().bytes, 16);
        assert_eq!(c.get(0, &k, 1, DType::F32).unwrap().unwrap().dtype(), DType::F32);
        let mut none = PrefixCache::new(0, None);
        assert!(!none.insert(0, &k, &state(1.0), 1).unwrap());
        assert_eq!(none.stats().entries, 0);
    }
}
