//! k-means over window embeddings (linfa-clustering), the clustering step of EvoP's CCDS
//! (Wu et al. 2025, arXiv 2502.14910, Sec. 3.1).
//!
//! Seeded k-means++ initialisation, `n_runs` restarts keeping the lowest inertia (linfa's
//! behaviour), Euclidean distance. Labels are recomputed from the best centroids (linfa's own
//! `cluster_count` comes from the last restart, not the best one).
//!
//! Choosing k ([`KChoice::Auto`], [`auto_k`]): `k = clamp(round(sqrt(n_samples / 2)), 2, n_calib)`,
//! further capped at `n_samples`. `sqrt(n/2)` is the classic rule of thumb for k-means; the cap at
//! the calibration-set size `n_calib` keeps at least one chosen window per cluster possible.
use crate::error::{DataError, Result};
use linfa::traits::{Fit, Predict};
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use linfa_rng::rand_core::SeedableRng;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

/// How k is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KChoice {
    /// Exactly this many clusters.
    Fixed(usize),
    /// [`auto_k`].
    Auto,
}

/// The documented rule: `clamp(round(sqrt(n_samples / 2)), 2, n_calib)`, then at most `n_samples`.
pub fn auto_k(n_samples: usize, n_calib: usize) -> usize {
    let k = ((n_samples as f64) / 2.0).sqrt().round() as usize;
    k.clamp(2, n_calib.max(2)).min(n_samples)
}

/// k-means settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KMeansOptions {
    pub k: KChoice,
    /// Restarts (different seeded initialisations); the lowest inertia wins.
    pub n_runs: usize,
    /// Iteration cap per restart.
    pub max_iterations: u64,
    /// Convergence threshold on the centroid shift.
    pub tolerance: f32,
    /// Seed of the initialisations.
    pub seed: u64,
}

impl Default for KMeansOptions {
    /// `k = Auto`, `n_runs = 10`, `max_iterations = 300`, `tolerance = 1e-4`, `seed = 0`.
    fn default() -> Self {
        Self { k: KChoice::Auto, n_runs: 10, max_iterations: 300, tolerance: 1e-4, seed: 0 }
    }
}

impl KMeansOptions {
    /// The k to use for `n_samples` windows and a calibration set of `n_calib` windows.
    pub fn resolve_k(&self, n_samples: usize, n_calib: usize) -> Result<usize> {
        if n_samples == 0 {
            return Err(DataError::EmptyPool);
        }
        let k = match self.k {
            KChoice::Fixed(0) => return Err(DataError::param("k", 0, "at least one cluster")),
            KChoice::Fixed(k) => k,
            KChoice::Auto => auto_k(n_samples, n_calib),
        };
        if k > n_samples {
            return Err(DataError::TooManyClusters { k, n_samples });
        }
        Ok(k)
    }

    /// Checks `n_runs >= 1`, `max_iterations >= 1`, `tolerance > 0`.
    pub fn validate(&self) -> Result<()> {
        if self.n_runs == 0 {
            return Err(DataError::param("n_runs", 0, "at least one k-means run"));
        }
        if self.max_iterations == 0 {
            return Err(DataError::param("max_iterations", 0, "at least one iteration"));
        }
        // Written so that NaN is refused too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.tolerance > 0.0) {
            return Err(DataError::param("tolerance", self.tolerance, "must be positive"));
        }
        Ok(())
    }
}

/// A fitted clustering of the pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Clustering {
    pub k: usize,
    /// Cluster of every sample.
    pub labels: Vec<usize>,
    /// `(k, dim)`.
    pub centroids: Array2<f32>,
    /// Samples per cluster.
    pub sizes: Vec<usize>,
    /// Mean squared distance of a sample to its centroid.
    pub inertia: f64,
}

impl Clustering {
    /// Indices of the samples in cluster `c`, ascending.
    pub fn members(&self, c: usize) -> Vec<usize> {
        self.labels.iter().enumerate().filter(|(_, &l)| l == c).map(|(i, _)| i).collect()
    }
}

/// Runs k-means with `k` clusters on `embeddings` `(n_samples, dim)`.
pub fn kmeans(embeddings: ArrayView2<f32>, k: usize, opts: &KMeansOptions) -> Result<Clustering> {
    opts.validate()?;
    let n = embeddings.nrows();
    if n == 0 {
        return Err(DataError::EmptyPool);
    }
    if k == 0 {
        return Err(DataError::param("k", 0, "at least one cluster"));
    }
    if k > n {
        return Err(DataError::TooManyClusters { k, n_samples: n });
    }
    crate::embed::check_embeddings(embeddings, n)?;
    let data = DatasetBase::from(embeddings.to_owned());
    let rng = linfa_rng::Xoshiro256Plus::seed_from_u64(opts.seed);
    let model = KMeans::params_with_rng(k, rng)
        .n_runs(opts.n_runs)
        .max_n_iterations(opts.max_iterations)
        .tolerance(opts.tolerance)
        .fit(&data)
        .map_err(|e| DataError::KMeans(e.to_string()))?;
    let labels: Vec<usize> = model.predict(&data).to_vec();
    let mut sizes = vec![0usize; k];
    for &l in &labels {
        sizes[l] += 1;
    }
    let inertia = model.inertia() as f64;
    tracing::debug!(k, n_samples = n, inertia, ?sizes, "k-means fitted");
    Ok(Clustering { k, labels, centroids: model.centroids().clone(), sizes, inertia })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_k_follows_the_documented_rule() {
        assert_eq!(auto_k(10_000, 128), 71);
        assert_eq!(auto_k(10_000, 32), 32);
        assert_eq!(auto_k(3, 128), 2);
        assert_eq!(auto_k(1, 128), 1);
    }

    #[test]
    fn invalid_parameters_are_errors() {
        let x = Array2::<f32>::zeros((3, 2));
        assert!(matches!(kmeans(x.view(), 4, &KMeansOptions::default()), Err(DataError::TooManyClusters { k: 4, n_samples: 3 })));
        assert!(matches!(kmeans(Array2::<f32>::zeros((0, 2)).view(), 1, &KMeansOptions::default()), Err(DataError::EmptyPool)));
        let bad = KMeansOptions { n_runs: 0, ..Default::default() };
        assert!(kmeans(x.view(), 2, &bad).unwrap_err().to_string().contains("n_runs"));
        let mut nan = x.clone();
        nan[[1, 1]] = f32::NAN;
        assert!(matches!(kmeans(nan.view(), 2, &KMeansOptions::default()), Err(DataError::NonFiniteEmbedding { row: 1 })));
        assert!(matches!(KMeansOptions { k: KChoice::Fixed(9), ..Default::default() }.resolve_k(3, 2), Err(DataError::TooManyClusters { .. })));
    }

    #[test]
    fn separated_blobs_are_recovered_and_seeded() {
        let mut x = Array2::<f32>::zeros((30, 2));
        for i in 0..30 {
            let c = (i / 10) as f32 * 10.0;
            x[[i, 0]] = c + (i % 10) as f32 * 0.01;
            x[[i, 1]] = -c;
        }
        let opts = KMeansOptions { seed: 7, ..Default::default() };
        let a = kmeans(x.view(), 3, &opts).unwrap();
        assert_eq!(a.sizes.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 1);
        for blob in 0..3 {
            let l = a.labels[blob * 10];
            assert!(a.labels[blob * 10..blob * 10 + 10].iter().all(|&m| m == l));
        }
        assert_eq!(a, kmeans(x.view(), 3, &opts).unwrap());
    }
}
