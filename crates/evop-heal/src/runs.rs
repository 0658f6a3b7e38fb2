//! The removed runs of a block mask: maximal sequences of consecutive removed blocks, each with
//! the kept block before it (where a linear patch is folded).
use evop_model::BlockMask;
use serde::{Deserialize, Serialize};

/// One maximal run of consecutive removed blocks `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRun {
    pub first: usize,
    pub last: usize,
}

impl RemovedRun {
    /// The blocks of the run.
    pub fn blocks(&self) -> Vec<usize> {
        (self.first..=self.last).collect()
    }

    /// Number of removed blocks.
    pub fn len(&self) -> usize {
        self.last + 1 - self.first
    }

    /// Never true: a run holds at least one block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The kept block just before the run, whose MLP output the patch maps; `None` for a run
    /// that starts at block 0.
    pub fn preceding(&self) -> Option<usize> {
        self.first.checked_sub(1)
    }
}

/// The runs of `mask`, shallow to deep.
pub fn removed_runs(mask: &BlockMask) -> Vec<RemovedRun> {
    let mut runs: Vec<RemovedRun> = Vec::new();
    for i in mask.removed() {
        match runs.last_mut() {
            Some(r) if r.last + 1 == i => r.last = i,
            _ => runs.push(RemovedRun { first: i, last: i }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_maximal_and_ordered() {
        let mask = BlockMask::from_removed(30, &[5, 12, 13, 14, 15, 16, 17, 18, 26]).unwrap();
        let runs = removed_runs(&mask);
        assert_eq!(
            runs,
            vec![RemovedRun { first: 5, last: 5 }, RemovedRun { first: 12, last: 18 }, RemovedRun { first: 26, last: 26 }]
        );
        assert_eq!(runs[1].len(), 7);
        assert_eq!(runs[1].preceding(), Some(11));
        let first = removed_runs(&BlockMask::from_removed(4, &[0, 1]).unwrap());
        assert_eq!(first, vec![RemovedRun { first: 0, last: 1 }]);
        assert_eq!(first[0].preceding(), None);
        assert!(removed_runs(&BlockMask::dense(4)).is_empty());
    }
}
