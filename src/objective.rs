//! What a pruning search minimises, computed from the per-window calibration losses of one masked
//! forward: the mean token NLL (SLEB's criterion), a cluster-balanced mean (each CCDS cluster
//! weighs the same), the worst cluster's mean, or CVaR (the mean of the worst `q` fraction of
//! windows). The last three aim at EvoP's promise of robust inference (Wu et al. 2025,
//! arXiv 2502.14910): a pruned model that holds up on kinds of text the calibration did not
//! emphasise.
use serde::{Deserialize, Serialize};

/// A scalar objective over per-window mean NLLs (lower is better).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    /// Mean over windows of the window's mean token NLL (the default).
    #[default]
    MeanNll,
    /// Mean over groups (clusters) of the group's mean window NLL.
    ClusterBalanced,
    /// The largest group mean.
    WorstCluster,
    /// Mean of the worst `q` fraction of windows (at least one window).
    Cvar { q: f64 },
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MeanNll => f.write_str("mean"),
            Self::ClusterBalanced => f.write_str("balanced"),
            Self::WorstCluster => f.write_str("worst-cluster"),
            Self::Cvar { q } => write!(f, "cvar:{q}"),
        }
    }
}

impl std::str::FromStr for Objective {
    type Err = String;
    /// `mean`, `balanced`, `worst-cluster`, `cvar:Q` (0 < Q <= 1).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean" => Ok(Self::MeanNll),
            "balanced" => Ok(Self::ClusterBalanced),
            "worst-cluster" => Ok(Self::WorstCluster),
            _ => {
                let q = s
                    .strip_prefix("cvar:")
                    .and_then(|q| q.parse::<f64>().ok())
                    .ok_or_else(|| format!("unknown objective `{s}` (expected mean, balanced, worst-cluster or cvar:Q)"))?;
                if q > 0.0 && q <= 1.0 {
                    Ok(Self::Cvar { q })
                } else {
                    Err(format!("cvar fraction {q} must be in (0, 1]"))
                }
            }
        }
    }
}

impl Objective {
    /// The objective of per-window losses; `groups[i]` is window `i`'s cluster (ignored by the
    /// window-level objectives; with no groups every window is its own group of one).
    pub fn score(&self, losses: &[f64], groups: Option<&[usize]>) -> f64 {
        if losses.is_empty() {
            return f64::NAN;
        }
        match self {
            Self::MeanNll => losses.iter().sum::<f64>() / losses.len() as f64,
            Self::ClusterBalanced | Self::WorstCluster => {
                let means = group_means(losses, groups);
                if *self == Self::ClusterBalanced {
                    means.iter().sum::<f64>() / means.len() as f64
                } else {
                    means.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                }
            }
            Self::Cvar { q } => {
                let mut sorted = losses.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let k = ((q * losses.len() as f64).ceil() as usize).clamp(1, losses.len());
                sorted[..k].iter().sum::<f64>() / k as f64
            }
        }
    }
}

fn group_means(losses: &[f64], groups: Option<&[usize]>) -> Vec<f64> {
    let Some(groups) = groups else { return losses.to_vec() };
    let n = groups.iter().copied().max().map_or(0, |m| m + 1);
    let mut sum = vec![0.0; n];
    let mut count = vec![0usize; n];
    for (&l, &g) in losses.iter().zip(groups) {
        sum[g] += l;
        count[g] += 1;
    }
    sum.iter().zip(&count).filter(|(_, &c)| c > 0).map(|(s, &c)| s / c as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_on_a_hand_made_case() {
        let losses = [1.0, 3.0, 2.0, 6.0];
        let groups = [0, 0, 1, 1];
        assert_eq!(Objective::MeanNll.score(&losses, Some(&groups)), 3.0);
        // Group means 2 and 4.
        assert_eq!(Objective::ClusterBalanced.score(&losses, Some(&groups)), 3.0);
        assert_eq!(Objective::WorstCluster.score(&losses, Some(&groups)), 4.0);
        assert_eq!(Objective::Cvar { q: 0.5 }.score(&losses, None), 4.5);
        // Unequal groups: balanced differs from the plain mean.
        let groups = [0, 0, 0, 1];
        assert_eq!(Objective::ClusterBalanced.score(&losses, Some(&groups)), (2.0 + 6.0) / 2.0);
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_values() {
        for s in ["mean", "balanced", "worst-cluster", "cvar:0.25"] {
            assert_eq!(s.parse::<Objective>().unwrap().to_string(), s);
        }
        assert!("cvar:0".parse::<Objective>().is_err());
        assert!("median".parse::<Objective>().is_err());
    }
}
