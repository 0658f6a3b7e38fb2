//! Mean token NLL, or mean KL divergence to the dense model (EvoPress's objective), per window from
//! the final residual stream, with the loss fused into one pass over the logits.
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
//! KL to the dense model: with the dense distribution `p` (softmax of the dense logits) and a
//! candidate's logits `z`, `KL(p || softmax(z)) = sum p ln p - sum p (z - max z) + sum(p) ln S`
//! where `S = sum exp(z - max z)`: one pass over `z` for `max`, then one for `S` and the dot
//! product with `p`, and nothing of size vocab is allocated beyond the logits. `sum p ln p` is
//! computed once per row by the same reduction applied to the dense logits (`ln p = z_dense -
//! max - ln S_dense`), so the dense model's own KL is 0 up to f64 rounding.
//!
//! Positions: window `w`'s loss is the mean over predicted positions `p` (predicting token
//! `p + 1` from position `p`) in [`Positions`]: every position (the exact loss), or every
//! `stride`-th one (an approximation used for screening; the blocks still run on every position,
//! only the head and the loss shrink).
use crate::error::Result;
use crate::model::BlockLm;
use crate::numerics::exp_f32;
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
    let b = h.dim(0)?;
    let logits = head_logits(lm, h, positions)?;
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

/// The head's f32 logits `(b, positions, vocab)` at the predicted positions of `h` `(b, s, hidden)`.
fn head_logits(lm: &dyn BlockLm, h: &Tensor, positions: &Positions) -> Result<Tensor> {
    let s = h.dim(1)?;
    let hp = match &positions.index {
        None => h.narrow(1, 0, s - 1)?,
        Some(idx) => h.index_select(idx, 1)?,
    }
    .contiguous()?;
    Ok(lm.head(&hp)?.to_dtype(DType::F32)?.contiguous()?)
}

/// The dense model's next-token distributions over one batch, for the KL objective.
pub(crate) struct DenseDistribution {
    /// `softmax(dense logits)`, `(b, positions, vocab)`, f32, on the model's device.
    p: Tensor,
    /// Per row (window-major): `sum p`, and `sum p ln p` by the reduction the candidates go through.
    p_sum: Vec<f64>,
    neg_entropy: Vec<f64>,
}

impl DenseDistribution {
    /// From the dense model's last-block output `h` `(b, s, hidden)`.
    pub fn new(lm: &dyn BlockLm, h: &Tensor, positions: &Positions) -> Result<Self> {
        let logits = head_logits(lm, h, positions)?;
        let p = candle_nn::ops::softmax_last_dim(&logits)?.contiguous()?;
        let p_sum: Vec<f64> = p.sum(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let (ln_s, dot) = kl_row_stats(&logits, &p)?;
        // ln p = z - max - ln S, so sum p ln p = sum p (z - max) - sum(p) ln S.
        let neg_entropy = dot.iter().zip(&ln_s).zip(&p_sum).map(|((d, l), ps)| d - ps * l).collect();
        Ok(Self { p, p_sum, neg_entropy })
    }
}

/// Mean KL divergence `KL(dense || candidate)` of each window's next-token distributions at the
/// predicted positions, from the candidate's last-block output `h` `(b, s, hidden)`.
pub(crate) fn window_mean_kl(lm: &dyn BlockLm, h: &Tensor, positions: &Positions, dense: &DenseDistribution) -> Result<Vec<f64>> {
    let logits = head_logits(lm, h, positions)?;
    if logits.dims() != dense.p.dims() {
        return Err(crate::error::ModelError::Input(format!(
            "candidate logits {:?} against dense distributions {:?}",
            logits.dims(),
            dense.p.dims()
        )));
    }
    let n = logits.dim(1)?;
    let (ln_s, dot) = kl_row_stats(&logits, &dense.p)?;
    let rows: Vec<f64> = (0..ln_s.len()).map(|r| dense.neg_entropy[r] - dot[r] + dense.p_sum[r] * ln_s[r]).collect();
    Ok(rows.chunks(n).map(|r| r.iter().sum::<f64>() / n as f64).collect())
}

/// Per row of `logits` `(b, n, vocab)`: `ln sum exp(z - max z)` and `sum p (z - max z)`.
fn kl_row_stats(logits: &Tensor, p: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    {
        let (zs, zl) = logits.storage_and_layout();
        let (ps, pl) = p.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(z)), candle_core::Storage::Cpu(candle_core::CpuStorage::F32(pd))) =
            (&*zs, &*ps)
        {
            if let (Some((z0, z1)), Some((p0, p1))) = (zl.contiguous_offsets(), pl.contiguous_offsets()) {
                let v = logits.dim(D::Minus1)?;
                let stats: Vec<(f64, f64)> =
                    z[z0..z1].par_chunks(v).zip(pd[p0..p1].par_chunks(v)).map(|(zr, pr)| kl_row(zr, pr)).collect();
                return Ok(stats.into_iter().unzip());
            }
        }
    }
    // Tensor-operation path (GPU, or non-contiguous CPU tensors).
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?;
    let ln_s = shifted.exp()?.sum(D::Minus1)?.log()?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let dot = (p * &shifted)?.sum(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    Ok((ln_s, dot))
}

/// `(ln sum exp(z - m), sum p (z - m))` with `m = max z`; NaNs if `z` holds a NaN or an infinity.
fn kl_row(z: &[f32], p: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { kl_row_avx512(z, p) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { kl_row_avx2(z, p) };
        }
    }
    kl_row_generic(z, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kl_row_avx512(z: &[f32], p: &[f32]) -> (f64, f64) {
    kl_row_generic(z, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kl_row_avx2(z: &[f32], p: &[f32]) -> (f64, f64) {
    kl_row_generic(z, p)
}

#[inline(always)]
fn kl_row_generic(z: &[f32], p: &[f32]) -> (f64, f64) {
    let Some(m) = finite_max(z) else { return (f64::NAN, f64::NAN) };
    let (zc, pc) = (z.chunks_exact(LANES), p.chunks_exact(LANES));
    let (zrem, prem) = (zc.remainder(), pc.remainder());
    let (mut se, mut sd) = ([0f32; LANES], [0f32; LANES]);
    let (mut sum_exp, mut dot) = (0f64, 0f64);
    for (i, (a, b)) in zc.zip(pc).enumerate() {
        for k in 0..LANES {
            let x = a[k] - m;
            se[k] += exp_f32(x);
            sd[k] += b[k] * x;
        }
        // Flush the f32 lanes into f64 every 16 chunks, so no lane sums more than 16 terms.
        if i % 16 == 15 {
            sum_exp += se.iter().map(|&a| a as f64).sum::<f64>();
            dot += sd.iter().map(|&a| a as f64).sum::<f64>();
            (se, sd) = ([0f32; LANES], [0f32; LANES]);
        }
    }
    sum_exp += se.iter().map(|&a| a as f64).sum::<f64>();
    dot += sd.iter().map(|&a| a as f64).sum::<f64>();
    for (&a, &b) in zrem.iter().zip(prem) {
        let x = a - m;
        sum_exp += exp_f32(x) as f64;
        dot += (b * x) as f64;
    }
    (sum_exp.ln(), dot)
}

/// The row's maximum, `None` if it holds a NaN or an infinity.
#[inline(always)]
fn finite_max(row: &[f32]) -> Option<f32> {
    let chunks = row.chunks_exact(LANES);
    let rem = chunks.remainder();
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [0f32; LANES];
    for c in chunks {
        for k in 0..LANES {
            mx[k] = if c[k] > mx[k] { c[k] } else { mx[k] };
            // 0 for finite values, NaN for NaN and infinities.
            bad[k] += c[k] * 0.0;
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
        bad_sum += x * 0.0;
    }
    (bad_sum.is_finite() && m.is_finite()).then_some(m)
}

/// Per-row NLL of contiguous f32 CPU logits `(b, n, vocab)`; `None` on other devices.
fn fused_rows(logits: &Tensor, targets: &[Vec<u32>]) -> Result<Option<Vec<f64>>> {
    let (b, n, v) = logits.dims3()?;
    let (storage, layout) = logits.storage_and_layout();
    let data = match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(d)) => d,
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
    let Some(m) = finite_max(row) else { return f64::NAN };
    let chunks = row.chunks_exact(LANES);
    let rem = chunks.remainder();
    let mut acc = [0f32; LANES];
    let mut total = 0f64;
    for (i, c) in chunks.enumerate() {
        for k in 0..LANES {
            acc[k] += exp_f32(c[k] - m);
        }
        // Flush the f32 lanes into f64 every 16 chunks, so no lane sums more than 16 terms.
        if i % 16 == 15 {
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
            acc = [0f32; LANES];
        }
    }
    total += acc.iter().map(|&a| a as f64).sum::<f64>();
    for &x in rem {
        total += exp_f32(x - m) as f64;
    }
    m as f64 + total.ln() - row[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn kl_rows_match_a_direct_computation_on_both_paths() {
        // Rows longer than 16 * 16 lanes with a remainder; dense and candidate logits differ.
        let (b, n, v) = (2, 3, 1_003);
        let gen = |seed: usize| -> Vec<f32> {
            (0..b * n * v).map(|i| (((i * 7919 + seed * 104_729) % 2_003) as f32 / 97.0 - 10.0) * if i % 5 == 0 { 1.7 } else { 1.0 }).collect()
        };
        let (zd, zc) = (gen(1), gen(2));
        let dense = Tensor::from_vec(zd.clone(), (b, n, v), &Device::Cpu).unwrap();
        let cand = Tensor::from_vec(zc.clone(), (b, n, v), &Device::Cpu).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&dense).unwrap();
        let p_sum: Vec<f64> = p.sum(D::Minus1).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let kl_of = |cand: &Tensor| -> Vec<f64> {
            let (ls_d, dot_d) = kl_row_stats(&dense, &p).unwrap();
            let (ls_c, dot_c) = kl_row_stats(cand, &p).unwrap();
            (0..b * n).map(|r| (dot_d[r] - p_sum[r] * ls_d[r]) - dot_c[r] + p_sum[r] * ls_c[r]).collect()
        };
        let fast = kl_of(&cand);
        // The same values in a non-contiguous layout take the tensor-operation path.
        let strided = Tensor::from_vec(zc.clone(), (b, n, v), &Device::Cpu).unwrap().transpose(0, 1).unwrap().contiguous().unwrap().transpose(0, 1).unwrap();
        assert!(strided.layout().contiguous_offsets().is_none());
        let slow = kl_of(&strided);
        for r in 0..b * n {
            let (zd, zc) = (&zd[r * v..(r + 1) * v], &zc[r * v..(r + 1) * v]);
            let lse = |z: &[f32]| {
                let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
            };
            let (ld, lc) = (lse(zd), lse(zc));
            let want: f64 = (0..v).map(|i| (zd[i] as f64 - ld).exp() * ((zd[i] as f64 - ld) - (zc[i] as f64 - lc))).sum();
            assert!(want > 0.1, "the test needs distinct distributions ({want})");
            assert!((fast[r] - want).abs() < 1e-5 * want, "row {r}: {} vs {want}", fast[r]);
            assert!((slow[r] - want).abs() < 1e-5 * want, "row {r}: {} vs {want}", slow[r]);
        }
        // The dense logits against themselves: 0 up to f64 rounding of the same terms.
        assert!(kl_of(&dense).iter().all(|&k| k.abs() < 1e-12), "{:?}", kl_of(&dense));
        // Non-finite logits give NaN.
        let mut bad = zc;
        bad[5] = f32::INFINITY;
        let bad = Tensor::from_vec(bad, (b, n, v), &Device::Cpu).unwrap();
        assert!(kl_of(&bad)[0].is_nan());
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
