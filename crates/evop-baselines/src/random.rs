//! Random: remove `n` blocks drawn uniformly without replacement, from a seed.
//!
//! The floor every method must clear. ChaCha8 seeded with `seed`, so a seed always gives the
//! same mask. Needs no calibration data (the windows passed are ignored).
use crate::common::{check_eligible, check_n, eligible_blocks};
use crate::error::Result;
use crate::{PruneResult, Pruner, Trace};
use evop_model::{BlockLm, BlockMask, ForwardCounts};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Random settings. Defaults: seed 0, no protected block.
#[derive(Clone, Debug, Default)]
pub struct RandomBlocks {
    pub seed: u64,
    /// Blocks never removed.
    pub protected: Vec<usize>,
}

/// How the random mask was drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandomTrace {
    pub seed: u64,
    pub protected: Vec<usize>,
}

impl RandomBlocks {
    /// Random removal with this seed.
    pub fn new(seed: u64) -> Self {
        Self { seed, protected: Vec::new() }
    }
}

impl Pruner for RandomBlocks {
    fn name(&self) -> &'static str {
        "random"
    }

    fn prune(&self, lm: &Arc<dyn BlockLm>, _calibration: &[Vec<u32>], n: usize) -> Result<PruneResult> {
        let start = Instant::now();
        let l = lm.num_blocks();
        check_n(n, l)?;
        let eligible = eligible_blocks(l, &self.protected)?;
        check_eligible("random", n, eligible.len(), l, format!("protected blocks {:?}", self.protected))?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let picked: Vec<usize> = rand::seq::index::sample(&mut rng, eligible.len(), n).into_iter().map(|k| eligible[k]).collect();
        let mask = BlockMask::from_removed(l, &picked)?;
        let trace = RandomTrace { seed: self.seed, protected: self.protected.clone() };
        Ok(PruneResult::new(self.name(), n, mask, Trace::Random(trace), ForwardCounts::default(), start.elapsed()))
    }
}
