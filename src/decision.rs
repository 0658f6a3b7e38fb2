//! The decision stage: every searcher's candidates, decided on fresh tokens.
//!
//! Searchers (EvoP's GA, SLEB on its own protocol, the greedy seed, any other pruner) each end on
//! one or a few masks. Choosing among near-ties on the tokens a search already fitted picks the
//! mask that fits those tokens best, not the one that generalises (docs/results.md, "EvoP at equal
//! compute"). The decision stage scores every distinct candidate on **decision windows that no
//! searcher read**: drawn from the calibration pool with CCDS under a distinct seed (so they span
//! the pool's clusters), with every window a search used left out of the draw. The candidate with
//! the lowest mean loss (next-token NLL or KL to the dense model) is the answer; ties go to the
//! candidate listed first.
//!
//! ```no_run
//! use evop::decision::{decide, decision_windows, Candidate, DecisionSpec};
//! # fn main() -> evop::Result<()> {
//! # let store = evop::assets::AssetStore::from_env();
//! # let model = evop::model::load(&store.smollm2_gguf()?, &Default::default())?;
//! # let corpus = evop::data::read_wikipedia_leads(&store.wikipedia_leads()?)?;
//! # let pool = evop::data::SplitRule::default().split(&corpus)?.calibration;
//! # let searched: Vec<Vec<u32>> = Vec::new();
//! let spec = DecisionSpec::default();
//! let fresh = decision_windows(&model, &pool, &spec, 0, &searched)?;
//! let candidates = vec![Candidate::new("evop", vec![13, 14, 15, 16, 17, 18]), Candidate::new("sleb", vec![14, 15, 16, 17, 18, 26])];
//! let d = decide(&model.lm, &candidates, &fresh.token_windows(), &spec, 8)?;
//! println!("{:?} ({:.4})", d.removed, d.scores[d.chosen].score);
//! # Ok(()) }
//! ```
use crate::error::{EvopError, Result};
use crate::fitness::CalibrationFitness;
use crate::objective::Objective;
use crate::pipeline::{build_calibration_excluding, CalibrationSpec, SamplerKind};
use evop_data::{CalibrationSet, Corpus};
use evop_model::{BlockLm, BlockMask, EvaluatorOptions, LoadedModel, LossKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// The seed of the decision windows' draw is the run's seed XOR this, so they differ from the
/// search's CCDS draw even when the exclusion is empty.
pub const DECISION_SEED_SALT: u64 = 0xDEC1_5105;

/// How the decision is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionSpec {
    /// Decision windows.
    pub windows: usize,
    /// Tokens per decision window.
    pub seqlen: usize,
    /// Candidate windows embedded and clustered for the CCDS draw.
    pub pool: usize,
    /// Per-window loss: next-token NLL or KL to the dense model.
    pub loss: LossKind,
    /// Draw with CCDS (MiniLM); `false`: uniformly at random (for corpora and settings where the
    /// search's calibration is random too).
    #[serde(default = "yes")]
    pub ccds: bool,
}

fn yes() -> bool {
    true
}

impl Default for DecisionSpec {
    /// 16 windows of 128 tokens under mean NLL, CCDS from 256 candidates (docs/results.md,
    /// "The decision stage" for how this was chosen).
    fn default() -> Self {
        Self { windows: 16, seqlen: 128, pool: 256, loss: LossKind::Nll, ccds: true }
    }
}

impl DecisionSpec {
    /// Clear errors for settings that cannot work.
    pub fn check(&self) -> Result<()> {
        if self.windows == 0 {
            return Err(EvopError::config("decision.windows", 0, "at least one decision window"));
        }
        if self.seqlen < 2 {
            return Err(EvopError::config("decision.seqlen", self.seqlen, "at least 2 tokens per window"));
        }
        if self.pool < self.windows {
            return Err(EvopError::config("decision.pool", self.pool, format!("at least the {} decision windows", self.windows)));
        }
        Ok(())
    }

    /// Decision tokens.
    pub fn tokens(&self) -> usize {
        self.windows * self.seqlen
    }
}

/// One searcher's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Who proposed it (e.g. `evop finalist 2`, `sleb (512 random tokens)`).
    pub source: String,
    /// Removed blocks.
    pub removed: Vec<usize>,
}

impl Candidate {
    pub fn new(source: impl Into<String>, removed: Vec<usize>) -> Self {
        Self { source: source.into(), removed }
    }
}

/// A distinct candidate mask and its decision score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredCandidate {
    /// Every searcher that proposed this mask, in the order given.
    pub sources: Vec<String>,
    /// Removed blocks, ascending.
    pub removed: Vec<usize>,
    /// Mean per-window loss on the decision windows.
    pub score: f64,
    /// Per-window losses (in the order of the windows given).
    pub window_losses: Vec<f64>,
}

/// The outcome of a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Index of the chosen mask in `scores`.
    pub chosen: usize,
    /// The chosen mask.
    pub removed: Vec<usize>,
    /// Every distinct candidate, in order of first appearance.
    pub scores: Vec<ScoredCandidate>,
    pub loss: LossKind,
    /// Decision windows and tokens read.
    pub windows: usize,
    pub tokens: usize,
    /// Seconds spent scoring (the windows' draw not included).
    pub seconds: f64,
}

/// Draws `spec.windows` decision windows of `spec.seqlen` tokens from `pool` with CCDS (MiniLM,
/// automatic k, `spec.pool` candidates; uniformly at random without `spec.ccds`) under the seed `seed ^ DECISION_SEED_SALT`, leaving out
/// every window whose tokens equal one of `exclude` (the windows the searches read).
pub fn decision_windows(model: &LoadedModel, pool: &Corpus, spec: &DecisionSpec, seed: u64, exclude: &[Vec<u32>]) -> Result<CalibrationSet> {
    spec.check()?;
    let sampler = if spec.ccds { SamplerKind::Ccds { embedder: crate::EmbedderKind::MiniLm, k: None, pool: spec.pool } } else { SamplerKind::Random };
    let calib = CalibrationSpec { windows: spec.windows, seqlen: spec.seqlen, sampler };
    build_calibration_excluding(model, pool, &calib, seed ^ DECISION_SEED_SALT, exclude)
}

/// Scores every distinct candidate of `candidates` on `windows` (mean per-window `spec.loss`)
/// and returns the lowest; ties go to the first. Duplicate masks are scored once, their sources
/// merged. `batch_size`: windows per forward batch.
pub fn decide(lm: &Arc<dyn BlockLm>, candidates: &[Candidate], windows: &[Vec<u32>], spec: &DecisionSpec, batch_size: usize) -> Result<Decision> {
    let start = Instant::now();
    if candidates.is_empty() {
        return Err(EvopError::config("decision candidates", 0, "at least one candidate mask"));
    }
    if windows.is_empty() {
        return Err(EvopError::config("decision windows", 0, "at least one decision window"));
    }
    if windows.iter().any(|w| w.len() < 2) {
        return Err(EvopError::config("decision windows", "a window of fewer than 2 tokens", "every window needs at least 2 tokens"));
    }
    let l = lm.num_blocks();
    let n = candidates[0].removed.len();
    let mut distinct: Vec<ScoredCandidate> = Vec::new();
    for c in candidates {
        let mut removed = c.removed.clone();
        removed.sort_unstable();
        removed.dedup();
        if removed.len() != c.removed.len() || removed.len() != n {
            return Err(EvopError::config(
                "decision candidates",
                format!("{} {:?}", c.source, c.removed),
                format!("every candidate must remove {n} distinct blocks, as the first does"),
            ));
        }
        if let Some(b) = removed.iter().find(|&&b| b >= l) {
            return Err(EvopError::config("decision candidates", format!("{} {:?}", c.source, c.removed), format!("block {b} is out of range for a model of {l} blocks")));
        }
        match distinct.iter_mut().find(|d| d.removed == removed) {
            Some(d) => d.sources.push(c.source.clone()),
            None => distinct.push(ScoredCandidate { sources: vec![c.source.clone()], removed, score: f64::NAN, window_losses: Vec::new() }),
        }
    }
    // No groups: the windows are scored in the order given (the mean does not depend on it).
    let options = EvaluatorOptions { batch_size, loss: spec.loss, ..Default::default() };
    let fitness = CalibrationFitness::new(lm.clone(), windows, None, Objective::MeanNll, options)?;
    for d in &mut distinct {
        let (score, losses) = fitness.score_mask(&BlockMask::from_removed(l, &d.removed)?)?;
        d.score = score;
        d.window_losses = losses;
    }
    let chosen = best_index(&distinct);
    Ok(Decision {
        chosen,
        removed: distinct[chosen].removed.clone(),
        scores: distinct,
        loss: spec.loss,
        windows: windows.len(),
        tokens: windows.iter().map(Vec::len).sum(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The lowest finite score (ties: the first); NaN scores lose to any number.
fn best_index(scores: &[ScoredCandidate]) -> usize {
    let key = |s: &ScoredCandidate| if s.score.is_nan() { f64::INFINITY } else { s.score };
    (0..scores.len()).fold(0, |best, i| if key(&scores[i]) < key(&scores[best]) { i } else { best })
}

/// The choice among `scores` had the decision read only the first `windows` of its windows:
/// for studying the token count from one scoring (index into `scores`).
pub fn choose_on_prefix(scores: &[ScoredCandidate], windows: usize) -> usize {
    let mean = |s: &ScoredCandidate| {
        let k = windows.clamp(1, s.window_losses.len().max(1));
        s.window_losses[..k.min(s.window_losses.len())].iter().sum::<f64>() / k as f64
    };
    (0..scores.len()).fold(0, |best, i| if mean(&scores[i]) < mean(&scores[best]) { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evop_model::{load, LoadOptions};

    fn tiny() -> LoadedModel {
        load(std::path::Path::new("synthetic:tiny"), &LoadOptions::default()).unwrap()
    }

    /// Seeded pseudo-random token windows below the model's vocabulary.
    fn windows(count: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..count)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((x >> 33) % 60) as u32
                    })
                    .collect()
            })
            .collect()
    }

    /// Every mask of `l` blocks removing `n`, the ends kept.
    fn masks(l: usize, n: usize) -> Vec<Vec<usize>> {
        fn rec(from: usize, last: usize, n: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if n == 0 {
                out.push(cur.clone());
                return;
            }
            for b in from..last {
                cur.push(b);
                rec(b + 1, last, n - 1, cur, out);
                cur.pop();
            }
        }
        let mut out = Vec::new();
        rec(1, l - 1, n, &mut Vec::new(), &mut out);
        out
    }

    /// The brute-force score: the mean over windows of each window's mean next-token NLL, one
    /// window at a time through the plain perplexity routine.
    fn brute(lm: &Arc<dyn BlockLm>, removed: &[usize], windows: &[Vec<u32>]) -> f64 {
        let mask = BlockMask::from_removed(lm.num_blocks(), removed).unwrap();
        let per: Vec<f64> =
            windows.iter().map(|w| evop_model::perplexity::perplexity(lm.as_ref(), std::slice::from_ref(w), &mask, 1).unwrap().mean_nll).collect();
        per.iter().sum::<f64>() / per.len() as f64
    }

    #[test]
    fn picks_the_candidate_with_the_lowest_score_on_the_decision_windows() {
        let model = tiny();
        let lm = model.lm.clone();
        let l = lm.num_blocks();
        for (n, seed) in [(1usize, 0u64), (2, 1), (2, 2)] {
            let all = masks(l, n);
            // A few candidates in a seeded order, one repeated under another name.
            let mut candidates: Vec<Candidate> =
                all.iter().enumerate().map(|(i, m)| Candidate::new(format!("searcher {i}"), m.clone())).collect();
            let shift = seed as usize % candidates.len();
            candidates.rotate_left(shift);
            candidates.push(Candidate::new("again", candidates[0].removed.clone()));
            let fresh = windows(5, 12, 100 + seed);
            let spec = DecisionSpec { windows: fresh.len(), seqlen: 12, pool: 5, ..Default::default() };
            let d = decide(&lm, &candidates, &fresh, &spec, 2).unwrap();
            assert_eq!(d.scores.len(), all.len(), "duplicates are scored once");
            assert_eq!(d.scores[0].sources.len(), 2, "the repeated mask keeps both sources");
            let reference: Vec<f64> = d.scores.iter().map(|c| brute(&lm, &c.removed, &fresh)).collect();
            for (c, r) in d.scores.iter().zip(&reference) {
                assert!((c.score - r).abs() < 1e-4 * r.abs().max(1.0), "{:?}: {} vs brute force {}", c.removed, c.score, r);
            }
            let best = (0..reference.len()).min_by(|&a, &b| reference[a].total_cmp(&reference[b])).unwrap();
            assert_eq!(d.removed, d.scores[best].removed, "n = {n}: the lowest brute-force score wins");
            assert_eq!(d.chosen, best);
            assert_eq!(d.tokens, 5 * 12);
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_answer() {
        let model = tiny();
        let candidates: Vec<Candidate> = masks(model.lm.num_blocks(), 2).into_iter().map(|m| Candidate::new("x", m)).collect();
        let fresh = windows(4, 10, 7);
        let spec = DecisionSpec { windows: 4, seqlen: 10, pool: 4, ..Default::default() };
        let a = decide(&model.lm, &candidates, &fresh, &spec, 4).unwrap();
        let b = decide(&model.lm, &candidates, &fresh, &spec, 1).unwrap();
        assert_eq!(a.removed, b.removed);
        assert_eq!(a.chosen, b.chosen);
        for (x, y) in a.scores.iter().zip(&b.scores) {
            assert!((x.score - y.score).abs() < 1e-5, "batching changes nothing: {} vs {}", x.score, y.score);
        }
    }

    #[test]
    fn bad_settings_give_clear_errors() {
        let model = tiny();
        let lm = &model.lm;
        let l = lm.num_blocks();
        let fresh = windows(2, 8, 3);
        let spec = DecisionSpec { windows: 2, seqlen: 8, pool: 2, ..Default::default() };
        let err = |r: Result<Decision>| r.unwrap_err().to_string();
        assert!(err(decide(lm, &[], &fresh, &spec, 1)).contains("at least one candidate"));
        assert!(err(decide(lm, &[Candidate::new("a", vec![1])], &[], &spec, 1)).contains("at least one decision window"));
        let uneven = [Candidate::new("a", vec![1]), Candidate::new("b", vec![1, 2])];
        assert!(err(decide(lm, &uneven, &fresh, &spec, 1)).contains("must remove 1 distinct blocks"));
        let repeated = [Candidate::new("a", vec![1, 1])];
        assert!(err(decide(lm, &repeated, &fresh, &spec, 1)).contains("distinct blocks"));
        let outside = [Candidate::new("a", vec![l + 3])];
        assert!(err(decide(lm, &outside, &fresh, &spec, 1)).contains("out of range"));
        assert!(err(decide(lm, &[Candidate::new("a", vec![1])], &[vec![5]], &spec, 1)).contains("at least 2 tokens"));
        assert!(DecisionSpec { windows: 0, ..spec.clone() }.check().unwrap_err().to_string().contains("at least one decision window"));
        assert!(DecisionSpec { seqlen: 1, ..spec.clone() }.check().unwrap_err().to_string().contains("at least 2 tokens"));
        assert!(DecisionSpec { pool: 1, ..spec.clone() }.check().unwrap_err().to_string().contains("at least the 2 decision windows"));
    }

    /// Decision windows are drawn without any window a search read, with their own seed.
    #[test]
    fn decision_windows_are_disjoint_from_the_search_windows() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/evop-model/tests/fixtures/llama");
        let model = load(&fixture, &LoadOptions::default()).unwrap();
        let texts: Vec<String> = (0..60).map(|p| (0..24).map(|i| format!("w{}", 4 + (p * 13 + i * 7) % 120)).collect::<Vec<_>>().join(" ")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let pool = Corpus::from_texts("synthetic", &refs);
        let search_spec = CalibrationSpec { windows: 6, seqlen: 8, sampler: SamplerKind::Random };
        let searched = crate::build_calibration(&model, &pool, &search_spec, 0).unwrap().token_windows();
        let spec = DecisionSpec { windows: 10, seqlen: 8, pool: 10, loss: LossKind::Nll, ccds: false };
        for seed in [0u64, 1, 2] {
            let fresh = decision_windows(&model, &pool, &spec, seed, &searched).unwrap().token_windows();
            assert_eq!(fresh.len(), 10);
            for w in &fresh {
                assert!(!searched.contains(w), "seed {seed}: a decision window was read by the search: {w:?}");
            }
            let again = decision_windows(&model, &pool, &spec, seed, &searched).unwrap().token_windows();
            assert_eq!(fresh, again, "the same seed draws the same windows");
        }
        // Excluding every window but three leaves exactly those three.
        let all = evop_data::make_windows(&pool, model.tokenizer().unwrap(), &evop_data::WindowOptions::new(8).boundary(evop_data::Boundary::AcrossDocuments)).unwrap();
        let ids: Vec<Vec<u32>> = all.iter().map(|w| w.ids.clone()).collect();
        // Three windows whose tokens occur nowhere else (the synthetic text repeats itself).
        let unique: Vec<usize> = (0..ids.len()).filter(|&i| ids.iter().filter(|w| **w == ids[i]).count() == 1).take(3).collect();
        assert_eq!(unique.len(), 3, "the test corpus has three distinct windows");
        let keep: Vec<Vec<u32>> = unique.iter().map(|&i| ids[i].clone()).collect();
        let exclude: Vec<Vec<u32>> = (0..ids.len()).filter(|i| !unique.contains(i)).map(|i| ids[i].clone()).collect();
        let exclude = exclude.as_slice();
        let three = DecisionSpec { windows: 3, pool: 3, ..spec.clone() };
        let mut got = decision_windows(&model, &pool, &three, 5, exclude).unwrap().token_windows();
        got.sort();
        let mut want = keep;
        want.sort();
        assert_eq!(got, want);
        let four = DecisionSpec { windows: 4, pool: 4, ..spec };
        assert!(decision_windows(&model, &pool, &four, 5, exclude).is_err(), "not enough fresh windows is an error");
    }
}
