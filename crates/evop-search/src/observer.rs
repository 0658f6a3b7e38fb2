//! Per-generation reports and the hooks that receive them. The library never prints: progress bars,
//! logs, JSONL histories and plots are [`Observer`]s.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{BoxError, Result, SearchError};
use crate::fitness::Direction;
use crate::mask::{Mask, MaskSpace};
use crate::termination::StopReason;

/// What happened in one generation (generation 0 is the initial population).
///
/// Fitness values are in the caller's direction (not negated). Statistics cover the finite values of the
/// current population; they are `None` when it has none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationReport {
    /// 0 for the initial population, then 1, 2, ...
    pub generation: u64,
    /// Best full-fidelity value found so far.
    pub best: Option<f64>,
    /// The mask with that value.
    pub best_mask: Mask,
    /// Best, mean and worst finite value of the current population.
    pub population_best: Option<f64>,
    pub mean: Option<f64>,
    pub worst: Option<f64>,
    /// Members of the current population whose value is NaN or infinite.
    pub non_finite: usize,
    /// Mean pairwise Hamming distance of the population divided by the largest possible one (0 = all
    /// equal, 1 = as spread as the space allows).
    pub diversity: f64,
    /// Number of distinct masks in the population.
    pub unique: usize,
    /// Cumulative masks evaluated by the fitness (any fidelity).
    pub evaluations: u64,
    /// Cumulative memo-cache hits.
    pub cache_hits: u64,
    /// Cumulative wall time in seconds (summed over resumed runs).
    pub elapsed_s: f64,
}

impl GenerationReport {
    pub(crate) fn population_stats(values: &[f64], direction: Direction) -> (Option<f64>, Option<f64>, Option<f64>, usize) {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return (None, None, None, values.len());
        }
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let best = finite.iter().copied().fold(finite[0], |a, b| if direction.is_better(b, a) { b } else { a });
        let worst = finite.iter().copied().fold(finite[0], |a, b| if direction.is_better(a, b) { b } else { a });
        (Some(best), Some(mean), Some(worst), values.len() - finite.len())
    }
}

/// Population diversity: mean pairwise Hamming distance over [`MaskSpace::max_distance`], and the number of
/// distinct masks.
pub fn diversity(space: &MaskSpace, masks: &[Mask]) -> (f64, usize) {
    let mut sorted: Vec<&Mask> = masks.iter().collect();
    sorted.sort();
    sorted.dedup();
    let unique = sorted.len();
    let max = space.max_distance();
    if masks.len() < 2 || max == 0 {
        return (0.0, unique);
    }
    let mut total = 0usize;
    for i in 0..masks.len() {
        for j in i + 1..masks.len() {
            total += masks[i].hamming(&masks[j]);
        }
    }
    let pairs = masks.len() * (masks.len() - 1) / 2;
    (total as f64 / pairs as f64 / max as f64, unique)
}

/// A hook that receives every generation's report.
pub trait Observer {
    /// Called after every generation (and after initialisation, with generation 0). An error aborts the
    /// run with [`SearchError::Observer`], after the generation's checkpoint has been written.
    fn observe(&mut self, report: &GenerationReport) -> Result<(), BoxError>;

    /// Called once when the run stops.
    fn finish(&mut self, _reason: StopReason, _last: &GenerationReport) -> Result<(), BoxError> {
        Ok(())
    }
}

/// An observer from a closure.
pub struct FnObserver<F>(pub F);

impl<F: FnMut(&GenerationReport)> Observer for FnObserver<F> {
    fn observe(&mut self, report: &GenerationReport) -> Result<(), BoxError> {
        (self.0)(report);
        Ok(())
    }
}

/// Writes one JSON object per generation to a file (JSON Lines), flushed after each line so the file is
/// complete up to the last finished generation.
pub struct JsonlHistory {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlHistory {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let f = File::create(&path).map_err(|source| SearchError::Io { path: path.clone(), source })?;
        Ok(JsonlHistory { path, out: BufWriter::new(f) })
    }

    /// Appends to `path` (created if missing): the choice for a resumed run, which reports only the
    /// generations after the checkpoint.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SearchError::Io { path: path.clone(), source })?;
        Ok(JsonlHistory { path, out: BufWriter::new(f) })
    }

    /// Reads a history file back.
    pub fn read(path: impl AsRef<Path>) -> Result<Vec<GenerationReport>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SearchError::Io { path: path.into(), source })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|source| SearchError::CheckpointFormat { path: path.into(), source }))
            .collect()
    }
}

impl Observer for JsonlHistory {
    fn observe(&mut self, report: &GenerationReport) -> Result<(), BoxError> {
        serde_json::to_writer(&mut self.out, report)?;
        self.out.write_all(b"\n")?;
        self.out.flush().map_err(|e| Box::new(SearchError::Io { path: self.path.clone(), source: e }) as BoxError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_ignore_non_finite_values() {
        let v = [3.0, f64::NAN, 1.0, f64::INFINITY, 2.0];
        assert_eq!(GenerationReport::population_stats(&v, Direction::Minimize), (Some(1.0), Some(2.0), Some(3.0), 2));
        assert_eq!(GenerationReport::population_stats(&v, Direction::Maximize), (Some(3.0), Some(2.0), Some(1.0), 2));
        assert_eq!(GenerationReport::population_stats(&[f64::NAN], Direction::Minimize), (None, None, None, 1));
    }

    #[test]
    fn diversity_is_zero_for_clones_and_one_for_opposites() {
        let s = MaskSpace::new(8, 4, []).unwrap();
        let a = Mask::from_removed(&s, &[0, 1, 2, 3]).unwrap();
        let b = Mask::from_removed(&s, &[4, 5, 6, 7]).unwrap();
        assert_eq!(diversity(&s, &[a.clone(), a.clone()]), (0.0, 1));
        assert_eq!(diversity(&s, &[a.clone(), b.clone()]), (1.0, 2));
        assert_eq!(diversity(&s, &[a.clone(), a, b]), (2.0 / 3.0, 2));
    }
}
