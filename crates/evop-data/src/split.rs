//! The fixed, deterministic split of a corpus into a calibration pool and an evaluation set.
//!
//! Rule ([`SplitRule::default`]): the document with file-order index `i` ([`DocMeta::index`]) goes
//! to the **evaluation** set when `i % 10 == 0`, otherwise to the **calibration pool**. For the
//! Wikipedia leads (10,033 articles) that is 1,004 evaluation and 9,029 calibration articles, spread
//! evenly over the file and hence over its topics. No randomness is involved, so every run and
//! every machine gets the same split; the calibration sampler never sees evaluation text.
//!
//! Perplexity on the evaluation set follows the standard protocol (SLEB, EvoP): the evaluation
//! documents' texts in file order joined with `"\n\n"` ([`CorpusSplit::evaluation_text`]),
//! tokenized once, cut into windows. Per-topic texts ([`CorpusSplit::evaluation_texts_by_topic`])
//! serve per-topic perplexity.
//!
//! [`DocMeta::index`]: crate::corpus::DocMeta::index
use crate::corpus::Corpus;
use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which documents are held out for evaluation: those whose index `i` has `i % modulus == eval_residue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRule {
    pub modulus: usize,
    pub eval_residue: usize,
}

impl Default for SplitRule {
    /// `modulus = 10`, `eval_residue = 0`: every tenth document, starting with the first, is evaluation.
    fn default() -> Self {
        Self { modulus: 10, eval_residue: 0 }
    }
}

impl SplitRule {
    /// Checks `modulus >= 2` (both sides non-empty) and `eval_residue < modulus`.
    pub fn validate(&self) -> Result<()> {
        if self.modulus < 2 {
            return Err(DataError::param("split modulus", self.modulus, "must be at least 2"));
        }
        if self.eval_residue >= self.modulus {
            return Err(DataError::param(
                "split eval_residue",
                self.eval_residue,
                format!("must be smaller than the modulus {}", self.modulus),
            ));
        }
        Ok(())
    }

    /// Whether the document with file-order index `index` belongs to the evaluation set.
    pub fn is_evaluation(&self, index: usize) -> bool {
        index % self.modulus == self.eval_residue
    }

    /// Splits a corpus; documents keep their metadata (including the original index) and order.
    pub fn split(&self, corpus: &Corpus) -> Result<CorpusSplit> {
        self.validate()?;
        let (evaluation, calibration): (Vec<_>, Vec<_>) =
            corpus.documents.iter().cloned().partition(|d| self.is_evaluation(d.meta.index));
        Ok(CorpusSplit {
            calibration: Corpus { name: format!("{}/calibration", corpus.name), documents: calibration },
            evaluation: Corpus { name: format!("{}/evaluation", corpus.name), documents: evaluation },
            rule: *self,
        })
    }
}

/// A corpus split into calibration pool and evaluation set.
#[derive(Clone, Debug)]
pub struct CorpusSplit {
    pub calibration: Corpus,
    pub evaluation: Corpus,
    pub rule: SplitRule,
}

impl CorpusSplit {
    /// The evaluation texts in file order joined with `"\n\n"` (the standard perplexity protocol).
    pub fn evaluation_text(&self) -> String {
        self.evaluation.joined_text()
    }

    /// Evaluation text per topic (documents of one topic in file order, joined with `"\n\n"`),
    /// keyed by topic name in sorted order. Documents without a topic are left out.
    pub fn evaluation_texts_by_topic(&self) -> BTreeMap<String, String> {
        let mut by_topic: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for d in &self.evaluation.documents {
            if let Some(topic) = &d.meta.topic {
                by_topic.entry(topic.clone()).or_default().push(&d.text);
            }
        }
        by_topic.into_iter().map(|(t, texts)| (t, evop_model::perplexity::join_texts(&texts))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_split_takes_every_tenth_document_from_the_first() {
        let texts: Vec<String> = (0..25).map(|i| format!("doc {i}")).collect();
        let mut corpus = Corpus::from_texts("t", &texts);
        for d in &mut corpus.documents {
            d.meta.topic = Some(if d.meta.index % 2 == 0 { "even" } else { "odd" }.into());
        }
        let s = SplitRule::default().split(&corpus).unwrap();
        let eval: Vec<usize> = s.evaluation.documents.iter().map(|d| d.meta.index).collect();
        assert_eq!(eval, vec![0, 10, 20]);
        assert_eq!(s.calibration.len(), 22);
        assert!(s.calibration.documents.iter().all(|d| d.meta.index % 10 != 0));
        assert_eq!(s.evaluation_text(), "doc 0\n\ndoc 10\n\ndoc 20");
        let by_topic = s.evaluation_texts_by_topic();
        assert_eq!(by_topic.len(), 1);
        assert_eq!(by_topic["even"], "doc 0\n\ndoc 10\n\ndoc 20");
    }

    #[test]
    fn residue_is_configurable_and_checked() {
        let corpus = Corpus::from_texts("t", &["a", "b", "c", "d"]);
        let s = SplitRule { modulus: 2, eval_residue: 1 }.split(&corpus).unwrap();
        assert_eq!(s.evaluation.texts(), vec!["b", "d"]);
        assert!(SplitRule { modulus: 1, eval_residue: 0 }.validate().is_err());
        let e = SplitRule { modulus: 10, eval_residue: 10 }.validate().unwrap_err().to_string();
        assert!(e.contains("eval_residue") && e.contains("10"), "{e}");
    }
}
