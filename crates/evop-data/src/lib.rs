//! Corpora, calibration windows and CCDS (cluster-based calibration dataset sampling) for
//! depth pruning.
//!
//! EvoP (Wu et al. 2025, arXiv 2502.14910) chooses the blocks to remove on a small calibration
//! set; which text is in that set decides which blocks look redundant. Instead of taking windows
//! at random (SLEB takes shuffled WikiText-2 rows), CCDS embeds many candidate windows, clusters
//! them and draws the calibration set across the clusters, so the pruning decision sees every kind
//! of text in the pool, not only the dominant one.
//!
//! The data path, one module per step:
//! corpus ([`corpus`], [`wikipedia`]) -> split ([`split`]) -> token windows ([`window`]) ->
//! embeddings ([`embed`]) -> k-means ([`cluster`]) -> selection ([`sample`]) -> calibration set
//! ([`calibration`]).
//!
//! Every random choice flows from a seed; the library logs through `tracing` and never prints.
//!
//! ```
//! use evop_data::{ccds_select, equal_quotas, CcdsOptions};
//! use ndarray::Array2;
//! // 900 windows of one kind (two clusters) and 100 of another (one cluster), in 2-D.
//! let emb = Array2::from_shape_fn((1000, 2), |(i, j)| {
//!     let centre = [[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]][if i < 450 { 0 } else if i < 900 { 1 } else { 2 }];
//!     centre[j] + ((i * 7 + j * 3) % 10) as f32 * 0.01
//! });
//! let mut opts = CcdsOptions::seeded(42);
//! opts.kmeans.k = evop_data::KChoice::Fixed(3);
//! let sel = ccds_select(emb.view(), 30, &opts)?;
//! assert_eq!(sel.chosen_per_cluster(), Some(vec![10, 10, 10]));
//! assert_eq!(sel.indices.iter().filter(|&&i| i >= 900).count(), 10); // the minority gets a third
//! assert_eq!(equal_quotas(&[2, 50, 50], 12), vec![2, 5, 5]);
//! # Ok::<(), evop_data::DataError>(())
//! ```
pub mod calibration;
pub mod cluster;
pub mod corpus;
pub mod embed;
pub mod error;
pub mod sample;
pub mod split;
pub mod wikipedia;
pub mod window;

pub use calibration::{CalibrationSet, CalibrationSettings, CALIBRATION_FORMAT};
pub use cluster::{auto_k, kmeans, Clustering, KChoice, KMeansOptions};
pub use corpus::{Corpus, DocMeta, Document};
pub use embed::{Embedder, HiddenStateEmbedder, MiniLm, MiniLmOptions};
pub use error::{DataError, Result};
/// The `ndarray` version of the embedding matrices in this API.
pub use ndarray;
pub use sample::{
    ccds_select, draw_from_clusters, equal_quotas, proportional_quotas, CcdsOptions, CcdsSampler, Quota,
    RandomSampler, Sampler, SamplerSettings, Selection,
};
pub use split::{CorpusSplit, SplitRule};
pub use wikipedia::{read_wikipedia_leads, WIKIPEDIA_ATTRIBUTION, WIKIPEDIA_SOURCE, WIKIPEDIA_TOPICS};
pub use window::{make_windows, tokenize_corpus, windows_from_tokens, Boundary, Provenance, Remainder, Window, WindowOptions};
