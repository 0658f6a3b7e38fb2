//! CCDS against random sampling on a synthetic two-source pool (9:1), with embeddings computed by
//! a toy embedder from the windows themselves, so the whole path Sampler -> CalibrationSet runs.
use evop_data::{
    CalibrationSet, CcdsOptions, CcdsSampler, DataError, Embedder, KChoice, Provenance, Quota, RandomSampler,
    Sampler, Window, WindowOptions,
};
use ndarray::Array2;

const DIM: usize = 16;

/// Source A: 900 windows around 3 centres; source B: 100 windows around 3 other centres.
/// `ids[0]` = blob (0..6), `ids[1]` = a per-window number that drives small noise.
fn pool() -> Vec<Window> {
    (0..1000)
        .map(|i| {
            let (source, blob) = if i < 900 { ("A", (i % 3) as u32) } else { ("B", 3 + (i % 3) as u32) };
            Window {
                ids: vec![blob, i as u32, 0, 0],
                n_tokens: 4,
                provenance: Provenance {
                    source: source.into(),
                    doc_index: i,
                    title: None,
                    topic: None,
                    token_offset: 0,
                    doc_span: 1,
                },
            }
        })
        .collect()
}

struct ToyEmbedder;

impl Embedder for ToyEmbedder {
    fn name(&self) -> String {
        "toy: one-hot blob + noise".into()
    }
    fn dim(&self) -> usize {
        DIM
    }
    fn embed(&self, windows: &[Window]) -> evop_data::Result<Array2<f32>> {
        Ok(Array2::from_shape_fn((windows.len(), DIM), |(r, j)| {
            let (blob, n) = (windows[r].ids[0] as usize, windows[r].ids[1] as usize);
            let noise = ((n * 31 + j * 17) % 97) as f32 / 97.0 * 0.2;
            if j == blob { 4.0 + noise } else { noise }
        }))
    }
}

fn minority(set: &CalibrationSet) -> usize {
    set.windows.iter().filter(|w| w.provenance.source == "B").count()
}

fn ccds(quota: Quota, k: KChoice, seed: u64) -> CcdsSampler<ToyEmbedder> {
    let mut options = CcdsOptions::seeded(seed);
    options.quota = quota;
    options.kmeans.k = k;
    CcdsSampler::new(ToyEmbedder, options)
}

fn build(sampler: &dyn Sampler, n: usize) -> CalibrationSet {
    CalibrationSet::build(&pool(), n, sampler, WindowOptions::new(4), "toy").unwrap()
}

#[test]
fn random_follows_the_ratio_and_ccds_follows_the_clusters() {
    let n = 60;
    // Random: about 10% from the minority source (binomial mean 6, sd 2.3).
    let mut random_total = 0;
    for seed in 0..20 {
        let b = minority(&build(&RandomSampler { seed }, n));
        assert!(b <= 15, "seed {seed}: {b} minority windows");
        random_total += b;
    }
    let random_mean = random_total as f64 / 20.0;
    assert!((random_mean - 6.0).abs() < 2.0, "random mean {random_mean}");

    // CCDS, k = 6 (the true blobs): equal quotas give the minority its 3 clusters' share, 30 of 60.
    let set = build(&ccds(Quota::EqualTopUp, KChoice::Fixed(6), 1), n);
    assert_eq!(minority(&set), 30);
    assert_eq!(set.settings.sampler.cluster_sizes.as_ref().unwrap().iter().filter(|&&s| s >= 300).count(), 3);
    let mut per_cluster = vec![0; 6];
    set.group_labels().iter().for_each(|&c| per_cluster[c] += 1);
    assert_eq!(per_cluster, vec![10; 6]);

    // Proportional: back to the pool's mix.
    assert_eq!(minority(&build(&ccds(Quota::Proportional, KChoice::Fixed(6), 1), n)), 6);

    // Automatic k (round(sqrt(1000/2)) = 22) splits the blobs further; every cluster is pure, and
    // the minority gets exactly the quotas of its clusters.
    let set = build(&ccds(Quota::EqualTopUp, KChoice::Auto, 1), n);
    let k = set.settings.sampler.k.unwrap();
    assert_eq!(k, 22);
    let mut b_clusters = std::collections::BTreeSet::new();
    for (w, &c) in set.windows.iter().zip(set.clusters.as_ref().unwrap()) {
        if w.provenance.source == "B" {
            b_clusters.insert(c);
        }
    }
    let quotas = evop_data::equal_quotas(set.settings.sampler.cluster_sizes.as_ref().unwrap(), n);
    let expected: usize = b_clusters.iter().map(|&c| quotas[c]).sum();
    assert_eq!(minority(&set), expected);
    assert!(b_clusters.len() >= 3, "each minority blob has a cluster of its own: {b_clusters:?}");
    assert!(expected > n / 10, "minority got {expected} of {n}: CCDS must lift it above its 10% share");
}

#[test]
fn ccds_draws_from_every_cluster() {
    for quota in [Quota::EqualTopUp, Quota::Proportional, Quota::NearestToCentroid] {
        let sel = ccds(quota, KChoice::Auto, 5).select(&pool(), 64).unwrap();
        let counts = sel.chosen_per_cluster().unwrap();
        assert_eq!(counts.len(), sel.settings.k.unwrap());
        assert!(counts.iter().all(|&c| c > 0), "{quota:?}: {counts:?}");
        assert_eq!(sel.indices.len(), 64);
        assert!(sel.indices.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn nearest_to_centroid_takes_the_most_typical_windows() {
    let pool = pool();
    let emb = ToyEmbedder.embed(&pool).unwrap();
    let mut opts = CcdsOptions::seeded(3);
    opts.kmeans.k = KChoice::Fixed(6);
    let clustering = evop_data::kmeans(emb.view(), 6, &opts.kmeans).unwrap();
    let (chosen, labels) = evop_data::draw_from_clusters(&clustering, emb.view(), 12, Quota::NearestToCentroid, 3).unwrap();
    let dist = |i: usize, c: usize| -> f32 {
        emb.row(i).iter().zip(clustering.centroids.row(c)).map(|(a, b)| (a - b) * (a - b)).sum()
    };
    for (&i, &c) in chosen.iter().zip(&labels) {
        let worse = clustering.members(c).into_iter().filter(|m| !chosen.contains(m)).map(|m| dist(m, c));
        assert!(worse.into_iter().all(|d| d >= dist(i, c)));
    }
}

#[test]
fn same_seed_gives_the_same_set_and_another_seed_another() {
    let a = build(&ccds(Quota::EqualTopUp, KChoice::Auto, 11), 32);
    let b = build(&ccds(Quota::EqualTopUp, KChoice::Auto, 11), 32);
    assert_eq!(a, b);
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    let c = build(&ccds(Quota::EqualTopUp, KChoice::Auto, 12), 32);
    assert_ne!(a.windows, c.windows);
    assert_eq!(build(&RandomSampler { seed: 4 }, 32), build(&RandomSampler { seed: 4 }, 32));
    assert_eq!(a.settings.sampler.embedder.as_deref(), Some("toy: one-hot blob + noise"));
    assert_eq!(a.settings.sampler.seed, 11);
}

#[test]
fn impossible_requests_are_typed_errors() {
    let p = pool();
    let s = ccds(Quota::EqualTopUp, KChoice::Fixed(2000), 0);
    assert!(matches!(s.select(&p[..100], 10), Err(DataError::TooManyClusters { k: 2000, n_samples: 100 })));
    assert!(matches!(s.select(&[], 10), Err(DataError::EmptyPool)));
    assert!(matches!(RandomSampler { seed: 0 }.select(&p[..5], 6), Err(DataError::NotEnoughWindows { .. })));
}
