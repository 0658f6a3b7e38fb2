//! Log-likelihood scoring of multiple-choice requests, as lm-evaluation-harness's
//! `loglikelihood` does it for Hugging Face causal models (`lm_eval/models/huggingface.py`).
//!
//! Tokenisation (`_encode_pair`): trailing whitespace of the context is moved to the front of the
//! continuation; then `whole = encode(context + continuation)`, `ctx = encode(context)`, and the
//! continuation's tokens are `whole[len(ctx)..]`. Encoding the pair whole keeps BPE merges across
//! the boundary the way the model saw such text in training (`" Paris"` is one token, not `" "` +
//! `"Paris"`); splitting at the context's token length follows lm-evaluation-harness exactly, even
//! in the rare case where the context's last token merges with the continuation. No BOS token is
//! added (lm-evaluation-harness's default for models whose tokenizer adds none, such as SmolLM2).
//! An empty context is rejected: lm-evaluation-harness substitutes the end-of-text token, which
//! evop's tasks never need.
//!
//! Scoring: the model input is `(ctx + cont)[..n - 1]`, truncated from the left to `max_len`
//! tokens; the log-likelihood is the sum over continuation tokens of `log_softmax(logits)` at the
//! position before each. Requests are sorted by length (longest first) and batched with right
//! padding: attention is causal, so padding after the last real token cannot change any real
//! position, and pad positions are never read. Only the continuation positions go through the
//! final norm and the vocabulary head.
use crate::error::{EvalError, Result};
use crate::task::McTask;
use candle_core::{DType, Tensor, D};
use evop_model::{run_blocks, AttnContext, BlockLm, BlockMask};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tokenizers::Tokenizer;

/// Token ids of texts, computed once per text. Keyed by the exact text; one cache must only ever
/// be used with one tokenizer.
#[derive(Clone, Debug, Default)]
pub struct TokenCache {
    map: HashMap<String, Vec<u32>>,
    hits: usize,
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ids of `text` (without special tokens), encoding it on first use.
    pub fn encode(&mut self, tokenizer: &Tokenizer, text: &str) -> Result<&[u32]> {
        if self.map.contains_key(text) {
            self.hits += 1;
        } else {
            let ids = tokenizer
                .encode(text, false)
                .map_err(|e| EvalError::Tokenizer { text: preview(text), message: e.to_string() })?
                .get_ids()
                .to_vec();
            self.map.insert(text.to_string(), ids);
        }
        Ok(&self.map[text])
    }

    /// Distinct texts encoded.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing has been encoded.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> usize {
        self.hits
    }
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(80).collect();
    if s.len() < text.len() {
        s.push_str("...");
    }
    s
}

/// Splits `(context, continuation)` into token ids the way lm-evaluation-harness's `_encode_pair` does.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    cache: &mut TokenCache,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (trimmed, format!("{}{continuation}", &context[trimmed.len()..]))
    } else {
        (context, continuation.to_string())
    };
    let whole = cache.encode(tokenizer, &format!("{context}{continuation}"))?.to_vec();
    let ctx = cache.encode(tokenizer, context)?.to_vec();
    let split = ctx.len().min(whole.len());
    Ok((ctx, whole[split..].to_vec()))
}

/// One tokenised option: `tokens` is context + continuation (left-truncated), of which the last
/// `cont_len` are scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub item: usize,
    pub choice: usize,
    pub tokens: Vec<u32>,
    pub cont_len: usize,
}

/// A task tokenised once for one tokenizer, ready to be scored under any number of masks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedTask {
    pub task: McTask,
    /// Every option of every item, item-major.
    pub requests: Vec<Request>,
}

/// Tokenises every option of `task`. `max_len` is the model's context length: longer requests lose
/// context tokens from the left (lm-evaluation-harness's rule); a continuation alone longer than
/// `max_len` is an error.
pub fn prepare_task(task: &McTask, tokenizer: &Tokenizer, cache: &mut TokenCache, max_len: usize) -> Result<PreparedTask> {
    if max_len < 2 {
        return Err(EvalError::Options { option: "max_len", value: max_len.to_string(), message: "must be at least 2".into() });
    }
    if task.is_empty() {
        return Err(EvalError::EmptyTask { task: task.name.clone() });
    }
    let mut requests = Vec::new();
    for (i, item) in task.items.iter().enumerate() {
        item.validate(&task.name)?;
        for (j, choice) in item.choices.iter().enumerate() {
            let fail = |message: String| EvalError::Item { task: task.name.clone(), index: item.id, message };
            if choice.context.trim().is_empty() {
                return Err(fail(format!("option {j} has an empty context")));
            }
            let (ctx, cont) = encode_pair(tokenizer, cache, &choice.context, &choice.continuation)?;
            if cont.is_empty() {
                return Err(fail(format!("option {j}'s continuation {:?} encodes to no tokens", choice.continuation)));
            }
            if cont.len() > max_len {
                return Err(fail(format!("option {j}'s continuation has {} tokens, more than the {max_len} the model accepts", cont.len())));
            }
            let mut tokens = ctx;
            tokens.extend_from_slice(&cont);
            let keep = tokens.len().min(max_len + 1);
            let tokens = tokens.split_off(tokens.len() - keep);
            requests.push(Request { item: i, choice: j, tokens, cont_len: cont.len() });
        }
    }
    Ok(PreparedTask { task: task.clone(), requests })
}

/// Sum of continuation log-probabilities of each request under `mask`, in request order, computed
/// `batch_size` requests at a time (longest first, right-padded).
pub fn request_logliks(lm: &dyn BlockLm, requests: &[Request], mask: &BlockMask, batch_size: usize) -> Result<Vec<f64>> {
    if batch_size == 0 {
        return Err(EvalError::Options { option: "batch_size", value: "0".into(), message: "must be at least 1".into() });
    }
    mask.check_len(lm.num_blocks())?;
    let vocab = lm.info().vocab_size;
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&r| (std::cmp::Reverse(requests[r].tokens.len()), r));
    let mut out = vec![0f64; requests.len()];
    for chunk in order.chunks(batch_size) {
        let batch: Vec<&Request> = chunk.iter().map(|&r| &requests[r]).collect();
        let sums = batch_logliks(lm, &batch, mask, vocab)?;
        for (&r, s) in chunk.iter().zip(sums) {
            out[r] = s;
        }
    }
    Ok(out)
}

fn batch_logliks(lm: &dyn BlockLm, batch: &[&Request], mask: &BlockMask, vocab: usize) -> Result<Vec<f64>> {
    let device = &lm.info().device;
    let seq = batch.iter().map(|r| r.tokens.len() - 1).max().unwrap_or(0);
    let mut ids = vec![0u32; batch.len() * seq];
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, r) in batch.iter().enumerate() {
        if let Some(&bad) = r.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EvalError::Vocab { request: format!("item {} option {}", r.item, r.choice), id: bad, vocab });
        }
        let input = &r.tokens[..r.tokens.len() - 1];
        ids[b * seq..b * seq + input.len()].copy_from_slice(input);
        for p in input.len() + 1 - r.cont_len..=input.len() {
            rows.push((b * seq + p - 1) as u32);
            targets.push(r.tokens[p]);
        }
    }
    let ids = Tensor::from_vec(ids, (batch.len(), seq), device)?;
    let ctx = AttnContext::new(lm.info(), seq, 0)?;
    let hidden = run_blocks(lm, lm.embed(&ids, 0)?, 0, mask, &ctx)?;
    let h = hidden.dim(2)?;
    let n = rows.len();
    let picked = hidden.reshape((batch.len() * seq, h))?.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
    let logits = lm.head(&picked.unsqueeze(0)?)?.squeeze(0)?.to_dtype(DType::F32)?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let target = Tensor::new(targets.as_slice(), device)?.unsqueeze(1)?;
    let chosen = logits.gather(&target, 1)?.squeeze(1)?;
    let logp: Vec<f32> = (chosen - lse)?.reshape(n)?.to_vec1()?;
    let mut sums = Vec::with_capacity(batch.len());
    let mut at = 0;
    for r in batch {
        sums.push(logp[at..at + r.cont_len].iter().map(|&x| x as f64).sum());
        at += r.cont_len;
    }
    Ok(sums)
}
