//! Calibration loss of masked models, computed with exact reuse across candidates.
//!
//! Every pruning method (SLEB's greedy steps, one-shot ranking, exhaustive search, EvoP's
//! evolutionary search) asks the same question many times: the mean token NLL of each
//! calibration window under some mask. The reference implementations (SLEB's `sleb.py`, EvoP's
//! and EvoPress's search loops) run a full masked forward per candidate. Here:
//! - the dense residual stream at a block boundary is computed once per calibration batch (when
//!   first needed) and kept, so a candidate starts at its first skipped block (everything before it
//!   equals the dense model);
//! - a set of candidates is evaluated as a prefix tree over their kept-block sequences: every
//!   distinct prefix (set of applied blocks) is computed once;
//! - states at block boundaries are kept across calls in a [`PrefixCache`] under a byte budget, so
//!   a GA child resumes from its parents' states and an SLEB step from the previous step's;
//! - the tree is walked block by block: the states of all tree nodes that need the same block are
//!   stacked into one forward batch of up to `batch_size` windows (when a calibration batch is
//!   smaller than `batch_size`, several candidates share one block application's GEMMs);
//! - the loss is fused into one pass over the logits ([`fused_loss`]);
//! - block and head applications are counted, so the savings are measurable.
//!
//! Results equal the naive masked forward up to float reassociation: the same block runs on the
//! same input either way (with `cache_dtype` = bf16/f16 they do not: see [`EvaluatorOptions`]).
//!
//! Approximate option, off by default: `position_stride > 1` takes each window's loss over every
//! `stride`-th predicted position only (the blocks still run on all positions; only the head and
//! the loss shrink), for screening candidates cheaply.
mod fused_loss;
mod prefix_cache;

pub use prefix_cache::{CacheStats, KeptSet, PrefixCache};

use crate::error::{ModelError, Result};
use crate::mask::BlockMask;
use crate::arch::{AttnContext, BlockLm};
use crate::perplexity::batch_tensor;
use candle_core::{DType, Tensor};
use fused_loss::Positions;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many block and head applications (each over one calibration batch) were run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwardCounts {
    /// Block applications, one per (block, calibration batch, distinct input state); a stacked
    /// application of one block to several candidates' states counts once per state.
    pub block_forwards: u64,
    /// Head applications (final norm + LM head + loss), one per (candidate, calibration batch).
    pub head_forwards: u64,
    /// Candidates evaluated.
    pub candidates: u64,
}

/// What a window's loss is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean token negative log-likelihood of the window's next tokens (SLEB's criterion).
    #[default]
    Nll,
    /// Mean over positions of KL(dense || masked) between next-token distributions (EvoPress's
    /// criterion). Keeps the dense log-probabilities of every calibration position in memory:
    /// `windows x seqlen x vocab` floats.
    KlToDense,
}

/// Default byte budget of the persistent prefix cache on the CPU (and Metal): 1 GiB.
pub const DEFAULT_CACHE_BUDGET: usize = 1 << 30;

/// Upper bound of the default budget on CUDA ([`default_cache_budget`]).
pub const MAX_DEFAULT_CUDA_CACHE_BUDGET: usize = 16 << 30;

/// The persistent prefix cache's budget when [`EvaluatorOptions::cache_budget`] is `None`:
/// [`DEFAULT_CACHE_BUDGET`] on the CPU; on CUDA a quarter of the device's free memory when the
/// evaluator is created, at least [`DEFAULT_CACHE_BUDGET`] and at most
/// [`MAX_DEFAULT_CUDA_CACHE_BUDGET`]. A GPU holds few states at 1 GiB (Llama-2-7B at 8 x 512
/// tokens in bf16: 32 MiB each), and SLEB's next step reuses the chosen candidate's states only if
/// they are still cached: on one H200, 16 GiB took SLEB from 2,396 to 1,918 block forwards and
/// 19.8 to 24.1 evaluations/s (docs/gpu.md, "Search throughput against the PyTorch loop").
pub fn default_cache_budget(device: &candle_core::Device) -> usize {
    match crate::device::free_device_memory(device) {
        Some(free) => (free / 4).clamp(DEFAULT_CACHE_BUDGET, MAX_DEFAULT_CUDA_CACHE_BUDGET),
        None => DEFAULT_CACHE_BUDGET,
    }
}

/// Default [`EvaluatorOptions::stack_tokens`] on the CPU (and Metal): 512. On 2 vCPUs (SmolLM2
/// shape, f32, batches of 2 windows x 32 tokens) stacking to 512 tokens took SLEB from 1.66-1.71
/// to 2.20-2.26 evaluations/s and an EvoP run from 1.75-1.93 to 2.36-2.37; at 4 x 64-token batches
/// it made no difference (docs/performance.md, "Stacking small batches").
pub const DEFAULT_STACK_TOKENS: usize = 512;

/// Default [`EvaluatorOptions::stack_tokens`] on CUDA: 4096. On one H100 (Qwen2.5-Coder-1.5B,
/// bf16, 32 x 128 tokens in batches of 8 windows) stacking to 4096 tokens took SLEB from 69.7 to
/// 81.7 evaluations/s and an EvoP run from 51.3 to 60.9 (16384: 81.9 and 62.2); on the Llama-2-7B
/// shape, whose 1,024-token batches already fill the GPU, it made no difference (docs/gpu.md,
/// "Search throughput against the PyTorch loop").
pub const CUDA_DEFAULT_STACK_TOKENS: usize = 4096;

/// The tokens one stacked block forward may reach when [`EvaluatorOptions::stack_tokens`] is
/// `None`: [`CUDA_DEFAULT_STACK_TOKENS`] on CUDA, [`DEFAULT_STACK_TOKENS`] elsewhere.
pub fn default_stack_tokens(device: &candle_core::Device) -> usize {
    if device.is_cuda() {
        CUDA_DEFAULT_STACK_TOKENS
    } else {
        DEFAULT_STACK_TOKENS
    }
}

/// Settings of a [`CalibrationEvaluator`].
#[derive(Clone, Debug)]
pub struct EvaluatorOptions {
    /// Windows per forward batch. Default 8.
    pub batch_size: usize,
    /// Keep the dense hidden states at every block boundary once computed (outside the cache
    /// budget: at most `L + 1` per calibration batch). Default true.
    pub dense_cache: bool,
    /// Evaluate a set of candidates as a prefix tree. Default true.
    pub prefix_sharing: bool,
    /// Bytes of block-boundary states kept across calls (the persistent prefix cache; needs
    /// `prefix_sharing`); `Some(0)` keeps nothing between calls. Default `None`: sized for the
    /// model's device by [`default_cache_budget`] ([`CalibrationEvaluator::cache_budget`] tells
    /// the result). The dense states of `dense_cache` are not counted in it.
    pub cache_budget: Option<usize>,
    /// Store cached states in this dtype (`BF16`/`F16` halve the memory but make results
    /// inexact); `None` (default) stores them as computed.
    pub cache_dtype: Option<DType>,
    /// Stack the states of tree nodes that need the same block into one forward batch of up to
    /// `batch_size` windows, or up to `stack_tokens` tokens if that is more (needs
    /// `prefix_sharing`). Default true.
    pub stacking: bool,
    /// Tokens one stacked block forward may reach beyond `batch_size` windows: small calibration
    /// batches are stacked until their block forward has this many tokens; `Some(0)` stacks no
    /// more than `batch_size` windows. Default `None`: sized for the model's device by
    /// [`default_stack_tokens`].
    pub stack_tokens: Option<usize>,
    /// The per-window loss. Default [`LossKind::Nll`].
    pub loss: LossKind,
    /// Loss over every `position_stride`-th predicted position only, ending at the last one
    /// (approximate when > 1: for screening). Default 1 (every position).
    pub position_stride: usize,
}

impl Default for EvaluatorOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            dense_cache: true,
            prefix_sharing: true,
            cache_budget: None,
            cache_dtype: None,
            stacking: true,
            stack_tokens: None,
            loss: LossKind::Nll,
            position_stride: 1,
        }
    }
}

impl EvaluatorOptions {
    /// The reference behaviour: a full masked forward per candidate, nothing reused.
    pub fn naive(batch_size: usize) -> Self {
        Self {
            batch_size,
            dense_cache: false,
            prefix_sharing: false,
            cache_budget: Some(0),
            cache_dtype: None,
            stacking: false,
            stack_tokens: Some(0),
            loss: LossKind::Nll,
            position_stride: 1,
        }
    }

    /// Reuse within one call only, as before the persistent cache and stacking: dense boundary
    /// states and a per-call prefix tree.
    pub fn per_call(batch_size: usize) -> Self {
        Self { batch_size, cache_budget: Some(0), stacking: false, ..Self::default() }
    }
}

struct Batch {
    ids: Tensor,
    ctx: AttnContext,
    windows: usize,
    /// The predicted positions entering the loss.
    positions: Positions,
    /// `targets[w][k]`: the token predicted at `positions.list[k]` in window `w`.
    targets: Vec<Vec<u32>>,
    /// The dense model's next-token distributions for [`LossKind::KlToDense`].
    dense: Option<fused_loss::DenseDistribution>,
}

/// Computes per-window mean token NLL of masked models on a fixed calibration set.
pub struct CalibrationEvaluator {
    lm: Arc<dyn BlockLm>,
    batches: Vec<Batch>,
    options: EvaluatorOptions,
    /// The resolved [`EvaluatorOptions::stack_tokens`].
    stack_tokens: usize,
    block_forwards: AtomicU64,
    head_forwards: AtomicU64,
    candidates: AtomicU64,
    cache: Mutex<PrefixCache>,
    /// Calls so far (the cache's notion of time).
    epoch: AtomicU64,
}

/// A node of one call's prefix tree: the state after applying `key`'s blocks.
struct Node {
    key: KeptSet,
    /// The block that produced the state from the parent's, `None` for a node whose state was
    /// available (embeddings, dense cache or prefix cache).
    block: Option<usize>,
    parent: usize,
    state: Option<Tensor>,
    /// Children not yet computed.
    pending: usize,
    /// Candidates whose final state this is.
    leaves: Vec<usize>,
}

impl CalibrationEvaluator {
    /// Prepares the calibration windows (all of one length) in batches (for [`LossKind::KlToDense`]
    /// also runs the dense model over them).
    pub fn new(lm: Arc<dyn BlockLm>, windows: &[Vec<u32>], options: EvaluatorOptions) -> Result<Self> {
        if windows.is_empty() {
            return Err(ModelError::Input("the calibration set is empty".into()));
        }
        if windows[0].len() < 2 {
            return Err(ModelError::Input("a window needs at least 2 tokens to predict one".into()));
        }
        let mut batches = Vec::new();
        for chunk in windows.chunks(options.batch_size.max(1)) {
            let ids = batch_tensor(lm.as_ref(), chunk)?;
            let s = ids.dim(1)?;
            let ctx = AttnContext::new(lm.info(), s, 0)?;
            let positions = Positions::strided(s, options.position_stride, &lm.info().device)?;
            let targets = chunk.iter().map(|w| positions.list.iter().map(|&p| w[p as usize + 1]).collect()).collect();
            batches.push(Batch { ids, ctx, windows: chunk.len(), positions, targets, dense: None });
        }
        let budget = options.cache_budget.unwrap_or_else(|| default_cache_budget(&lm.info().device));
        let stack_tokens = options.stack_tokens.unwrap_or_else(|| default_stack_tokens(&lm.info().device));
        let cache = Mutex::new(PrefixCache::new(budget, options.cache_dtype));
        let me = Self {
            lm,
            batches,
            options,
            stack_tokens,
            block_forwards: AtomicU64::new(0),
            head_forwards: AtomicU64::new(0),
            candidates: AtomicU64::new(0),
            cache,
            epoch: AtomicU64::new(0),
        };
        me.fill_dense_distributions()
    }

    fn fill_dense_distributions(mut self) -> Result<Self> {
        if self.options.loss != LossKind::KlToDense {
            return Ok(self);
        }
        let l = self.lm.num_blocks();
        for b in 0..self.batches.len() {
            let h = {
                let mut cache = self.cache.lock().expect("prefix cache poisoned");
                self.dense_state(b, &self.batches[b], l, &mut cache)?
            };
            let dense = fused_loss::DenseDistribution::new(self.lm.as_ref(), &h, &self.batches[b].positions)?;
            self.batches[b].dense = Some(dense);
        }
        Ok(self)
    }

    /// The key of the dense model's state at boundary `d` (blocks `0..d` applied).
    fn dense_key(&self, d: usize) -> KeptSet {
        (0..d).fold(KeptSet::empty(self.lm.num_blocks()), |k, i| k.with(i))
    }

    /// The dense model's state at boundary `upto`: with the dense cache, from the deepest pinned
    /// dense state at or before it, pinning what is computed; otherwise from the embeddings.
    fn dense_state(&self, bi: usize, batch: &Batch, upto: usize, cache: &mut PrefixCache) -> Result<Tensor> {
        let dtype = self.lm.info().dtype;
        let (mut d, mut h) = (0, None);
        if self.options.dense_cache {
            for k in (0..=upto).rev() {
                if let Some(t) = cache.get(bi, &self.dense_key(k), 0, dtype)? {
                    (d, h) = (k, Some(t));
                    break;
                }
            }
        }
        let mut h = match h {
            Some(h) => h,
            None => {
                let e = self.lm.embed(&batch.ids, 0)?;
                if self.options.dense_cache {
                    cache.pin(bi, &self.dense_key(0), &e);
                }
                e
            }
        };
        let mut key = self.dense_key(d);
        for i in d..upto {
            h = self.lm.block(i, &h, &batch.ctx, None)?;
            self.block_forwards.fetch_add(1, Ordering::Relaxed);
            key = key.with(i);
            if self.options.dense_cache {
                cache.pin(bi, &key, &h);
            }
        }
        Ok(h)
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn BlockLm> {
        &self.lm
    }

    /// The settings.
    pub fn options(&self) -> &EvaluatorOptions {
        &self.options
    }

    /// Byte budget of the persistent prefix cache (the resolved [`EvaluatorOptions::cache_budget`]).
    pub fn cache_budget(&self) -> usize {
        self.cache.lock().expect("prefix cache poisoned").budget()
    }

    /// Tokens one stacked block forward may reach (the resolved [`EvaluatorOptions::stack_tokens`]).
    pub fn stack_tokens(&self) -> usize {
        self.stack_tokens
    }

    /// Number of calibration windows.
    pub fn num_windows(&self) -> usize {
        self.batches.iter().map(|b| b.windows).sum()
    }

    /// Block, head and candidate counts so far (dense states included).
    pub fn counts(&self) -> ForwardCounts {
        ForwardCounts {
            block_forwards: self.block_forwards.load(Ordering::Relaxed),
            head_forwards: self.head_forwards.load(Ordering::Relaxed),
            candidates: self.candidates.load(Ordering::Relaxed),
        }
    }

    /// What the persistent prefix cache has done so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.lock().expect("prefix cache poisoned").stats()
    }

    /// Drops every state of the persistent prefix cache (the pinned dense states stay).
    pub fn clear_cache(&self) {
        self.cache.lock().expect("prefix cache poisoned").clear();
    }

    /// Mean token NLL of every window under `mask`.
    pub fn window_losses(&self, mask: &BlockMask) -> Result<Vec<f64>> {
        Ok(self.window_losses_many(std::slice::from_ref(mask))?.remove(0))
    }

    /// Mean token NLL of every window under each mask, in order. Windows are ordered as given to
    /// [`CalibrationEvaluator::new`].
    pub fn window_losses_many(&self, masks: &[BlockMask]) -> Result<Vec<Vec<f64>>> {
        let l = self.lm.num_blocks();
        for m in masks {
            m.check_len(l)?;
        }
        self.candidates.fetch_add(masks.len() as u64, Ordering::Relaxed);
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut out: Vec<Vec<f64>> = vec![Vec::with_capacity(self.num_windows()); masks.len()];
        let mut cache = self.cache.lock().expect("prefix cache poisoned");
        for (bi, batch) in self.batches.iter().enumerate() {
            let losses = if self.options.prefix_sharing {
                self.tree(bi, batch, masks, epoch, &mut cache)?
            } else {
                masks.iter().map(|m| self.single(bi, batch, m, &mut cache)).collect::<Result<Vec<_>>>()?
            };
            for (k, l) in losses.into_iter().enumerate() {
                out[k].extend(l);
            }
        }
        Ok(out)
    }

    /// One candidate on its own: from its first skipped block with the dense cache, otherwise
    /// from the embeddings (the naive path).
    fn single(&self, bi: usize, batch: &Batch, mask: &BlockMask, cache: &mut PrefixCache) -> Result<Vec<f64>> {
        let l = self.lm.num_blocks();
        let start = if self.options.dense_cache { mask.first_removed().unwrap_or(l) } else { 0 };
        let mut h = self.dense_state(bi, batch, start, cache)?;
        for i in (start..l).filter(|&i| mask.is_kept(i)) {
            h = self.lm.block(i, &h, &batch.ctx, None)?;
            self.block_forwards.fetch_add(1, Ordering::Relaxed);
        }
        self.head_losses(batch, &h)
    }

    /// The state for `key` if it is available without running a block: the embeddings, a pinned
    /// dense state, or a prefix-cache entry.
    fn available(&self, bi: usize, batch: &Batch, key: &KeptSet, epoch: u64, cache: &mut PrefixCache) -> Result<Option<Tensor>> {
        if key.is_empty() {
            return Ok(Some(self.dense_state(bi, batch, 0, cache)?));
        }
        cache.get(bi, key, epoch, self.lm.info().dtype)
    }

    /// All candidates of one call on one calibration batch, as a prefix tree over their sets of
    /// applied blocks. Each candidate starts from the deepest state on its path that is already
    /// planned in this call or available; the missing nodes are then computed block by block
    /// (ascending), nodes that need the same block stacked into one forward batch.
    fn tree(&self, bi: usize, batch: &Batch, masks: &[BlockMask], epoch: u64, cache: &mut PrefixCache) -> Result<Vec<Vec<f64>>> {
        let l = self.lm.num_blocks();
        let mut nodes: Vec<Node> = Vec::new();
        let mut index: HashMap<KeptSet, usize> = HashMap::new();
        let mut paths: Vec<Vec<KeptSet>> = Vec::with_capacity(masks.len());
        for (k, mask) in masks.iter().enumerate() {
            let kept: Vec<usize> = mask.kept().collect();
            let mut keys = Vec::with_capacity(kept.len() + 1);
            keys.push(KeptSet::empty(l));
            for &b in &kept {
                let next = keys.last().expect("non-empty").with(b);
                keys.push(next);
            }
            let mut at = None;
            for d in (0..keys.len()).rev() {
                if let Some(&n) = index.get(&keys[d]) {
                    at = Some((d, n));
                    break;
                }
                if let Some(state) = self.available(bi, batch, &keys[d], epoch, cache)? {
                    nodes.push(Node { key: keys[d].clone(), block: None, parent: usize::MAX, state: Some(state), pending: 0, leaves: Vec::new() });
                    index.insert(keys[d].clone(), nodes.len() - 1);
                    at = Some((d, nodes.len() - 1));
                    break;
                }
            }
            let (d0, mut cur) = at.expect("the embeddings are always available");
            for d in d0 + 1..keys.len() {
                nodes[cur].pending += 1;
                nodes.push(Node { key: keys[d].clone(), block: Some(kept[d - 1]), parent: cur, state: None, pending: 0, leaves: Vec::new() });
                index.insert(keys[d].clone(), nodes.len() - 1);
                cur = nodes.len() - 1;
            }
            nodes[cur].leaves.push(k);
            paths.push(keys);
        }
        let mut losses: Vec<Option<Vec<f64>>> = vec![None; masks.len()];
        let mut by_block: Vec<Vec<usize>> = vec![Vec::new(); l];
        for (n, node) in nodes.iter_mut().enumerate() {
            match node.block {
                Some(b) => by_block[b].push(n),
                None => {
                    if !node.leaves.is_empty() {
                        let state = node.state.clone().expect("available");
                        self.finish(batch, node, &state, &mut losses)?;
                    }
                    if node.pending == 0 {
                        node.state = None;
                    }
                }
            }
        }
        let per_call = if self.options.stacking {
            let tokens = batch.windows * batch.ctx.seq_len.max(1);
            (self.options.batch_size / batch.windows).max(self.stack_tokens / tokens).max(1)
        } else {
            1
        };
        for (j, group) in by_block.iter().enumerate() {
            for chunk in group.chunks(per_call) {
                let inputs: Vec<Tensor> =
                    chunk.iter().map(|&n| nodes[nodes[n].parent].state.clone().expect("a parent is computed before its children")).collect();
                let x = if inputs.len() == 1 { inputs[0].clone() } else { Tensor::cat(&inputs, 0)? };
                drop(inputs);
                let y = self.lm.block(j, &x, &batch.ctx, None)?;
                drop(x);
                self.block_forwards.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                for (c, &n) in chunk.iter().enumerate() {
                    let state = if chunk.len() == 1 { y.clone() } else { y.narrow(0, c * batch.windows, batch.windows)?.force_contiguous()? };
                    if self.options.dense_cache && nodes[n].key.is_dense_prefix() {
                        cache.pin(bi, &nodes[n].key, &state);
                    } else {
                        cache.insert(bi, &nodes[n].key, &state, epoch)?;
                    }
                    let p = nodes[n].parent;
                    nodes[p].pending -= 1;
                    if nodes[p].pending == 0 {
                        nodes[p].state = None;
                    }
                    if !nodes[n].leaves.is_empty() {
                        self.finish(batch, &mut nodes[n], &state, &mut losses)?;
                    }
                    if nodes[n].pending > 0 {
                        nodes[n].state = Some(state);
                    }
                }
            }
        }
        let losses: Vec<Vec<f64>> = losses.into_iter().map(|l| l.expect("every candidate reaches a leaf")).collect();
        for (keys, l) in paths.iter().zip(&losses) {
            let mean = l.iter().sum::<f64>() / l.len() as f64;
            for key in keys {
                cache.score(bi, key, epoch, mean);
            }
        }
        Ok(losses)
    }

    /// The head on a leaf's final state; every candidate ending there gets the losses.
    fn finish(&self, batch: &Batch, node: &mut Node, state: &Tensor, losses: &mut [Option<Vec<f64>>]) -> Result<()> {
        let v = self.head_losses(batch, state)?;
        for &k in &node.leaves {
            losses[k] = Some(v.clone());
        }
        Ok(())
    }

    /// Per-window loss from the last block's output.
    fn head_losses(&self, batch: &Batch, h: &Tensor) -> Result<Vec<f64>> {
        self.head_forwards.fetch_add(1, Ordering::Relaxed);
        match &batch.dense {
            Some(dense) => fused_loss::window_mean_kl(self.lm.as_ref(), h, &batch.positions, dense),
            None => fused_loss::window_mean_nll(self.lm.as_ref(), h, &batch.targets, &batch.positions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::load::{load, LoadOptions};
    use crate::perplexity::window_nlls;

    fn tiny() -> Arc<dyn BlockLm> {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
        load(&dir, &LoadOptions::default()).unwrap().lm
    }

    fn windows() -> Vec<Vec<u32>> {
        (0..5).map(|w| (0..12).map(|t| ((w * 31 + t * 7) % 120 + 4) as u32).collect()).collect()
    }

    #[test]
    fn reuse_equals_the_naive_forward_and_saves_blocks() {
        let lm = tiny();
        let masks: Vec<BlockMask> = [vec![], vec![1], vec![2], vec![0, 3], vec![1, 2], vec![3], vec![2]]
            .iter()
            .map(|r| BlockMask::from_removed(4, r).unwrap())
            .collect();
        let fast = CalibrationEvaluator::new(lm.clone(), &windows(), EvaluatorOptions { batch_size: 2, ..Default::default() }).unwrap();
        let naive = CalibrationEvaluator::new(lm.clone(), &windows(), EvaluatorOptions::naive(2)).unwrap();
        let a = fast.window_losses_many(&masks).unwrap();
        let b = naive.window_losses_many(&masks).unwrap();
        for (k, m) in masks.iter().enumerate() {
            let direct = window_nlls(lm.as_ref(), &windows(), m, 5).unwrap();
            for w in 0..5 {
                assert!((a[k][w] - direct[w]).abs() <= 1e-6 * direct[w].abs(), "mask {m}: {} vs {}", a[k][w], direct[w]);
                assert!((b[k][w] - direct[w]).abs() <= 1e-6 * direct[w].abs());
            }
        }
        let (f, n) = (fast.counts(), naive.counts());
        assert!(f.block_forwards < n.block_forwards, "{f:?} vs {n:?}");
        // The naive path runs every kept block of every candidate on each of the 3 batches.
        let kept: u64 = masks.iter().map(|m| (4 - m.num_removed()) as u64).sum();
        assert_eq!(n.block_forwards, 3 * kept);
        assert_eq!(n.head_forwards, 3 * masks.len() as u64);
    }

    /// A 12-block random Llama (hidden 32, vocabulary 96) whose blocks matter: weights uniform with
    /// standard deviation 0.2 from a seeded SplitMix64, norms ones.
    pub(crate) fn deep(blocks: usize, seed: u64) -> Arc<dyn BlockLm> {
        use crate::arch::llama::{Llama, LlamaConfig};
        let cfg = LlamaConfig {
            vocab_size: 96,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: blocks,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            head_dim: None,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            sliding_window: None,
            attention_bias: false,
            use_sliding_window: false,
        };
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut w = std::collections::HashMap::new();
        let mut put = |name: String, shape: &[usize], std: f32| {
            let a = std * 3f32.sqrt();
            let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| (2.0 * next() - 1.0) * a).collect();
            w.insert(name, Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap());
        };
        put("model.embed_tokens.weight".into(), &[96, 32], 1.0);
        put("lm_head.weight".into(), &[96, 32], 0.2);
        for i in 0..blocks {
            let p = format!("model.layers.{i}");
            for (n, shape) in [
                ("self_attn.q_proj", [32, 32]),
                ("self_attn.k_proj", [16, 32]),
                ("self_attn.v_proj", [16, 32]),
                ("self_attn.o_proj", [32, 32]),
                ("mlp.gate_proj", [64, 32]),
                ("mlp.up_proj", [64, 32]),
                ("mlp.down_proj", [32, 64]),
            ] {
                put(format!("{p}.{n}.weight"), &shape, 0.2);
            }
        }
        for i in 0..blocks {
            for n in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(format!("model.layers.{i}.{n}.weight"), Tensor::ones(32, DType::F32, &candle_core::Device::Cpu).unwrap());
            }
        }
        w.insert("model.norm.weight".into(), Tensor::ones(32, DType::F32, &candle_core::Device::Cpu).unwrap());
        let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &candle_core::Device::Cpu);
        Arc::new(Llama::new(&cfg, crate::arch::Architecture::Llama, vb).unwrap())
    }

    fn deep_windows(count: usize, len: usize) -> Vec<Vec<u32>> {
        (0..count).map(|w| (0..len).map(|t| ((w * 37 + t * 11 + t * t * 3) % 96) as u32).collect()).collect()
    }

    /// Seeded random masks of 12 blocks removing 1 to 5.
    fn random_masks(seed: u64, count: usize) -> Vec<BlockMask> {
        let mut x = seed;
        let mut next = move |m: usize| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as usize) % m
        };
        (0..count)
            .map(|_| {
                let n = 1 + next(5);
                let mut removed: Vec<usize> = Vec::new();
                while removed.len() < n {
                    let b = next(12);
                    if !removed.contains(&b) {
                        removed.push(b);
                    }
                }
                BlockMask::from_removed(12, &removed).unwrap()
            })
            .collect()
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{what}: {a} vs {b}");
        }
    }

    /// Distinct non-empty prefixes (sets of applied blocks) over all masks: the block forwards
    /// an unbounded cache needs per calibration batch (no block runs twice on the same input).
    fn distinct_nodes(masks: &[BlockMask]) -> u64 {
        let mut set = std::collections::HashSet::new();
        for m in masks {
            let mut key = KeptSet::empty(m.num_blocks());
            for b in m.kept() {
                key = key.with(b);
                set.insert(key.clone());
            }
        }
        set.len() as u64
    }

    #[test]
    fn unset_budget_and_stacking_resolve_for_the_device() {
        let lm = tiny();
        let device = lm.info().device.clone();
        let unset = CalibrationEvaluator::new(lm.clone(), &windows(), EvaluatorOptions::default()).unwrap();
        assert_eq!(unset.stack_tokens(), default_stack_tokens(&device));
        assert_eq!(unset.cache_budget(), default_cache_budget(&device));
        if device.is_cpu() {
            assert_eq!(unset.stack_tokens(), DEFAULT_STACK_TOKENS);
            assert_eq!(unset.cache_budget(), DEFAULT_CACHE_BUDGET);
        }
        let set = EvaluatorOptions { stack_tokens: Some(96), cache_budget: Some(1 << 20), ..Default::default() };
        let set = CalibrationEvaluator::new(lm, &windows(), set).unwrap();
        assert_eq!((set.stack_tokens(), set.cache_budget()), (96, 1 << 20));
    }

    #[test]
    fn persistent_cache_and_stacking_equal_the_naive_forward_on_random_masks() {
        let lm = deep(12, 1);
        let windows = deep_windows(5, 10);
        let calls: Vec<Vec<BlockMask>> = (0..4).map(|c| random_masks(100 + c, 9)).collect();
        let all: Vec<BlockMask> = calls.iter().flatten().cloned().collect();
        let direct: Vec<Vec<f64>> = all.iter().map(|m| window_nlls(lm.as_ref(), &windows, m, 5).unwrap()).collect();
        let state_bytes = 4 * 10 * 32 * 4; // a 4-window batch's state
        let variants = [
            ("default", EvaluatorOptions { batch_size: 4, ..Default::default() }),
            ("tight budget", EvaluatorOptions { batch_size: 4, cache_budget: Some(6 * state_bytes), ..Default::default() }),
            ("no stacking", EvaluatorOptions { batch_size: 4, stacking: false, ..Default::default() }),
            ("wide stacking", EvaluatorOptions { batch_size: 4, stack_tokens: Some(200), ..Default::default() }),
            ("no dense cache", EvaluatorOptions { batch_size: 4, dense_cache: false, ..Default::default() }),
            ("per call", EvaluatorOptions::per_call(4)),
            ("naive", EvaluatorOptions::naive(4)),
        ];
        let mut blocks = Vec::new();
        for (name, opts) in variants {
            let ev = CalibrationEvaluator::new(lm.clone(), &windows, opts).unwrap();
            let mut k = 0;
            for call in &calls {
                for got in ev.window_losses_many(call).unwrap() {
                    assert_close(&got, &direct[k], name);
                    k += 1;
                }
            }
            let c = ev.counts();
            // One head per distinct mask of a call (per batch) when sharing, one per candidate otherwise.
            let heads: u64 = if name == "naive" { 36 } else { calls.iter().map(|c| c.iter().collect::<std::collections::HashSet<_>>().len() as u64).sum() };
            assert_eq!((c.candidates, c.head_forwards), (36, 2 * heads), "{name}");
            blocks.push((name, c.block_forwards, ev.cache_stats()));
        }
        let get = |n: &str| *blocks.iter().find(|b| b.0 == n).unwrap();
        // An unbounded cache computes every distinct prefix exactly once per batch (2 batches).
        assert_eq!(get("default").1, 2 * distinct_nodes(&all));
        assert_eq!(get("no stacking").1, get("default").1);
        assert_eq!(get("wide stacking").1, get("default").1);
        assert!(get("default").2.hits > 0 && get("default").2.evictions == 0);
        let tight = get("tight budget");
        assert!(tight.2.evictions > 0 && tight.2.peak_bytes <= 6 * state_bytes, "{:?}", tight.2);
        assert!(get("default").1 <= tight.1 && tight.1 <= get("per call").1, "{blocks:?}");
        assert!(get("default").1 < get("per call").1 && get("per call").1 < get("naive").1, "{blocks:?}");
        // Without pinned dense states, dense prefixes are ordinary cache entries: same count here.
        assert_eq!(get("no dense cache").1, get("default").1);
    }

    #[test]
    fn sleb_steps_resume_from_the_previous_step_and_choose_the_same_blocks() {
        let lm = deep(12, 2);
        let windows = deep_windows(3, 12);
        let fast = CalibrationEvaluator::new(lm.clone(), &windows, EvaluatorOptions::default()).unwrap();
        let per_call = CalibrationEvaluator::new(lm.clone(), &windows, EvaluatorOptions::per_call(8)).unwrap();
        let mut mask = BlockMask::dense(12);
        let mut alive: Vec<usize> = (0..12).collect();
        for _ in 0..4 {
            let cands: Vec<BlockMask> = alive[1..alive.len() - 1].iter().map(|&b| mask.with_removed(b).unwrap()).collect();
            let a = fast.window_losses_many(&cands).unwrap();
            let b = per_call.window_losses_many(&cands).unwrap();
            let mut best = (f64::INFINITY, 0);
            for (k, m) in cands.iter().enumerate() {
                let direct = window_nlls(lm.as_ref(), &windows, m, 8).unwrap();
                assert_close(&a[k], &direct, "persistent");
                assert_close(&b[k], &direct, "per call");
                let sum: f64 = direct.iter().sum();
                if sum < best.0 {
                    best = (sum, k);
                }
            }
            let pick = |v: &[Vec<f64>]| {
                (0..v.len()).min_by(|&x, &y| v[x].iter().sum::<f64>().total_cmp(&v[y].iter().sum::<f64>())).unwrap()
            };
            assert_eq!(pick(&a), best.1);
            assert_eq!(pick(&b), best.1);
            let removed = mask.kept().find(|&b| !cands[best.1].is_kept(b)).unwrap();
            mask = cands[best.1].clone();
            alive.retain(|&b| b != removed);
        }
        let (f, p) = (fast.counts(), per_call.counts());
        assert!(f.block_forwards < p.block_forwards, "{f:?} vs {p:?}");
        assert!(fast.cache_stats().hits > 0);
    }

    #[test]
    fn narrow_cache_storage_is_close_but_not_exact() {
        let lm = deep(12, 3);
        let windows = deep_windows(2, 10);
        let opts = EvaluatorOptions { cache_dtype: Some(DType::BF16), ..Default::default() };
        let ev = CalibrationEvaluator::new(lm.clone(), &windows, opts).unwrap();
        let masks = random_masks(7, 12);
        ev.window_losses_many(&masks).unwrap();
        // Second call: resumed from bf16 states wherever a prefix is shared.
        let masks = random_masks(8, 12);
        let got = ev.window_losses_many(&masks).unwrap();
        assert!(ev.cache_stats().hits > 0);
        for (m, g) in masks.iter().zip(&got) {
            let direct = window_nlls(lm.as_ref(), &windows, m, 8).unwrap();
            for (a, b) in g.iter().zip(&direct) {
                assert!((a - b).abs() <= 2e-2 * b.abs(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn strided_positions_give_the_loss_over_those_positions() {
        let lm = deep(12, 4);
        let windows = deep_windows(3, 11);
        let mask = BlockMask::from_removed(12, &[3, 7]).unwrap();
        let opts = EvaluatorOptions { position_stride: 3, ..Default::default() };
        let got = CalibrationEvaluator::new(lm.clone(), &windows, opts).unwrap().window_losses(&mask).unwrap();
        // Direct: per-token NLL of every position, then the mean over positions 0, 3, 6, 9 (ending at
        // the last predicted position, 9).
        let per_token: Vec<Vec<f32>> = crate::perplexity::masked_token_nll(lm.as_ref(), &windows, &mask).unwrap().to_vec2().unwrap();
        for w in 0..3 {
            let want = [0, 3, 6, 9].iter().map(|&p| per_token[w][p] as f64).sum::<f64>() / 4.0;
            assert!((got[w] - want).abs() <= 1e-5 * want.abs(), "{} vs {want}", got[w]);
        }
    }

    #[test]
    fn kl_to_dense_is_zero_for_the_dense_model_and_matches_a_direct_computation() {
        // On `EVOP_TEST_DEVICE` (the tensor-operation path off the CPU).
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
        let device = crate::device::test_device().unwrap();
        let lm = load(&dir, &LoadOptions { device, ..Default::default() }).unwrap().lm;
        let opts = EvaluatorOptions { batch_size: 2, loss: LossKind::KlToDense, ..Default::default() };
        let ev = CalibrationEvaluator::new(lm.clone(), &windows(), opts).unwrap();
        let mask = BlockMask::from_removed(4, &[2]).unwrap();
        let out = ev.window_losses_many(&[BlockMask::dense(4), mask.clone()]).unwrap();
        assert!(out[0].iter().all(|&k| k.abs() < 1e-6), "{:?}", out[0]);
        // Direct: full logits of both models, KL per position, mean per window.
        let ids = crate::perplexity::batch_tensor(lm.as_ref(), &windows()).unwrap();
        let lp = |m: &BlockMask| {
            let logits = crate::arch::forward_masked(lm.as_ref(), &ids, m).unwrap().narrow(1, 0, 11).unwrap();
            candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap()
        };
        let (p, q) = (lp(&BlockMask::dense(4)), lp(&mask));
        let kl: Vec<f32> = (p.exp().unwrap() * (p - q).unwrap()).unwrap().sum(2).unwrap().mean(1).unwrap().to_vec1().unwrap();
        for w in 0..5 {
            assert!(out[1][w] > 1e-4, "removing a block must move the distribution");
            assert!((out[1][w] - kl[w] as f64).abs() < 1e-5, "{} vs {}", out[1][w], kl[w]);
        }
    }

    #[test]
    fn empty_calibration_and_wrong_mask_are_errors() {
        let lm = tiny();
        assert!(CalibrationEvaluator::new(lm.clone(), &[], EvaluatorOptions::default()).is_err());
        let ev = CalibrationEvaluator::new(lm, &windows(), EvaluatorOptions::default()).unwrap();
        assert!(ev.window_losses(&BlockMask::dense(5)).is_err());
    }
}
