//! The calibration set: the chosen windows (token ids plus provenance), the cluster of each, and
//! every setting that made it, serialised as one JSON file so a run can be reproduced exactly and
//! inspected. Writing is atomic (temporary file in the same directory, then rename).
//!
//! Group labels ([`CalibrationSet::group_labels`]) are the CCDS clusters (all windows in group 0 for
//! a random set): a fitness can average the loss per group first, then over groups, so every kind of
//! text weighs the same (EvoP, Wu et al. 2025, arXiv 2502.14910).
use crate::error::{DataError, Result};
use crate::sample::{Sampler, SamplerSettings, Selection};
use crate::split::SplitRule;
use crate::window::{Window, WindowOptions};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Format tag written into every file; loading checks it.
pub const CALIBRATION_FORMAT: &str = "evop-calibration-set/1";

/// What produced a calibration set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSettings {
    /// Corpus name (e.g. `wikipedia-leads/calibration`).
    pub corpus: String,
    /// The split that produced the calibration pool, when one was used.
    pub split: Option<SplitRule>,
    /// How windows were cut (includes `seqlen`).
    pub window: WindowOptions,
    /// The tokenizer that produced the ids (free text, e.g. the model file name).
    pub tokenizer: Option<String>,
    /// The sampler and its parameters.
    pub sampler: SamplerSettings,
}

/// A calibration set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSet {
    /// Always [`CALIBRATION_FORMAT`].
    pub format: String,
    pub windows: Vec<Window>,
    /// Cluster of each window (CCDS), `None` for random sets.
    pub clusters: Option<Vec<usize>>,
    pub settings: CalibrationSettings,
}

impl CalibrationSet {
    /// The set made of `selection`'s windows of `pool`.
    pub fn from_selection(
        pool: &[Window],
        selection: Selection,
        window: WindowOptions,
        corpus: impl Into<String>,
    ) -> Result<Self> {
        let windows = selection
            .indices
            .iter()
            .map(|&i| {
                pool.get(i).cloned().ok_or_else(|| {
                    DataError::param("selection index", i, format!("the pool holds {} windows", pool.len()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(c) = &selection.clusters {
            if c.len() != windows.len() {
                return Err(DataError::param(
                    "selection clusters",
                    c.len(),
                    format!("{} windows were chosen", windows.len()),
                ));
            }
        }
        Ok(Self {
            format: CALIBRATION_FORMAT.into(),
            windows,
            clusters: selection.clusters,
            settings: CalibrationSettings {
                corpus: corpus.into(),
                split: None,
                window,
                tokenizer: None,
                sampler: selection.settings,
            },
        })
    }

    /// Runs `sampler` on `pool` and builds the set of `n` windows.
    pub fn build(
        pool: &[Window],
        n: usize,
        sampler: &dyn Sampler,
        window: WindowOptions,
        corpus: impl Into<String>,
    ) -> Result<Self> {
        let selection = sampler.select(pool, n)?;
        Self::from_selection(pool, selection, window, corpus)
    }

    /// Records the split that produced the pool.
    pub fn with_split(mut self, split: SplitRule) -> Self {
        self.settings.split = Some(split);
        self
    }

    /// Records the tokenizer that produced the ids.
    pub fn with_tokenizer(mut self, tokenizer: impl Into<String>) -> Self {
        self.settings.tokenizer = Some(tokenizer.into());
        self
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The token ids of every window (padding included), for evaluation.
    pub fn token_windows(&self) -> Vec<Vec<u32>> {
        self.windows.iter().map(|w| w.ids.clone()).collect()
    }

    /// Group of every window: its cluster for CCDS sets, 0 for all otherwise.
    pub fn group_labels(&self) -> Vec<usize> {
        self.clusters.clone().unwrap_or_else(|| vec![0; self.windows.len()])
    }

    /// Number of groups (`k` for CCDS, 1 otherwise); groups may be empty when `n < k`.
    pub fn num_groups(&self) -> usize {
        match &self.clusters {
            Some(c) => self.settings.sampler.k.unwrap_or(0).max(c.iter().max().map_or(0, |m| m + 1)),
            None => 1,
        }
    }

    /// Writes the set as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| DataError::parse(path, None, e.to_string()))?;
        write_atomic(path, &json)
    }

    /// Reads a set written by [`CalibrationSet::save`] and checks its consistency.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::corpus::read_utf8(path)?;
        let set: Self = serde_json::from_str(&text).map_err(|e| {
            DataError::parse(path, Some(format!("line {}", e.line())), format!("not a calibration set: {e}"))
        })?;
        if set.format != CALIBRATION_FORMAT {
            return Err(DataError::parse(
                path,
                Some("field `format`".into()),
                format!("`{}` is not `{CALIBRATION_FORMAT}`", set.format),
            ));
        }
        let seqlen = set.settings.window.seqlen;
        if let Some(i) = set.windows.iter().position(|w| w.ids.len() != seqlen || w.n_tokens > seqlen) {
            return Err(DataError::parse(
                path,
                Some(format!("window {i}")),
                format!("has {} ids, expected seqlen {seqlen}", set.windows[i].ids.len()),
            ));
        }
        if let Some(c) = &set.clusters {
            if c.len() != set.windows.len() {
                return Err(DataError::parse(
                    path,
                    Some("field `clusters`".into()),
                    format!("{} labels for {} windows", c.len(), set.windows.len()),
                ));
            }
        }
        Ok(set)
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = crate::corpus::file_name(path);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Corpus;
    use crate::sample::RandomSampler;
    use crate::window::windows_from_tokens;

    fn pool() -> (Vec<Window>, WindowOptions) {
        let c = Corpus::from_texts("toy", &["a", "b"]);
        let opts = WindowOptions::new(2);
        let toks = vec![(0..10).collect::<Vec<u32>>(), (10..20).collect()];
        (windows_from_tokens(&c, &toks, &[], &opts).unwrap(), opts)
    }

    #[test]
    fn round_trips_through_json_and_rejects_tampering() {
        let (pool, opts) = pool();
        let set = CalibrationSet::build(&pool, 4, &RandomSampler { seed: 3 }, opts, "toy")
            .unwrap()
            .with_split(SplitRule::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("calib.json");
        set.save(&p).unwrap();
        let back = CalibrationSet::load(&p).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.token_windows().len(), 4);
        assert_eq!(back.group_labels(), vec![0; 4]);
        assert_eq!(back.num_groups(), 1);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "no temporary file left behind");

        let text = std::fs::read_to_string(&p).unwrap().replace(CALIBRATION_FORMAT, "other/9");
        std::fs::write(&p, text).unwrap();
        assert!(CalibrationSet::load(&p).unwrap_err().to_string().contains("format"));
        std::fs::write(&p, "{").unwrap();
        assert!(CalibrationSet::load(&p).unwrap_err().to_string().contains("calib.json"));
    }
}
