//! Window embedders for CCDS: one trait, two implementations.
//!
//! EvoP's CCDS (Wu et al. 2025, arXiv 2502.14910, Sec. 3.1) clusters candidate calibration
//! windows by their content; any map from a window to a fixed-length vector works. evop offers:
//! - [`MiniLm`]: all-MiniLM-L6-v2 sentence embeddings of the window's decoded text (mean pooling
//!   over the attention mask, L2-normalised), independent of the model being pruned;
//! - [`HiddenStateEmbedder`]: the target model's own mean-pooled residual stream at a chosen block
//!   boundary, i.e. how the model itself groups the text.
use crate::error::{DataError, Result};
use crate::window::Window;
use ndarray::Array2;

pub mod hidden;
pub mod minilm;

pub use hidden::HiddenStateEmbedder;
pub use minilm::{MiniLm, MiniLmOptions};

/// Maps windows to embedding rows. Batched inside; row `i` belongs to `windows[i]`.
pub trait Embedder {
    /// A short description recorded in calibration-set settings (model, block, pooling).
    fn name(&self) -> String;

    /// Embedding dimension.
    fn dim(&self) -> usize;

    /// One row per window, `(windows.len(), dim)`.
    fn embed(&self, windows: &[Window]) -> Result<Array2<f32>>;
}

impl<E: Embedder + ?Sized> Embedder for &E {
    fn name(&self) -> String {
        (**self).name()
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn embed(&self, windows: &[Window]) -> Result<Array2<f32>> {
        (**self).embed(windows)
    }
}

impl<E: Embedder + ?Sized> Embedder for Box<E> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn embed(&self, windows: &[Window]) -> Result<Array2<f32>> {
        (**self).embed(windows)
    }
}

/// Checks an embedding matrix: `expected_rows` rows, finite values.
pub fn check_embeddings(embeddings: ndarray::ArrayView2<f32>, expected_rows: usize) -> Result<()> {
    let (rows, dim) = embeddings.dim();
    if rows != expected_rows || dim == 0 {
        return Err(DataError::EmbeddingShape { rows, dim, expected_rows, expected_dim: None });
    }
    if let Some(row) = embeddings.rows().into_iter().position(|r| r.iter().any(|x| !x.is_finite())) {
        return Err(DataError::NonFiniteEmbedding { row });
    }
    Ok(())
}

/// Mean over the first `n_tokens[b]` positions of `hidden` `(b, s, h)`, then optionally L2
/// normalisation (divided by `max(norm, 1e-12)`, as `torch.nn.functional.normalize`). Returns `(b, h)` f32.
pub(crate) fn masked_mean(hidden: &candle_core::Tensor, n_tokens: &[usize], normalize: bool) -> Result<Array2<f32>> {
    use candle_core::{DType, Tensor};
    let (b, s, h) = hidden.dims3()?;
    let mask: Vec<f32> =
        n_tokens.iter().flat_map(|&n| (0..s).map(move |p| if p < n { 1.0 } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (b, s, 1), hidden.device())?;
    let hidden = hidden.to_dtype(DType::F32)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
    let mut pooled = summed.broadcast_div(&counts)?;
    if normalize {
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        pooled = pooled.broadcast_div(&norm)?;
    }
    let flat = pooled.to_device(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Array2::from_shape_vec((b, h), flat).map_err(|e| DataError::KMeans(e.to_string()))
}
