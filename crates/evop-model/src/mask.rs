//! A validated block mask: which of a model's L decoder blocks are skipped.
//!
//! A skipped block is the identity on the residual stream (SLEB, Song et al. 2024, and EvoP,
//! Wu et al. 2025, arXiv 2502.14910, both define removal this way).
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// Which blocks of an L-block model run. Construction checks every index against L.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BlockMaskRepr", into = "BlockMaskRepr")]
pub struct BlockMask {
    skip: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
struct BlockMaskRepr {
    num_blocks: usize,
    removed: Vec<usize>,
}

impl TryFrom<BlockMaskRepr> for BlockMask {
    type Error = ModelError;
    fn try_from(r: BlockMaskRepr) -> Result<Self> {
        BlockMask::from_removed(r.num_blocks, &r.removed)
    }
}

impl From<BlockMask> for BlockMaskRepr {
    fn from(m: BlockMask) -> Self {
        BlockMaskRepr { num_blocks: m.num_blocks(), removed: m.removed().collect() }
    }
}

impl BlockMask {
    /// The mask that keeps all `num_blocks` blocks.
    pub fn dense(num_blocks: usize) -> Self {
        Self { skip: vec![false; num_blocks] }
    }

    /// A mask of `num_blocks` blocks that removes `removed` (indices must be distinct and `< num_blocks`).
    pub fn from_removed(num_blocks: usize, removed: &[usize]) -> Result<Self> {
        let mut skip = vec![false; num_blocks];
        for &i in removed {
            if i >= num_blocks {
                return Err(ModelError::Mask(format!(
                    "block {i} is out of range for a model of {num_blocks} blocks"
                )));
            }
            if skip[i] {
                return Err(ModelError::Mask(format!("block {i} is listed twice")));
            }
            skip[i] = true;
        }
        Ok(Self { skip })
    }

    /// A mask from one flag per block, `true` meaning skipped.
    pub fn from_skip_flags(skip: Vec<bool>) -> Self {
        Self { skip }
    }

    /// Number of blocks of the model this mask is for.
    pub fn num_blocks(&self) -> usize {
        self.skip.len()
    }

    /// Whether block `i` runs.
    pub fn is_kept(&self, i: usize) -> bool {
        !self.skip[i]
    }

    /// Indices of the blocks that run, ascending.
    pub fn kept(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.skip.len()).filter(|&i| !self.skip[i])
    }

    /// Indices of the skipped blocks, ascending.
    pub fn removed(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.skip.len()).filter(|&i| self.skip[i])
    }

    /// How many blocks are skipped.
    pub fn num_removed(&self) -> usize {
        self.skip.iter().filter(|&&s| s).count()
    }

    /// The first skipped block, if any: everything before it equals the dense model.
    pub fn first_removed(&self) -> Option<usize> {
        self.skip.iter().position(|&s| s)
    }

    /// Checks that the mask fits a model of `num_blocks` blocks.
    pub fn check_len(&self, num_blocks: usize) -> Result<()> {
        if self.skip.len() != num_blocks {
            return Err(ModelError::Mask(format!(
                "mask has {} entries but the model has {num_blocks} blocks",
                self.skip.len()
            )));
        }
        Ok(())
    }

    /// This mask with block `i` additionally skipped.
    pub fn with_removed(&self, i: usize) -> Result<Self> {
        let mut removed: Vec<usize> = self.removed().collect();
        removed.push(i);
        Self::from_removed(self.num_blocks(), &removed)
    }
}

impl std::fmt::Display for BlockMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let removed: Vec<String> = self.removed().map(|i| i.to_string()).collect();
        write!(f, "removed [{}] of {}", removed.join(", "), self.num_blocks())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_duplicates() {
        assert!(BlockMask::from_removed(4, &[4]).is_err());
        assert!(BlockMask::from_removed(4, &[1, 1]).is_err());
        let m = BlockMask::from_removed(4, &[3, 1]).unwrap();
        assert_eq!(m.removed().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m.kept().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(m.first_removed(), Some(1));
        assert!(m.check_len(5).is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let m = BlockMask::from_removed(6, &[2, 5]).unwrap();
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<BlockMask>(&s).unwrap(), m);
        assert!(serde_json::from_str::<BlockMask>(r#"{"num_blocks":3,"removed":[3]}"#).is_err());
    }
}
