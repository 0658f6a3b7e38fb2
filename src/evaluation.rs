//! Perplexity of dense, masked or pruned models on held-out text with the standard protocol
//! (texts joined with "\n\n", tokenized once, non-overlapping windows), overall and per topic.
use crate::error::Result;
use evop_data::{Corpus, CorpusSplit};
use evop_model::perplexity::{cut_windows, perplexity, Perplexity};
use evop_model::{encode, BlockLm, BlockMask, LoadedModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Token windows of held-out text, overall and per topic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSet {
    pub seqlen: usize,
    /// Windows of the whole evaluation text (possibly capped).
    pub windows: Vec<Vec<u32>>,
    /// Windows per topic (each topic's texts joined and cut separately; possibly capped).
    pub topics: BTreeMap<String, Vec<Vec<u32>>>,
}

impl EvalSet {
    /// Windows of `seqlen` tokens from the evaluation split; `max_windows` caps the overall set
    /// (the first windows are kept) and `max_topic_windows` each topic's.
    pub fn from_split(
        model: &LoadedModel,
        split: &CorpusSplit,
        seqlen: usize,
        max_windows: Option<usize>,
        max_topic_windows: Option<usize>,
    ) -> Result<Self> {
        let tok = model.tokenizer()?;
        let mut windows = cut_windows(&encode(tok, &split.evaluation_text())?, seqlen);
        if let Some(m) = max_windows {
            windows.truncate(m);
        }
        let mut topics = BTreeMap::new();
        if max_topic_windows != Some(0) {
            for (topic, text) in split.evaluation_texts_by_topic() {
                let mut w = cut_windows(&encode(tok, &text)?, seqlen);
                if let Some(m) = max_topic_windows {
                    w.truncate(m);
                }
                if !w.is_empty() {
                    topics.insert(topic, w);
                }
            }
        }
        Ok(Self { seqlen, windows, topics })
    }

    /// Windows of a plain corpus (joined with "\n\n").
    pub fn from_corpus(model: &LoadedModel, corpus: &Corpus, seqlen: usize, max_windows: Option<usize>) -> Result<Self> {
        let mut windows = cut_windows(&encode(model.tokenizer()?, &corpus.joined_text())?, seqlen);
        if let Some(m) = max_windows {
            windows.truncate(m);
        }
        Ok(Self { seqlen, windows, topics: BTreeMap::new() })
    }

    /// Tokens predicted per evaluation.
    pub fn tokens(&self) -> usize {
        self.windows.len() * self.seqlen.saturating_sub(1)
    }
}

/// Perplexity overall and per topic, with the mean and worst topic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    pub overall: Perplexity,
    pub topics: BTreeMap<String, f64>,
    pub mean_topic: Option<f64>,
    pub worst_topic: Option<(String, f64)>,
}

/// Evaluates the masked model on `set`.
pub fn evaluate(lm: &dyn BlockLm, set: &EvalSet, mask: &BlockMask, batch_size: usize) -> Result<EvalReport> {
    let overall = perplexity(lm, &set.windows, mask, batch_size)?;
    let mut topics = BTreeMap::new();
    for (t, w) in &set.topics {
        topics.insert(t.clone(), perplexity(lm, w, mask, batch_size)?.perplexity);
    }
    let mean_topic = (!topics.is_empty()).then(|| topics.values().sum::<f64>() / topics.len() as f64);
    let worst_topic = topics.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(t, p)| (t.clone(), *p));
    Ok(EvalReport { overall, topics, mean_topic, worst_topic })
}
