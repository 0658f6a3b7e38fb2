//! Mean token NLL per window from the final residual stream, with the loss fused into one pass over
//! the logits.
//!
//! The head of a small model is a large share of a candidate's cost (SmolLM2: a 576 x 49,152 LM
//! head against 576-wide blocks). Computing `log_softmax` / `log_sum_exp` with tensor operations
//! walks the `(positions, vocab)` logits several times and allocates as many temporaries (a
//! narrowed copy, the shifted logits, their exponentials). Here the logits are produced once by
//! the model's head (the one GEMM, unchanged) and each row is then reduced in place: its maximum,
//! then `sum(exp(x - max))` accumulated in f64, then `max + ln(sum) - x[target]`. Exact up to float
//! reassociation and the exponential's rounding (a Cephes-style polynomial `exp`, relative error
//! about 2e-7, vectorised with the CPU's AVX-512 or AVX2 when present, checked at run time). On
//! other devices, or for dtypes other than f32 on the CPU, the tensor-operation path computes the
//! same quantity.
//!
//! Positions: window `w`'s loss is the mean over predicted positions `p` (predicting token
//! `p + 1` from position `p`) in [`Positions`]: every position (the exact loss), or every
//! `stride`-th one (an approximation used for screening; the blocks still run on every position,
//! only the head and the loss shrink).
use crate::error::Result;
use crate::model::BlockLm;
use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

/// Which predicted positions of a window of `seq_len` tokens enter its loss.
#[derive(Clone, Debug)]
pub(crate) struct Positions {
    /// Predicted positions, ascending (`p` predicts token `p + 1`).
    pub list: Vec<u32>,
    /// `(list.len(),)` u32 index tensor on the model's device, `None` when `list` is `0..seq_len - 1`.
    pub index: Option<Tensor>,
}

impl Positions {
    /// Every `stride`-th predicted position of a `seq_len`-token window, ending at the last one
    /// (`stride <= 1`: all `seq_len - 1` positions).
    pub fn strided(seq_len: usize, stride: usize, device: &Device) -> Result<Self> {
        let last = seq_len.saturating_sub(2) as i64;
        if stride <= 1 || seq_len < 3 {
            return Ok(Self { list: (0..=last.max(0) as u32).collect(), index: None });
        }
        let mut list: Vec<u32> = (0..).map(|k| last - (k * stride) as i64).take_while(|&p| p >= 0).map(|p| p as u32).collect();
        list.reverse();
        let index = Tensor::from_vec(list.clone(), (list.len(),), device)?;
        Ok(Self { list, index: Some(index) })
    }
}

/// Mean NLL of each window (`targets[w][k]` = the token predicted at
/// `positions.list[k]`) from the last block's output `h` `(b, s, hidden)`.
pub(crate) fn window_mean_nll(lm: &dyn BlockLm, h: &Tensor, targets: &[Vec<u32>], positions: &Positions) -> Result<Vec<f64>> {
    let (b, s, _) = h.dims3()?;
    let hp = match &positions.index {
        None => h.narrow(1, 0, s - 1)?,
        Some(idx) => h.index_select(idx, 1)?,
    }
    .contiguous()?;
    let logits = lm.head(&hp)?.to_dtype(DType::F32)?.contiguous()?;
    let n = positions.list.len();
    if let Some(rows) = fused_rows(&logits, targets)? {
        return Ok(rows.chunks(n).map(|r| r.iter().sum::<f64>() / n as f64).collect());
    }
    // Tensor-operation path (GPU): log-sum-exp minus the target logit.
    let flat: Vec<u32> = targets.iter().flatten().copied().collect();
    let tgt = Tensor::from_vec(flat, (b, n, 1), logits.device())?;
    let lse = logits.log_sum_exp(D::Minus1)?;
    let picked = logits.gather(&tgt, 2)?.squeeze(2)?;
    let nll = (lse - picked)?.reshape((b, n))?.to_dtype(DType::F64)?.mean(1)?;
    Ok(nll.to_vec1::<f64>()?)
}

/// Per-row NLL of contiguous f32 CPU logits `(b, n, vocab)`; `None` on other devices.
fn fused_rows(logits: &Tensor, targets: &[Vec<u32>]) -> Result<Option<Vec<f64>>> {
    let (b, n, v) = logits.dims3()?;
    let (storage, layout) = logits.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(cpu) => match cpu {
            candle_core::CpuStorage::F32(d) => d,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Some((start, end)) = layout.contiguous_offsets() else { return Ok(None) };
    let data = &data[start..end];
    debug_assert_eq!(data.len(), b * n * v);
    let targets: Vec<usize> = targets.iter().flat_map(|t| t.iter().map(|&x| x as usize)).collect();
    if targets.len() != b * n {
        return Err(crate::error::ModelError::Input(format!("{} targets for {} positions", targets.len(), b * n)));
    }
    Ok(Some(data.par_chunks(v).zip(targets.par_iter()).map(|(row, &t)| row_nll(row, t)).collect()))
}

/// `logsumexp(row) - row[target]`, NaN if the row holds a NaN or an infinity.
fn row_nll(row: &[f32], target: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { row_nll_avx512(row, target) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { row_nll_avx2(row, target) };
        }
    }
    row_nll_generic(row, target)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_nll_avx512(row: &[f32], target: usize) -> f64 {
    row_nll_generic(row, target)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_nll_avx2(row: &[f32], target: usize) -> f64 {
    row_nll_generic(row, target)
}

const LANES: usize = 16;

/// Written as fixed-width lane loops so the compiler vectorises it for the enabled features.
#[inline(always)]
fn row_nll_generic(row: &[f32], target: usize) -> f64 {
    let chunks = row.chunks_exact(LANES);
    let rem = chunks.remainder();
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [0f32; LANES];
    for c in chunks.clone() {
        for k in 0..LANES {
            mx[k] = if c[k] > mx[k] { c[k] } else { mx[k] };
            // 0 for finite values, NaN for NaN and infinities.
            bad[k] += c[k] - c[k];
        }
    }
    let mut m = f32::NEG_INFINITY;
    let mut bad_sum = 0f32;
    for k in 0..LANES {
        m = if mx[k] > m { mx[k] } else { m };
        bad_sum += bad[k];
    }
    for &x in rem {
        m = if x > m { x } else { m };
        bad_sum += x - x;
    }
    if !bad_sum.is_finite() || !m.is_finite() {
        return f64::NAN;
    }
    let mut acc = [0f32; LANES];
    let mut total = 0f64;
    for (i, c) in chunks.enumerate() {
        for k in 0..LANES {
            acc[k] += exp_nonpositive(c[k] - m);
        }
        // Flush the f32 lanes into f64 every 16 chunks, so no lane sums more than 16 terms.
        if i % 16 == 15 {
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
            acc = [0f32; LANES];
        }
    }
    total += acc.iter().map(|&a| a as f64).sum::<f64>();
    for &x in rem {
        total += exp_nonpositive(x - m) as f64;
    }
    m as f64 + total.ln() - row[target] as f64
}

/// `exp(x)` for `x <= 0` (finite): Cephes `expf` (range reduction by `ln 2` in two parts, degree-6
/// polynomial), branch-free so a loop over it vectorises. Arguments below -87.3 give about
/// `exp(-87.3)` = 1.2e-38 instead of a smaller number, which cannot change a sum that contains 1.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer.
    let x = if x < -87.3 { -87.3 } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (a, b) = (exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn row_nll_matches_a_direct_computation_and_flags_non_finite_rows() {
        // A row longer than 16 * 16 lanes with a remainder, values spread over a wide range.
        let row: Vec<f32> = (0..1_000).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0).collect();
        for target in [0, 17, 999] {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            let want = lse - row[target] as f64;
            let got = row_nll(&row, target);
            assert!((got - want).abs() < 1e-6 * want.abs(), "{got} vs {want}");
            assert_eq!(row_nll_generic(&row, target).to_bits(), row_nll_generic(&row, target).to_bits());
            assert!((row_nll_generic(&row, target) - want).abs() < 1e-6 * want.abs());
        }
        let mut nan = row.clone();
        nan[500] = f32::NAN;
        assert!(row_nll(&nan, 0).is_nan());
        let mut inf = row;
        inf[3] = f32::INFINITY;
        assert!(row_nll(&inf, 0).is_nan());
    }

    #[test]
    fn strided_positions_end_at_the_last_prediction() {
        let p = Positions::strided(10, 3, &Device::Cpu).unwrap();
        assert_eq!(p.list, vec![2, 5, 8]);
        let all = Positions::strided(10, 1, &Device::Cpu).unwrap();
        assert_eq!(all.list, (0..9).collect::<Vec<u32>>());
        assert!(all.index.is_none());
    }
}
