//! Last-n: remove the `n` blocks just before the final one.
//!
//! The simple heuristic that deeper blocks matter less (Gromov et al. 2024, arXiv 2403.17887,
//! observe that the final block should be kept; Men et al. 2024, arXiv 2403.03853, compare
//! against removing the last blocks). Removes blocks `L-1-n ..= L-2`; needs no calibration data
//! (the windows passed are ignored).
use crate::common::check_n;
use crate::error::Result;
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, ForwardCounts};
use std::sync::Arc;
use std::time::Instant;

/// Last-n has no settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastN;

impl Pruner for LastN {
    fn name(&self) -> &'static str {
        "last-n"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, _calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        let l = lm.num_blocks();
        check_n(n, l)?;
        let removed: Vec<usize> = (l - 1 - n..l - 1).collect();
        let mask = BlockMask::from_removed(l, &removed)?;
        Ok(PruneResult::new(self.name(), n, mask, Trace::LastN, ForwardCounts::default(), start.elapsed()))
    }
}
