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
    /// MiniLM over at least 256 candidate windows (4 per window drawn).
    fn default() -> Self {
        Self {
            fit_windows: 64,
            guard_windows: 16,
            seqlen: 128,
            sampler: SamplerKind::Ccds { embedder: EmbedderKind::MiniLm, k: None, pool: 256 },
        }
    }
}

/// Fit windows for a model of hidden size `hidden` at `seqlen` tokens per window: enough that
/// every column of the `hidden x hidden` patch has as many fitting tokens per unknown as 128
/// windows of 128 tokens give a hidden size of 768 (about 21), never fewer than 64 windows,
/// rounded up to a multiple of 16. SmolLM2-135M (576): 96; Qwen2.5-Coder-0.5B (896): 160;
/// Qwen2.5-Coder-1.5B (1536): 256. Half of that (the rule before 2026-12-07's last change)
/// closed 4% of the gap out of domain on the 0.5B's 30% mask, this rule 8-10% (docs/healing.md).
pub fn fit_windows_for_hidden(hidden: usize, seqlen: usize) -> usize {
    let tokens = 128 * 128 * hidden.max(1) / 768;
    let windows = tokens.div_ceil(seqlen.max(1)).max(64);
    windows.div_ceil(16) * 16
}

/// Candidate windows a CCDS draw of the healer embeds per window it draws (at least
/// [`HealDataSpec::sampler`]'s pool).
const CANDIDATES_PER_WINDOW: usize = 4;

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
            SamplerKind::Ccds { embedder, k, pool } => SamplerKind::Ccds { embedder: embedder.clone(), k: *k, pool: (*pool).max(CANDIDATES_PER_WINDOW * total) },
            other => other.clone(),
        };
        build_calibration(model, pool, &CalibrationSpec { windows: total, seqlen, sampler }, seed ^ HEAL_SEED)
    };
    let mut guard_windows = spec.guard_windows;
    let asked = spec.fit_windows + spec.guard_windows;
    let (calib, drawn) = crate::windows::draw_at_most(asked, 2, draw)?;
    if drawn < asked {
        // A small pool: every window it holds, a fifth of them (at least one) for the guard.
        if guard_windows > 0 {
            guard_windows = (drawn / 5).clamp(1, guard_windows);
        }
        tracing::warn!(available = drawn, guard_windows, "the healing pool holds fewer windows than asked for: using all of them");
    }
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

/// Draws the healer's windows from several pools in fixed shares: each source gets its share of
/// the fit windows and of the guard windows (largest remainder, shares normalised), drawn from it
/// alone by [`build_heal_data`] (CCDS within the source), so that a small source (code beside
/// Wikipedia, say) is not outvoted by a large one. Source `i` draws with seed `seed + i`.
pub fn build_heal_data_from_sources(model: &LoadedModel, sources: &[(&Corpus, f64)], spec: &HealDataSpec, seed: u64) -> Result<HealData> {
    if sources.is_empty() {
        return Err(EvopError::config("sources", 0, "healing needs at least one source of text"));
    }
    if let Some((c, w)) = sources.iter().find(|(_, w)| !w.is_finite() || *w < 0.0) {
        return Err(EvopError::config("share", w, format!("the share of `{}` must be a finite number >= 0", c.name)));
    }
    let weights: Vec<f64> = sources.iter().map(|(_, w)| *w).collect();
    let fit = apportion(spec.fit_windows, &weights);
    let guard = apportion(spec.guard_windows, &weights);
    if fit.iter().sum::<usize>() == 0 {
        return Err(EvopError::config("share", 0, "every source's share is 0"));
    }
    let mut data = HealData::default();
    for (i, (corpus, _)) in sources.iter().enumerate() {
        if fit[i] == 0 {
            continue;
        }
        let part = HealDataSpec { fit_windows: fit[i], guard_windows: guard[i], ..spec.clone() };
        let d = match build_heal_data(model, corpus, &part, seed.wrapping_add(i as u64)) {
            // A source too small for even two windows is left out (the others still heal).
            Err(EvopError::Data(evop_data::DataError::NotEnoughWindows { available, .. })) if available < 2 && sources.len() > 1 => {
                tracing::warn!(source = %corpus.name, available, "a healing source holds fewer than 2 windows: left out");
                continue;
            }
            other => other?,
        };
        data.fit.extend(d.fit);
        data.guard.extend(d.guard);
    }
    if data.fit.is_empty() {
        return Err(EvopError::config("sources", sources.len(), "no healing source holds 2 windows of the asked length"));
    }
    Ok(data)
}

/// The healer's windows from the calibration pool and an optional extra corpus (code for a code
/// model): `share` of them from `extra` alone ([`build_heal_data_from_sources`]), or, with no
/// share, both pooled into one corpus that CCDS draws across ([`build_heal_data`]).
pub fn build_heal_data_with(model: &LoadedModel, pool: &Corpus, extra: Option<&Corpus>, share: Option<f64>, spec: &HealDataSpec, seed: u64) -> Result<HealData> {
    match (extra, share) {
        (Some(extra), Some(share)) => build_heal_data_from_sources(model, &[(pool, 1.0 - share), (extra, share)], spec, seed),
        (Some(extra), None) => {
            let mut pooled = pool.clone();
            pooled.name = format!("{}+{}", pool.name, extra.name);
            pooled.documents.extend(extra.documents.iter().cloned());
            build_heal_data(model, &pooled, spec, seed)
        }
        (None, _) => build_heal_data(model, pool, spec, seed),
    }
}

/// `total` split in proportion to `weights` by largest remainder (ties to the earlier source).
fn apportion(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut parts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let left = total - parts.iter().sum::<usize>();
    for &i in order.iter().take(left) {
        parts[i] += 1;
    }
    parts
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

    #[test]
    fn shares_split_the_windows_by_largest_remainder() {
        assert_eq!(apportion(64, &[0.5, 0.5]), vec![32, 32]);
        assert_eq!(apportion(16, &[2.0, 1.0]), vec![11, 5]);
        assert_eq!(apportion(5, &[1.0, 1.0, 1.0]), vec![2, 2, 1]);
        assert_eq!(apportion(7, &[1.0, 0.0]), vec![7, 0]);
        assert_eq!(apportion(3, &[0.0, 0.0]), vec![0, 0]);
        for total in 0..40 {
            assert_eq!(apportion(total, &[0.3, 0.2, 0.5]).iter().sum::<usize>(), total);
        }
    }

    #[test]
    fn fit_windows_grow_with_the_hidden_size() {
        assert_eq!(fit_windows_for_hidden(576, 128), 96);
        assert_eq!(fit_windows_for_hidden(768, 128), 128);
        assert_eq!(fit_windows_for_hidden(896, 128), 160);
        assert_eq!(fit_windows_for_hidden(1536, 128), 256);
        assert_eq!(fit_windows_for_hidden(1536, 256), 128);
        assert_eq!(fit_windows_for_hidden(64, 128), 64);
        let mut last = 0;
        for h in (64..8192).step_by(64) {
            let w = fit_windows_for_hidden(h, 128);
            assert!(w >= 64 && w % 16 == 0 && w >= last, "hidden {h}: {w}");
            assert!(w * 128 * 768 >= 128 * 128 * h, "hidden {h}: {w} windows give fewer tokens per unknown than 768 gets");
            last = w;
        }
    }
}
