//! Multiple-choice tasks in lm-evaluation-harness's request form, and deterministic seeded subsets.
//!
//! An item is a list of options; option `i` is the request `(context_i, continuation_i)` and is
//! scored by `log p(continuation_i | context_i)` (lm-evaluation-harness, `output_type:
//! multiple_choice`). Two layouts cover the tasks evop uses:
//! - shared context ([`McItem::shared`]): every option has the same context and the option text is
//!   the continuation, preceded by the target delimiter `" "` (ARC, HellaSwag, BIG-bench questions);
//! - partial scoring ([`McItem::partial`]): every option has its own context (the sentence up to a
//!   blank, with the option filled in) and all share one continuation, the rest of the sentence
//!   (WinoGrande as lm-evaluation-harness evaluates it; Trinh & Le 2018, arXiv 1806.02847).
use crate::error::{EvalError, Result};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// One option of an item: what is scored, and the length used by normalised accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The conditioning text.
    pub context: String,
    /// The text whose log-likelihood is summed (includes the leading delimiter, if any).
    pub continuation: String,
    /// The divisor of normalised accuracy: the option text's length in characters (Unicode scalar
    /// values, as Python's `len`), without the delimiter, as lm-evaluation-harness computes it.
    pub norm_chars: usize,
}

/// One multiple-choice item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McItem {
    /// Position of the example in its source file (0-based), kept through subsetting.
    pub id: usize,
    /// The options, in a fixed order.
    pub choices: Vec<Choice>,
    /// Indices of the correct options (BIG-bench's options with the highest target score).
    /// A prediction is correct when it is one of them.
    pub gold: Vec<usize>,
}

/// The delimiter lm-evaluation-harness puts between a context and a continuation.
pub const TARGET_DELIMITER: &str = " ";

impl McItem {
    /// An item whose options share `context`; option `i` is scored as `" " + options[i]`
    /// (the delimiter is dropped when the context already ends in whitespace or is empty).
    pub fn shared(id: usize, context: &str, options: &[&str], gold: Vec<usize>) -> Self {
        let delim = if context.is_empty() || context.ends_with(char::is_whitespace) { "" } else { TARGET_DELIMITER };
        let choices = options
            .iter()
            .map(|o| Choice {
                context: context.to_string(),
                continuation: format!("{delim}{o}"),
                norm_chars: o.chars().count(),
            })
            .collect();
        Self { id, choices, gold }
    }

    /// A partial-scoring item: option `i` is scored as `continuation` given `contexts[i]`. All options
    /// score the same text, so normalised accuracy equals accuracy (lm-evaluation-harness reports only
    /// accuracy for WinoGrande).
    pub fn partial(id: usize, contexts: &[String], continuation: &str, gold: Vec<usize>) -> Self {
        let cont = if continuation.is_empty() || continuation.starts_with(char::is_whitespace) {
            continuation.to_string()
        } else {
            format!("{TARGET_DELIMITER}{continuation}")
        };
        let n = continuation.trim_start().chars().count();
        let choices =
            contexts.iter().map(|c| Choice { context: c.clone(), continuation: cont.clone(), norm_chars: n }).collect();
        Self { id, choices, gold }
    }

    /// Checks the invariants the scorer relies on: at least two options, every continuation
    /// non-empty, gold indices valid and non-empty.
    pub fn validate(&self, task: &str) -> Result<()> {
        let fail = |message: String| Err(EvalError::Item { task: task.to_string(), index: self.id, message });
        if self.choices.len() < 2 {
            return fail(format!("{} option(s); a multiple-choice item needs at least 2", self.choices.len()));
        }
        if let Some(i) = self.choices.iter().position(|c| c.continuation.trim().is_empty()) {
            return fail(format!("option {i} has an empty continuation"));
        }
        if self.gold.is_empty() {
            return fail("no correct option".into());
        }
        if let Some(&g) = self.gold.iter().find(|&&g| g >= self.choices.len()) {
            return fail(format!("correct option {g} is out of range for {} options", self.choices.len()));
        }
        Ok(())
    }

    /// Probability that a uniformly random choice is correct.
    pub fn chance(&self) -> f64 {
        self.gold.len() as f64 / self.choices.len() as f64
    }
}

/// A named multiple-choice task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McTask {
    /// Name used in results (e.g. the BIG-bench task path).
    pub name: String,
    pub items: Vec<McItem>,
}

impl McTask {
    /// A task from items, each validated.
    pub fn new(name: impl Into<String>, items: Vec<McItem>) -> Result<Self> {
        let name = name.into();
        for item in &items {
            item.validate(&name)?;
        }
        Ok(Self { name, items })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the task has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Expected accuracy of uniform random guessing (mean over items).
    pub fn chance(&self) -> f64 {
        if self.items.is_empty() {
            return 0.0;
        }
        self.items.iter().map(McItem::chance).sum::<f64>() / self.items.len() as f64
    }

    /// A deterministic subset of `limit` items drawn without replacement with a ChaCha8 generator
    /// seeded by `seed`, kept in file order. `limit >= len` returns every item (no shuffling), so
    /// `--limit` larger than the task is harmless. The same `(task, limit, seed)` always gives the
    /// same items, on every platform.
    pub fn subset(&self, limit: usize, seed: u64) -> Result<Self> {
        if limit == 0 {
            return Err(EvalError::Options { option: "limit", value: "0".into(), message: "must be at least 1".into() });
        }
        if limit >= self.items.len() {
            return Ok(self.clone());
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut picked = rand::seq::index::sample(&mut rng, self.items.len(), limit).into_vec();
        picked.sort_unstable();
        Ok(Self { name: self.name.clone(), items: picked.into_iter().map(|i| self.items[i].clone()).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> McTask {
        let items = (0..n).map(|i| McItem::shared(i, "Q: x\nA:", &["a", "bb", "ccc"], vec![i % 3])).collect();
        McTask::new("toy", items).unwrap()
    }

    #[test]
    fn shared_items_prepend_the_delimiter_once() {
        let it = McItem::shared(0, "Q: 2+2?\nA:", &["4", "five"], vec![0]);
        assert_eq!(it.choices[1].continuation, " five");
        assert_eq!(it.choices[1].norm_chars, 4);
        let it = McItem::shared(0, "Answer: ", &["4"], vec![0]);
        assert_eq!(it.choices[0].continuation, "4");
    }

    #[test]
    fn partial_items_share_one_continuation() {
        let it = McItem::partial(3, &["Ann gave Bo".into(), "Ann gave Cy".into()], "a book.", vec![1]);
        assert!(it.choices.iter().all(|c| c.continuation == " a book." && c.norm_chars == 7));
        assert_eq!(it.chance(), 0.5);
    }

    #[test]
    fn validation_names_the_broken_invariant() {
        let bad = McItem::shared(7, "c", &["only"], vec![0]);
        let e = bad.validate("t").unwrap_err().to_string();
        assert!(e.contains("example 7") && e.contains("at least 2"), "{e}");
        let bad = McItem::shared(1, "c", &["a", "b"], vec![2]);
        assert!(bad.validate("t").unwrap_err().to_string().contains("out of range"));
        let bad = McItem::shared(1, "c", &["a", "b"], vec![]);
        assert!(bad.validate("t").unwrap_err().to_string().contains("no correct option"));
        let bad = McItem::shared(1, "c", &["a", " "], vec![0]);
        assert!(bad.validate("t").unwrap_err().to_string().contains("empty continuation"));
    }

    #[test]
    fn subsets_are_seeded_sorted_and_distinct() {
        let t = toy(100);
        let a = t.subset(20, 0).unwrap();
        let b = t.subset(20, 0).unwrap();
        let c = t.subset(20, 1).unwrap();
        let ids = |t: &McTask| t.items.iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&c));
        assert!(ids(&a).windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.subset(1000, 5).unwrap().len(), 100);
        assert!(t.subset(0, 0).is_err());
        assert!((t.chance() - 1.0 / 3.0).abs() < 1e-12);
    }
}
