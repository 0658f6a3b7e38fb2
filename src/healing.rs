//! Calibration windows for a healer ([`evop_heal::Healer`]): drawn with CCDS across the clusters
//! of the calibration pool (so the fit spans its topics, not one), then split so that the guard
//! windows that accept or refuse each patch come from every cluster too.
use crate::error::{EvopError, Result};
use crate::pipeline::{build_calibration, CalibrationSpec, EmbedderKind, SamplerKind};
use evop_data::Corpus;
use evop_heal::HealData;
use evop_model::LoadedModel;
use serde::{Deserialize, Serialize};

/// How many windows a healer fits on and guards with, and how they are drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealDataSpec {
    /// Windows the patches are fitted on.
    pub fit_windows: usize,
    /// Held-back windows each patch must improve.
    pub guard_windows: usize,
    /// Tokens per window.
    pub seqlen: usize,
    /// How windows are drawn from the pool (CCDS by default).
    pub sampler: SamplerKind,
}

impl Default for HealDataSpec {
    /// 64 fit windows and 16 guard windows of 128 tokens (8,192 + 2,048 tokens), CCDS with
    /// MiniLM over 512 candidate windows.
    fn default() -> Self {
        Self {
            fit_windows: 64,
            guard_windows: 16,
            seqlen: 128,
            sampler: SamplerKind::Ccds { embedder: EmbedderKind::MiniLm, k: None, pool: 512 },
        }
    }
}

/// Seed offset so the healer's windows are drawn independently of the search's.
const HEAL_SEED: u64 = 0x4EA1_0000;

/// Draws `spec.fit_windows + spec.guard_windows` windows from `pool` and splits them: the guard
/// takes one window from each cluster in turn (clusters in order of their first window), the
/// fit the rest. A pool holding fewer windows gives all of them, a fifth (at least one) to the
/// guard. Windows are cut to at most the model's positions.
pub fn build_heal_data(model: &LoadedModel, pool: &Corpus, spec: &HealDataSpec, seed: u64) -> Result<HealData> {
    if spec.fit_windows == 0 {
        return Err(EvopError::config("fit_windows", 0, "healing needs at least 1 fit window"));
    }
    // Windows never longer than the positions the model encodes (tiny models, OPT's learned table).
    let seqlen = spec.seqlen.min(model.lm.info().max_positions);
    let draw = |total: usize| {
        let sampler = match &spec.sampler {
            SamplerKind::Ccds { embedder, k, pool } => SamplerKind::Ccds { embedder: embedder.clone(), k: *k, pool: (*pool).max(2 * total) },
            other => other.clone(),
        };
        build_calibration(model, pool, &CalibrationSpec { windows: total, seqlen, sampler }, seed ^ HEAL_SEED)
    };
    let mut guard_windows = spec.guard_windows;
    let calib = match draw(spec.fit_windows + spec.guard_windows) {
        // A small pool: every window it holds, a fifth of them (at least one) for the guard.
        Err(EvopError::Data(evop_data::DataError::NotEnoughWindows { available, .. })) if available >= 2 => {
            if guard_windows > 0 {
                guard_windows = (available / 5).clamp(1, guard_windows);
            }
            tracing::warn!(available, guard_windows, "the healing pool holds fewer windows than asked for: using all of them");
            draw(available)?
        }
        other => other?,
    };
    let labels = calib.group_labels();
    let guard_idx = round_robin(&labels, guard_windows);
    let mut data = HealData::default();
    for (i, w) in calib.windows.iter().enumerate() {
        let ids = w.real_ids().to_vec();
        if guard_idx.contains(&i) {
            data.guard.push(ids);
        } else {
            data.fit.push(ids);
        }
    }
    Ok(data)
}

/// `n` indices taken one per group in turn (groups in order of first appearance, each group's
/// members in order): the first `n` of the fitness's round-robin order.
fn round_robin(labels: &[usize], n: usize) -> Vec<usize> {
    crate::fitness::round_robin_order(labels.len(), Some(labels)).into_iter().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_windows_come_from_every_group_in_turn() {
        let labels = [0, 0, 0, 1, 1, 2, 0, 2];
        assert_eq!(round_robin(&labels, 3), vec![0, 3, 5]);
        assert_eq!(round_robin(&labels, 5), vec![0, 3, 5, 1, 4]);
        assert_eq!(round_robin(&labels, 20).len(), labels.len());
        assert!(round_robin(&labels, 0).is_empty());
    }
}
