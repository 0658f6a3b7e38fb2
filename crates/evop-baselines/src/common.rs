//! Checks and small numerics shared by the methods.
use crate::error::{BaselineError, Result};
use candle_core::{DType, Tensor, D};
use evop_model::BlockLm;
use std::cmp::Ordering;

/// Checks `0 < n < num_blocks`.
pub(crate) fn check_n(n: usize, num_blocks: usize) -> Result<()> {
    if n == 0 {
        return Err(BaselineError::NothingToRemove);
    }
    if n >= num_blocks {
        return Err(BaselineError::TooManyBlocks { n, num_blocks });
    }
    Ok(())
}

/// Checks that the calibration set is non-empty and its windows share one length of at least
/// `min_len` tokens; returns that length.
pub(crate) fn check_windows(windows: &[Vec<u32>], min_len: usize) -> Result<usize> {
    let first = windows.first().ok_or(BaselineError::EmptyCalibration)?.len();
    for (index, w) in windows.iter().enumerate() {
        if w.len() != first {
            return Err(BaselineError::BadWindow {
                index,
                len: w.len(),
                why: format!("all windows must have the length of window 0 ({first} tokens)"),
            });
        }
        if w.len() < min_len {
            return Err(BaselineError::BadWindow { index, len: w.len(), why: format!("at least {min_len} are needed") });
        }
    }
    Ok(first)
}

/// The blocks not in `protected`, ascending; checks every protected index.
pub(crate) fn eligible_blocks(num_blocks: usize, protected: &[usize]) -> Result<Vec<usize>> {
    if let Some(&block) = protected.iter().find(|&&b| b >= num_blocks) {
        return Err(BaselineError::ProtectedOutOfRange { block, num_blocks });
    }
    Ok((0..num_blocks).filter(|b| !protected.contains(b)).collect())
}

/// Checks that `n` blocks can be taken from `eligible`.
pub(crate) fn check_eligible(method: &'static str, n: usize, eligible: usize, num_blocks: usize, why: impl Into<String>) -> Result<()> {
    if n > eligible {
        return Err(BaselineError::NotEnoughEligible { method, n, eligible, num_blocks, why: why.into() });
    }
    Ok(())
}

/// Orders losses ascending with NaN after everything (a NaN loss never wins).
pub(crate) fn loss_order(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Index of the lowest value, the first one on ties (as a strict `<` scan does); NaN never wins
/// unless everything is NaN.
pub(crate) fn argmin(values: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &v) in values.iter().enumerate() {
        match best {
            None => best = Some(i),
            Some(b) if loss_order(v, values[b]) == Ordering::Less => best = Some(i),
            _ => {}
        }
    }
    best
}

/// Runs the dense model over the windows, `batch_size` at a time, and hands `f` the `L + 1`
/// boundary states `(b, s, h)` of each batch. Returns the number of block forwards run.
pub(crate) fn for_each_dense_batch(
    lm: &dyn BlockLm,
    windows: &[Vec<u32>],
    batch_size: usize,
    mut f: impl FnMut(&[Tensor]) -> Result<()>,
) -> Result<u64> {
    let mut forwards = 0u64;
    for chunk in windows.chunks(batch_size.max(1)) {
        let ids = evop_model::perplexity::batch_tensor(lm, chunk)?;
        let states = evop_model::hidden_states(lm, &ids)?;
        forwards += lm.num_blocks() as u64;
        f(&states)?;
    }
    Ok(forwards)
}

/// Per-token cosine similarity `(b, s)` (f64) between two `(b, s, h)` states.
pub(crate) fn token_cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let map = |e: candle_core::Error| BaselineError::Model(e.into());
    let a = a.to_dtype(DType::F64).map_err(map)?;
    let b = b.to_dtype(DType::F64).map_err(map)?;
    let dot = (&a * &b).and_then(|t| t.sum(D::Minus1)).map_err(map)?;
    let na = a.sqr().and_then(|t| t.sum(D::Minus1)).and_then(|t| t.sqrt()).map_err(map)?;
    let nb = b.sqr().and_then(|t| t.sum(D::Minus1)).and_then(|t| t.sqrt()).map_err(map)?;
    let denom = (na * nb).map_err(map)?;
    dot.div(&denom).map_err(map)
}

/// Tensor to nested f64 rows.
pub(crate) fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    t.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(|e| BaselineError::Model(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmin_takes_the_first_lowest_and_skips_nan() {
        assert_eq!(argmin(&[3.0, 1.0, 1.0, 2.0]), Some(1));
        assert_eq!(argmin(&[f64::NAN, 5.0, 4.0]), Some(2));
        assert_eq!(argmin(&[f64::NAN, f64::NAN]), Some(0));
        assert_eq!(argmin(&[]), None);
    }

    #[test]
    fn n_and_windows_are_checked() {
        assert!(matches!(check_n(0, 4), Err(BaselineError::NothingToRemove)));
        assert!(matches!(check_n(4, 4), Err(BaselineError::TooManyBlocks { n: 4, num_blocks: 4 })));
        assert!(check_n(3, 4).is_ok());
        assert!(matches!(check_windows(&[], 2), Err(BaselineError::EmptyCalibration)));
        assert!(matches!(check_windows(&[vec![1, 2], vec![1]], 2), Err(BaselineError::BadWindow { index: 1, len: 1, .. })));
        assert!(matches!(check_windows(&[vec![1]], 2), Err(BaselineError::BadWindow { index: 0, .. })));
        assert_eq!(check_windows(&[vec![1, 2, 3], vec![4, 5, 6]], 2).unwrap(), 3);
        assert!(matches!(eligible_blocks(4, &[4]), Err(BaselineError::ProtectedOutOfRange { block: 4, num_blocks: 4 })));
        assert_eq!(eligible_blocks(4, &[0, 3]).unwrap(), vec![1, 2]);
    }
}
