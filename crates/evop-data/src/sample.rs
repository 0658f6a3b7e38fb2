//! Choosing the calibration windows from the pool: EvoP's cluster-based calibration dataset
//! sampling (CCDS; Wu et al. 2025, arXiv 2502.14910, Sec. 3.1) and the random baseline, behind one
//! [`Sampler`] trait.
//!
//! CCDS: embed every candidate window ([`crate::embed`]), cluster the embeddings with k-means
//! ([`crate::cluster`]), then draw the `n` calibration windows across the clusters ([`Quota`]):
//! - [`Quota::EqualTopUp`] (default): every cluster gets `n / k` windows (the remainder going to the
//!   clusters with the most windows left); a cluster smaller than its share gives all it has and the
//!   shortfall is topped up from the larger clusters, repeatedly, until `n` are chosen. Windows
//!   inside a cluster are drawn at random (seeded).
//! - [`Quota::Proportional`]: cluster `c` of size `s_c` gets `n * s_c / N` windows (largest
//!   remainder rounding), drawn at random: stratified sampling, same mix as the pool.
//! - [`Quota::NearestToCentroid`]: the equal quotas, filled with the windows closest to their
//!   centroid (the most typical window of each cluster) instead of random ones.
//!
//! So text that is rare in the pool but forms its own clusters gets a share of the calibration set
//! proportional to its number of clusters, not to its number of windows, which random sampling (the
//! SLEB baseline, [`RandomSampler`]) would give it. The chosen indices are returned in ascending
//! pool order, each with its cluster.
use crate::cluster::{kmeans, Clustering, KChoice, KMeansOptions};
use crate::embed::{check_embeddings, Embedder};
use crate::error::{DataError, Result};
use crate::window::Window;
use ndarray::ArrayView2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

/// How the calibration set is spread over the clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// Equal quota per cluster, shortfalls topped up from larger clusters; random within a cluster.
    EqualTopUp,
    /// Quota proportional to cluster size; random within a cluster.
    Proportional,
    /// Equal quota with top-up; the windows nearest to each centroid.
    NearestToCentroid,
}

/// Everything that determined a selection, recorded in the calibration set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    /// `random` or `ccds`.
    pub sampler: String,
    pub seed: u64,
    /// Candidate windows in the pool.
    pub pool_size: usize,
    /// Embedder description (CCDS through [`CcdsSampler`]).
    pub embedder: Option<String>,
    pub quota: Option<Quota>,
    /// How k was chosen, and the k used.
    pub k_choice: Option<KChoice>,
    pub k: Option<usize>,
    pub n_runs: Option<usize>,
    /// Pool windows per cluster.
    pub cluster_sizes: Option<Vec<usize>>,
    /// k-means inertia (mean squared distance to the centroid).
    pub inertia: Option<f64>,
}

/// The chosen windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Pool indices, ascending.
    pub indices: Vec<usize>,
    /// Cluster of each chosen window (CCDS only).
    pub clusters: Option<Vec<usize>>,
    pub settings: SamplerSettings,
}

impl Selection {
    /// Chosen windows per cluster (CCDS only).
    pub fn chosen_per_cluster(&self) -> Option<Vec<usize>> {
        let k = self.settings.k?;
        let mut counts = vec![0; k];
        for &c in self.clusters.as_ref()? {
            counts[c] += 1;
        }
        Some(counts)
    }
}

/// Chooses `n` windows of a pool.
pub trait Sampler {
    fn select(&self, pool: &[Window], n: usize) -> Result<Selection>;
}

fn check_n(pool_size: usize, n: usize) -> Result<()> {
    if pool_size == 0 {
        return Err(DataError::EmptyPool);
    }
    if n == 0 {
        return Err(DataError::param("calibration set size n", 0, "at least one window"));
    }
    if n > pool_size {
        return Err(DataError::NotEnoughWindows { requested: n, available: pool_size });
    }
    Ok(())
}

/// The baseline: `n` windows uniformly at random without replacement (seeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomSampler {
    pub seed: u64,
}

impl RandomSampler {
    /// Chooses `n` of `pool_size` indices, ascending.
    pub fn select_indices(&self, pool_size: usize, n: usize) -> Result<Selection> {
        check_n(pool_size, n)?;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
        let mut indices = rand::seq::index::sample(&mut rng, pool_size, n).into_vec();
        indices.sort_unstable();
        Ok(Selection {
            indices,
            clusters: None,
            settings: SamplerSettings {
                sampler: "random".into(),
                seed: self.seed,
                pool_size,
                embedder: None,
                quota: None,
                k_choice: None,
                k: None,
                n_runs: None,
                cluster_sizes: None,
                inertia: None,
            },
        })
    }
}

impl Sampler for RandomSampler {
    fn select(&self, pool: &[Window], n: usize) -> Result<Selection> {
        self.select_indices(pool.len(), n)
    }
}

/// CCDS settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CcdsOptions {
    /// k-means settings; `kmeans.seed` also seeds the draws inside clusters.
    pub kmeans: KMeansOptions,
    pub quota: Quota,
}

impl Default for CcdsOptions {
    /// [`KMeansOptions::default`] (k auto, 10 runs, seed 0) and [`Quota::EqualTopUp`].
    fn default() -> Self {
        Self { kmeans: KMeansOptions::default(), quota: Quota::EqualTopUp }
    }
}

impl CcdsOptions {
    /// Default options with this seed.
    pub fn seeded(seed: u64) -> Self {
        Self { kmeans: KMeansOptions { seed, ..KMeansOptions::default() }, ..Self::default() }
    }
}

/// CCDS with an embedder: embeds the pool, clusters, draws.
pub struct CcdsSampler<E: Embedder> {
    pub embedder: E,
    pub options: CcdsOptions,
}

impl<E: Embedder> CcdsSampler<E> {
    pub fn new(embedder: E, options: CcdsOptions) -> Self {
        Self { embedder, options }
    }
}

impl<E: Embedder> Sampler for CcdsSampler<E> {
    fn select(&self, pool: &[Window], n: usize) -> Result<Selection> {
        check_n(pool.len(), n)?;
        let embeddings = self.embedder.embed(pool)?;
        let mut sel = ccds_select(embeddings.view(), n, &self.options)?;
        sel.settings.embedder = Some(self.embedder.name());
        Ok(sel)
    }
}

/// CCDS on precomputed embeddings (one row per pool window): cluster, then draw `n`.
pub fn ccds_select(embeddings: ArrayView2<f32>, n: usize, opts: &CcdsOptions) -> Result<Selection> {
    let pool_size = embeddings.nrows();
    check_n(pool_size, n)?;
    check_embeddings(embeddings, pool_size)?;
    let k = opts.kmeans.resolve_k(pool_size, n)?;
    let clustering = kmeans(embeddings, k, &opts.kmeans)?;
    let (indices, clusters) = draw_from_clusters(&clustering, embeddings, n, opts.quota, opts.kmeans.seed)?;
    tracing::info!(k, pool_size, n, sizes = ?clustering.sizes, "CCDS selection");
    Ok(Selection {
        indices,
        clusters: Some(clusters),
        settings: SamplerSettings {
            sampler: "ccds".into(),
            seed: opts.kmeans.seed,
            pool_size,
            embedder: None,
            quota: Some(opts.quota),
            k_choice: Some(opts.kmeans.k),
            k: Some(k),
            n_runs: Some(opts.kmeans.n_runs),
            cluster_sizes: Some(clustering.sizes.clone()),
            inertia: Some(clustering.inertia),
        },
    })
}

/// Draws `n` samples across the clusters of `clustering` with `quota`; returns the chosen pool
/// indices (ascending) and the cluster of each.
pub fn draw_from_clusters(
    clustering: &Clustering,
    embeddings: ArrayView2<f32>,
    n: usize,
    quota: Quota,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    check_n(clustering.labels.len(), n)?;
    let quotas = match quota {
        Quota::EqualTopUp | Quota::NearestToCentroid => equal_quotas(&clustering.sizes, n),
        Quota::Proportional => proportional_quotas(&clustering.sizes, n),
    };
    if n < clustering.k {
        tracing::warn!(n, k = clustering.k, "fewer calibration windows than clusters: the smallest clusters get none");
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut chosen: Vec<(usize, usize)> = Vec::with_capacity(n);
    for (c, &q) in quotas.iter().enumerate() {
        let mut members = clustering.members(c);
        match quota {
            Quota::NearestToCentroid => {
                let centroid = clustering.centroids.row(c);
                let dist = |i: usize| -> f32 {
                    embeddings.row(i).iter().zip(centroid.iter()).map(|(a, b)| (a - b) * (a - b)).sum()
                };
                let mut keyed: Vec<(f32, usize)> = members.iter().map(|&i| (dist(i), i)).collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                members = keyed.into_iter().map(|(_, i)| i).collect();
            }
            Quota::EqualTopUp | Quota::Proportional => members.shuffle(&mut rng),
        }
        chosen.extend(members.into_iter().take(q).map(|i| (i, c)));
    }
    chosen.sort_unstable();
    Ok(chosen.into_iter().unzip())
}

/// Equal quotas with top-up: `n` spread evenly over the clusters; a cluster smaller than its share
/// gives all its members and the rest is spread again over the others; a remainder smaller than the
/// number of open clusters goes one each to the clusters with the most spare members (ties: lower
/// index). Requires `n <= sizes.iter().sum()`; returns fewer than `n` in total only otherwise.
pub fn equal_quotas(sizes: &[usize], n: usize) -> Vec<usize> {
    let mut q = vec![0usize; sizes.len()];
    let mut remaining = n;
    loop {
        let mut open: Vec<usize> = (0..sizes.len()).filter(|&c| q[c] < sizes[c]).collect();
        if remaining == 0 || open.is_empty() {
            return q;
        }
        let share = remaining / open.len();
        if share == 0 {
            open.sort_by(|&a, &b| (sizes[b] - q[b]).cmp(&(sizes[a] - q[a])).then(a.cmp(&b)));
            for &c in open.iter().take(remaining) {
                q[c] += 1;
            }
            return q;
        }
        for c in open {
            let add = share.min(sizes[c] - q[c]);
            q[c] += add;
            remaining -= add;
        }
    }
}

/// Proportional quotas, largest-remainder rounding: `floor(n * s_c / N)` each, the leftover one
/// each to the clusters with the largest fractional parts (ties: lower index).
pub fn proportional_quotas(sizes: &[usize], n: usize) -> Vec<usize> {
    let total: u128 = sizes.iter().map(|&s| s as u128).sum();
    if total == 0 {
        return vec![0; sizes.len()];
    }
    let n = (n as u128).min(total);
    let mut q: Vec<usize> = sizes.iter().map(|&s| (n * s as u128 / total) as usize).collect();
    let assigned: usize = q.iter().sum();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (n * sizes[a] as u128 % total, n * sizes[b] as u128 % total);
        rb.cmp(&ra).then(a.cmp(&b))
    });
    for &c in order.iter().take(n as usize - assigned) {
        q[c] += 1;
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_quotas_top_up_from_larger_clusters() {
        assert_eq!(equal_quotas(&[10, 10, 10], 9), vec![3, 3, 3]);
        assert_eq!(equal_quotas(&[1, 10, 10], 9), vec![1, 4, 4]);
        assert_eq!(equal_quotas(&[2, 3, 50], 12), vec![2, 3, 7]);
        assert_eq!(equal_quotas(&[5, 9, 7], 4), vec![1, 2, 1]);
        assert_eq!(equal_quotas(&[5, 9, 7], 2), vec![0, 1, 1]);
        assert_eq!(equal_quotas(&[1, 1], 2), vec![1, 1]);
        for n in 0..=21 {
            let q = equal_quotas(&[5, 9, 7], n);
            assert_eq!(q.iter().sum::<usize>(), n);
            assert!(q.iter().zip([5, 9, 7]).all(|(&a, b)| a <= b));
        }
    }

    #[test]
    fn proportional_quotas_use_largest_remainders() {
        assert_eq!(proportional_quotas(&[300, 300, 300, 33, 33, 34], 60), vec![18, 18, 18, 2, 2, 2]);
        assert_eq!(proportional_quotas(&[1, 1, 1], 2), vec![1, 1, 0]);
        for n in 0..=21 {
            let q = proportional_quotas(&[5, 9, 7], n);
            assert_eq!(q.iter().sum::<usize>(), n);
            assert!(q.iter().zip([5, 9, 7]).all(|(&a, b)| a <= b));
        }
    }

    #[test]
    fn sample_size_is_checked() {
        let r = RandomSampler { seed: 1 };
        assert!(matches!(r.select_indices(0, 1), Err(DataError::EmptyPool)));
        assert!(matches!(r.select_indices(3, 4), Err(DataError::NotEnoughWindows { requested: 4, available: 3 })));
        assert!(r.select_indices(3, 0).is_err());
        let s = r.select_indices(10, 4).unwrap();
        assert_eq!(s.indices.len(), 4);
        assert!(s.indices.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s, r.select_indices(10, 4).unwrap());
    }
}
