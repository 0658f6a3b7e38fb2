//! The genome: a mask of `len` blocks with exactly `n_removed` set bits (set = block removed), and the
//! [`MaskSpace`] that says which masks are legal (length, number removed, protected blocks).
//!
//! A [`Mask`] is only a bitset; legality is a property of the pair (mask, space). Every constructor that
//! takes a space checks the mask against it, and the search re-checks every mask an operator returns, so an
//! illegal mask never reaches a fitness.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};

const WORD: usize = 64;

fn words_for(len: usize) -> usize {
    len.div_ceil(WORD)
}

/// A bitset of `len` blocks; a set bit means the block is removed.
///
/// Bits past `len` are always zero, so equality, hashing and ordering are those of the block sets.
/// Serialised as `{"len": L, "removed": [i, j, ...]}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "MaskRepr", into = "MaskRepr")]
pub struct Mask {
    len: usize,
    words: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct MaskRepr {
    len: usize,
    removed: Vec<usize>,
}

impl TryFrom<MaskRepr> for Mask {
    type Error = SearchError;
    fn try_from(r: MaskRepr) -> Result<Self> {
        Mask::from_indices(r.len, &r.removed)
    }
}

impl From<Mask> for MaskRepr {
    fn from(m: Mask) -> Self {
        MaskRepr { len: m.len, removed: m.removed().collect() }
    }
}

impl Mask {
    /// The mask of `space` that removes exactly the blocks `removed` (any order).
    ///
    /// Fails if an index is out of range or repeated, if the count is not `space.n_removed()`, or if a
    /// protected block is listed.
    pub fn from_removed(space: &MaskSpace, removed: &[usize]) -> Result<Self> {
        let m = Mask::from_indices(space.len, removed)?;
        space.check(&m)?;
        Ok(m)
    }

    /// The mask of `space` from one flag per block (`true` = removed).
    pub fn from_bools(space: &MaskSpace, removed: &[bool]) -> Result<Self> {
        if removed.len() != space.len {
            return Err(SearchError::LengthMismatch { expected: space.len, found: removed.len() });
        }
        let idx: Vec<usize> = removed.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i).collect();
        Mask::from_removed(space, &idx)
    }

    /// A bitset of length `len` with the given bits set; checks range and duplicates only.
    fn from_indices(len: usize, removed: &[usize]) -> Result<Self> {
        let mut m = Mask::empty(len);
        for &i in removed {
            if i >= len {
                return Err(SearchError::IndexOutOfRange { index: i, len });
            }
            if m.is_removed(i) {
                return Err(SearchError::DuplicateIndex { index: i });
            }
            m.set(i);
        }
        Ok(m)
    }

    pub(crate) fn empty(len: usize) -> Self {
        Mask { len, words: vec![0; words_for(len)] }
    }

    pub(crate) fn set(&mut self, i: usize) {
        self.words[i / WORD] |= 1 << (i % WORD);
    }

    pub(crate) fn clear(&mut self, i: usize) {
        self.words[i / WORD] &= !(1 << (i % WORD));
    }

    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    pub(crate) fn from_words(len: usize, words: Vec<u64>) -> Self {
        debug_assert_eq!(words.len(), words_for(len));
        Mask { len, words }
    }

    /// Number of blocks (L).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mask has no blocks at all (never true for a mask of a [`MaskSpace`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of removed blocks (n).
    pub fn n_removed(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether block `i` is removed; `false` for `i >= len`.
    pub fn is_removed(&self, i: usize) -> bool {
        i < self.len && self.words[i / WORD] >> (i % WORD) & 1 == 1
    }

    /// The removed blocks, ascending.
    pub fn removed(&self) -> impl Iterator<Item = usize> + '_ {
        SetBits { words: &self.words, word: 0, bits: self.words.first().copied().unwrap_or(0) }
    }

    /// The kept blocks, ascending.
    pub fn kept(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(move |&i| !self.is_removed(i))
    }

    /// One flag per block, `true` = removed.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.is_removed(i)).collect()
    }

    /// Number of blocks on which `self` and `other` differ (twice the number of swaps between them).
    pub fn hamming(&self, other: &Mask) -> usize {
        assert_eq!(self.len, other.len, "hamming distance of masks of different lengths");
        self.words.iter().zip(&other.words).map(|(a, b)| (a ^ b).count_ones() as usize).sum()
    }
}

struct SetBits<'a> {
    words: &'a [u64],
    word: usize,
    bits: u64,
}

impl Iterator for SetBits<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        loop {
            if self.bits != 0 {
                let b = self.bits.trailing_zeros() as usize;
                self.bits &= self.bits - 1;
                return Some(self.word * WORD + b);
            }
            self.word += 1;
            self.bits = *self.words.get(self.word)?;
        }
    }
}

/// `0`/`1` per block, block 0 first; `1` = removed.
impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in 0..self.len {
            f.write_str(if self.is_removed(i) { "1" } else { "0" })?;
        }
        Ok(())
    }
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mask({self})")
    }
}

/// The legal masks: length `len`, exactly `n_removed` removed blocks, none of them protected.
///
/// Serialised as `{"len": L, "n_removed": n, "protected": [...]}` and re-validated when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SpaceRepr", into = "SpaceRepr")]
pub struct MaskSpace {
    len: usize,
    n_removed: usize,
    protected: Vec<usize>,
    protected_bits: Vec<u64>,
    free: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct SpaceRepr {
    len: usize,
    n_removed: usize,
    protected: Vec<usize>,
}

impl TryFrom<SpaceRepr> for MaskSpace {
    type Error = SearchError;
    fn try_from(r: SpaceRepr) -> Result<Self> {
        MaskSpace::new(r.len, r.n_removed, r.protected)
    }
}

impl From<MaskSpace> for SpaceRepr {
    fn from(s: MaskSpace) -> Self {
        SpaceRepr { len: s.len, n_removed: s.n_removed, protected: s.protected }
    }
}

impl MaskSpace {
    /// The space of masks of `len` blocks removing exactly `n_removed`, never any of `protected`
    /// (repeats in `protected` are ignored).
    ///
    /// Fails if `len == 0`, a protected index is out of range, or fewer than `n_removed` blocks are free.
    pub fn new(len: usize, n_removed: usize, protected: impl IntoIterator<Item = usize>) -> Result<Self> {
        if len == 0 {
            return Err(SearchError::EmptyLength);
        }
        let mut protected: Vec<usize> = protected.into_iter().collect();
        protected.sort_unstable();
        protected.dedup();
        if let Some(&index) = protected.iter().find(|&&i| i >= len) {
            return Err(SearchError::ProtectedOutOfRange { index, len });
        }
        let mut pb = Mask::empty(len);
        for &i in &protected {
            pb.set(i);
        }
        let free: Vec<usize> = (0..len).filter(|&i| !pb.is_removed(i)).collect();
        if n_removed > free.len() {
            return Err(SearchError::TooManyRemoved { n_removed, free: free.len(), len });
        }
        Ok(MaskSpace { len, n_removed, protected, protected_bits: pb.words, free })
    }

    /// Number of blocks (L).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a space has at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of removed blocks in every mask (n).
    pub fn n_removed(&self) -> usize {
        self.n_removed
    }

    /// Protected blocks, ascending.
    pub fn protected(&self) -> &[usize] {
        &self.protected
    }

    /// Unprotected blocks, ascending.
    pub fn free(&self) -> &[usize] {
        &self.free
    }

    /// Whether block `i` is protected.
    pub fn is_protected(&self, i: usize) -> bool {
        i < self.len && self.protected_bits[i / WORD] >> (i % WORD) & 1 == 1
    }

    /// Checks that `mask` belongs to this space.
    pub fn check(&self, mask: &Mask) -> Result<()> {
        if mask.len != self.len {
            return Err(SearchError::LengthMismatch { expected: self.len, found: mask.len });
        }
        let found = mask.n_removed();
        if found != self.n_removed {
            return Err(SearchError::WrongRemovedCount { expected: self.n_removed, found });
        }
        for (w, (m, p)) in mask.words.iter().zip(&self.protected_bits).enumerate() {
            let bad = m & p;
            if bad != 0 {
                return Err(SearchError::ProtectedRemoved { index: w * WORD + bad.trailing_zeros() as usize });
            }
        }
        Ok(())
    }

    /// A uniformly random mask of the space.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Mask {
        let mut m = Mask::empty(self.len);
        for k in rand::seq::index::sample(rng, self.free.len(), self.n_removed) {
            m.set(self.free[k]);
        }
        m
    }

    /// Number of masks in the space, C(free, n), saturating at `u128::MAX`.
    pub fn size(&self) -> u128 {
        let (f, n) = (self.free.len() as u128, self.n_removed.min(self.free.len() - self.n_removed) as u128);
        let mut c: u128 = 1;
        for i in 0..n {
            // c * (f - i) / (i + 1) stays an integer at every step.
            c = match c.checked_mul(f - i) {
                Some(v) => v / (i + 1),
                None => return u128::MAX,
            };
        }
        c
    }

    /// Largest Hamming distance between two masks of the space: `2 * min(n, free - n)`.
    pub fn max_distance(&self) -> usize {
        2 * self.n_removed.min(self.free.len() - self.n_removed)
    }

    /// Every mask of the space, in lexicographic order of the removed indices. Only sensible for small
    /// spaces (see [`MaskSpace::size`]).
    pub fn iter(&self) -> impl Iterator<Item = Mask> + '_ {
        let n = self.n_removed;
        let f = self.free.len();
        let mut idx: Option<Vec<usize>> = Some((0..n).collect());
        std::iter::from_fn(move || {
            let cur = idx.take()?;
            let mut m = Mask::empty(self.len);
            for &k in &cur {
                m.set(self.free[k]);
            }
            // Advance to the next combination of n out of f.
            let mut next = cur;
            let mut i = n;
            while i > 0 {
                i -= 1;
                if next[i] < f - n + i {
                    next[i] += 1;
                    for j in i + 1..n {
                        next[j] = next[j - 1] + 1;
                    }
                    idx = Some(next);
                    break;
                }
            }
            Some(m)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn space() -> MaskSpace {
        MaskSpace::new(10, 3, [0, 9]).unwrap()
    }

    #[test]
    fn space_rejects_zero_length() {
        assert!(matches!(MaskSpace::new(0, 0, []), Err(SearchError::EmptyLength)));
    }

    #[test]
    fn space_rejects_protected_out_of_range() {
        assert!(matches!(MaskSpace::new(4, 1, [4]), Err(SearchError::ProtectedOutOfRange { index: 4, len: 4 })));
    }

    #[test]
    fn space_rejects_too_many_removed() {
        assert!(matches!(
            MaskSpace::new(4, 3, [0, 3]),
            Err(SearchError::TooManyRemoved { n_removed: 3, free: 2, len: 4 })
        ));
        assert!(MaskSpace::new(4, 2, [0, 3, 3]).is_ok());
    }

    #[test]
    fn mask_rejects_out_of_range() {
        assert!(matches!(Mask::from_removed(&space(), &[1, 2, 10]), Err(SearchError::IndexOutOfRange { index: 10, .. })));
    }

    #[test]
    fn mask_rejects_duplicates() {
        assert!(matches!(Mask::from_removed(&space(), &[1, 2, 2]), Err(SearchError::DuplicateIndex { index: 2 })));
    }

    #[test]
    fn mask_rejects_wrong_count() {
        assert!(matches!(
            Mask::from_removed(&space(), &[1, 2]),
            Err(SearchError::WrongRemovedCount { expected: 3, found: 2 })
        ));
    }

    #[test]
    fn mask_rejects_protected() {
        assert!(matches!(Mask::from_removed(&space(), &[1, 2, 9]), Err(SearchError::ProtectedRemoved { index: 9 })));
    }

    #[test]
    fn mask_rejects_wrong_length() {
        assert!(matches!(
            Mask::from_bools(&space(), &[false; 9]),
            Err(SearchError::LengthMismatch { expected: 10, found: 9 })
        ));
    }

    #[test]
    fn iterators_and_display() {
        let m = Mask::from_removed(&space(), &[7, 1, 4]).unwrap();
        assert_eq!(m.removed().collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(m.kept().collect::<Vec<_>>(), vec![0, 2, 3, 5, 6, 8, 9]);
        assert_eq!(m.to_string(), "0100100100");
        assert_eq!(Mask::from_bools(&space(), &m.to_bools()).unwrap(), m);
    }

    #[test]
    fn long_masks_cross_word_boundaries() {
        let s = MaskSpace::new(256, 4, [0, 255]).unwrap();
        let m = Mask::from_removed(&s, &[63, 64, 128, 254]).unwrap();
        assert_eq!(m.removed().collect::<Vec<_>>(), vec![63, 64, 128, 254]);
        assert_eq!(m.n_removed(), 4);
        assert!(matches!(Mask::from_removed(&s, &[63, 64, 128, 255]), Err(SearchError::ProtectedRemoved { index: 255 })));
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let m = Mask::from_removed(&space(), &[1, 4, 7]).unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, r#"{"len":10,"removed":[1,4,7]}"#);
        assert_eq!(serde_json::from_str::<Mask>(&j).unwrap(), m);
        assert!(serde_json::from_str::<Mask>(r#"{"len":3,"removed":[3]}"#).is_err());
        let s = space();
        assert_eq!(serde_json::from_str::<MaskSpace>(&serde_json::to_string(&s).unwrap()).unwrap(), s);
        assert!(serde_json::from_str::<MaskSpace>(r#"{"len":3,"n_removed":3,"protected":[0]}"#).is_err());
    }

    #[test]
    fn size_and_enumeration_agree() {
        let s = space();
        assert_eq!(s.size(), 56); // C(8, 3)
        let all: Vec<Mask> = s.iter().collect();
        assert_eq!(all.len(), 56);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 56);
        assert!(all.iter().all(|m| s.check(m).is_ok()));
        assert_eq!(MaskSpace::new(32, 8, []).unwrap().size(), 10_518_300);
        assert_eq!(MaskSpace::new(5, 0, []).unwrap().iter().count(), 1);
    }

    #[test]
    fn sampling_is_legal_and_covers_the_space() {
        let s = space();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let m = s.sample(&mut rng);
            s.check(&m).unwrap();
            seen.insert(m);
        }
        assert_eq!(seen.len(), 56);
    }
}
