//! Mean token NLL, or mean KL divergence to the dense model (EvoPress's objective), per window from
//! the final residual stream, with the loss fused into the head.
//!
//! The head of a small model is a large share of a candidate's cost (SmolLM2: a 576 x 49,152 LM
//! head against 576-wide blocks). Computing `log_softmax` / `log_sum_exp` with tensor operations
//! walks the `(positions, vocab)` logits several times and allocates as many temporaries. Here,
//! on the CPU in f32, each row of logits is reduced in one pass per statistic: its maximum, then
//! `sum(exp(x - max))` accumulated in f64, and `sum p x` for the KL; the NLL is then `max +
//! ln(sum) - x[target]`. Exact up to float reassociation and the exponential's rounding (a
//! Cephes-style polynomial `exp`, relative error about 2e-7, vectorised with the CPU's AVX-512 or
//! AVX2 when present, checked at run time).
//!
//! **Sliced head.** When the head is a plain linear map ([`BlockLm::lm_head_linear`]), the logits
//! are produced one vocabulary slice at a time ([`VOCAB_SLICE`] entries) and each slice is reduced
//! while it is still in cache, merging the per-row statistics across slices as online softmax
//! does (`sum_exp` rescaled when the maximum grows). The `(positions, vocab)` logits never reach
//! memory, and the slice GEMMs run faster than the whole one. On other devices, or for other
//! dtypes, tensor operations compute the same quantities.
//!
//! KL to the dense model: with the dense distribution `p` (softmax of the dense logits) and a
//! candidate's logits `z`, `KL(p || softmax(z)) = sum p ln p - sum p z + sum(p) lse(z)`. `sum p
//! ln p = sum p z_dense - sum(p) lse(z_dense)` is computed once per row by the same reduction
//! applied to the dense states, so the dense model's own KL is 0 up to f64 rounding.
//!
//! Positions: window `w`'s loss is the mean over predicted positions `p` (predicting token
//! `p + 1` from position `p`) in [`Positions`]: every position (the exact loss), or every
//! `stride`-th one (an approximation used for screening; the blocks still run on every position,
//! only the head and the loss shrink).
use crate::error::Result;
use crate::arch::BlockLm;
use crate::kernels::math::exp_f32;
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
    let n = positions.list.len();
    let flat: Vec<u32> = targets.iter().flatten().copied().collect();
    if flat.len() != b * n {
        return Err(crate::error::ModelError::Input(format!("{} targets for {} positions", flat.len(), b * n)));
    }
    let normed = lm.final_norm(&at_positions(h, positions)?)?;
    if let Some(stats) = row_stats(lm, &normed, None, Some(&flat))? {
        let rows: Vec<f64> = stats.iter().map(RowStats::nll).collect();
        return Ok(rows.chunks(n).map(|r| r.iter().sum::<f64>() / n as f64).collect());
    }
    let logits = lm.lm_head(&normed)?;
    let nll = if logits.device().is_cuda() {
        // CUDA: one pass over the logits in their own dtype (kernels::token_nll).
        let v = logits.dim(D::Minus1)?;
        let tgt = Tensor::from_vec(flat, b * n, logits.device())?;
        crate::kernels::token_nll(&logits.reshape((b * n, v))?, &tgt)?
    } else {
        // Tensor operations (Metal): log-sum-exp minus the target logit.
        let logits = logits.to_dtype(DType::F32)?;
        let tgt = Tensor::from_vec(flat, (b, n, 1), logits.device())?;
        (logits.log_sum_exp(D::Minus1)? - logits.gather(&tgt, 2)?.squeeze(2)?)?
    };
    Ok(nll.reshape((b, n))?.to_dtype(DType::F64)?.mean(1)?.to_vec1::<f64>()?)
}

/// `h` `(b, s, hidden)` at the predicted positions, contiguous.
fn at_positions(h: &Tensor, positions: &Positions) -> Result<Tensor> {
    let s = h.dim(1)?;
    Ok(match &positions.index {
        None => h.narrow(1, 0, s - 1)?,
        Some(idx) => h.index_select(idx, 1)?,
    }
    .contiguous()?)
}

/// The dense model's next-token distributions over one batch, for the KL objective, reduced to
/// what a candidate's KL needs.
pub(crate) struct DenseDistribution {
    terms: DenseTerms,
    /// Per row (window-major): `sum p`, and `sum p ln p` by the reduction the candidates go through.
    p_sum: Vec<f64>,
    neg_entropy: Vec<f64>,
}

/// How a candidate's `sum p z` is obtained.
enum DenseTerms {
    /// A linear head `z = w x + bias`: `sum_v p_v z_v = (sum_v p_v w_v) . x + p . bias`, so each row
    /// keeps `p^T w` `(rows, hidden)` and `p . bias` instead of `p` `(rows, vocab)` (SmolLM2: 576
    /// values instead of 49,152).
    Projected { p_w: Tensor, p_bias: Vec<f64> },
    /// Any other head: `p` itself, `(b, positions, vocab)`, f32.
    Full { p: Tensor },
}

impl DenseDistribution {
    /// From the dense model's last-block output `h` `(b, s, hidden)`.
    pub fn new(lm: &dyn BlockLm, h: &Tensor, positions: &Positions) -> Result<Self> {
        let hp = at_positions(h, positions)?;
        let normed = lm.final_norm(&hp)?;
        let logits = lm.lm_head(&normed)?.to_dtype(DType::F32)?.contiguous()?;
        let p = candle_nn::ops::softmax_last_dim(&logits)?.contiguous()?;
        let p_sum: Vec<f64> = p.sum(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let terms = match lm.lm_head_linear() {
            Some((w, bias)) => {
                let (p_w, p_bias) = project(&p, w, bias)?;
                DenseTerms::Projected { p_w, p_bias }
            }
            None => DenseTerms::Full { p },
        };
        let mut dense = Self { terms, p_sum, neg_entropy: Vec::new() };
        // ln p = z - lse, so sum p ln p = sum p z - sum(p) lse, by the candidates' own reduction
        // (the dense model's KL to itself is then 0 up to f64 rounding).
        let (lse, dot) = dense.kl_terms(lm, &normed)?;
        dense.neg_entropy = dot.iter().zip(&lse).zip(&dense.p_sum).map(|((d, l), ps)| d - ps * l).collect();
        Ok(dense)
    }

    /// Per row of the normalised states `normed` `(b, n, hidden)`: `lse(z)` and `sum p z`.
    fn kl_terms(&self, lm: &dyn BlockLm, normed: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
        match &self.terms {
            DenseTerms::Projected { p_w, p_bias } => {
                let lse = match row_stats(lm, normed, None, None)? {
                    Some(stats) => stats.iter().map(RowStats::lse).collect(),
                    None => lm.lm_head(normed)?.to_dtype(DType::F32)?.log_sum_exp(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
                };
                let dot = row_dots(normed, p_w)?.into_iter().zip(p_bias).map(|(d, b)| d + b).collect();
                Ok((lse, dot))
            }
            DenseTerms::Full { p } => {
                if let Some(stats) = full_p_row_stats(lm, normed, p)? {
                    return Ok(stats.iter().map(|s| (s.lse(), s.dot)).unzip());
                }
                kl_terms_of_logits(&lm.lm_head(normed)?.to_dtype(DType::F32)?, p)
            }
        }
    }
}

/// `(p^T w, p . bias)` per row of `p` `(b, n, vocab)`, in f64 on the CPU (accumulated one
/// vocabulary slice at a time), in f32 elsewhere.
fn project(p: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Vec<f64>)> {
    let (b, n, v) = p.dims3()?;
    let p2 = p.reshape((b * n, v))?;
    let dtype = if p.device().is_cpu() { DType::F64 } else { DType::F32 };
    let mut p_w = Tensor::zeros((b * n, w.dim(1)?), dtype, p.device())?;
    let mut p_bias = Tensor::zeros(b * n, dtype, p.device())?;
    for off in (0..v).step_by(VOCAB_SLICE) {
        let len = VOCAB_SLICE.min(v - off);
        let ps = p2.narrow(1, off, len)?.to_dtype(dtype)?.contiguous()?;
        p_w = (p_w + ps.matmul(&w.narrow(0, off, len)?.to_dtype(dtype)?)?)?;
        if let Some(bias) = bias {
            p_bias = (p_bias + ps.matmul(&bias.narrow(0, off, len)?.to_dtype(dtype)?.unsqueeze(1)?)?.squeeze(1)?)?;
        }
    }
    Ok((p_w.reshape((b, n, ()))?, p_bias.to_dtype(DType::F64)?.to_vec1()?))
}

/// `sum_k x_k y_k` per row of `x` `(b, n, hidden)` and `y` of the same shape, in `y`'s dtype (f64
/// on the CPU).
fn row_dots(x: &Tensor, y: &Tensor) -> Result<Vec<f64>> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && y.dtype() == DType::F64 {
        let (x, y) = (x.contiguous()?, y.contiguous()?);
        let k = x.dim(D::Minus1)?;
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(xd)), candle_core::Storage::Cpu(candle_core::CpuStorage::F64(yd))) = (&*xs, &*ys) {
            if let (Some((x0, x1)), Some((y0, y1))) = (xl.contiguous_offsets(), yl.contiguous_offsets()) {
                let rows = xd[x0..x1].par_chunks(k).zip(yd[y0..y1].par_chunks(k));
                return Ok(rows.map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| a as f64 * b).sum()).collect());
            }
        }
    }
    Ok((x.to_dtype(y.dtype())? * y)?.sum(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// Mean KL divergence `KL(dense || candidate)` of each window's next-token distributions at the
/// predicted positions, from the candidate's last-block output `h` `(b, s, hidden)`.
pub(crate) fn window_mean_kl(lm: &dyn BlockLm, h: &Tensor, positions: &Positions, dense: &DenseDistribution) -> Result<Vec<f64>> {
    let (b, n) = (h.dim(0)?, positions.list.len());
    let rows = dense.p_sum.len();
    if rows != b * n {
        return Err(crate::error::ModelError::Input(format!("candidate states for {} positions against dense distributions for {rows}", b * n)));
    }
    let normed = lm.final_norm(&at_positions(h, positions)?)?;
    let (lse, dot) = dense.kl_terms(lm, &normed)?;
    let rows: Vec<f64> = (0..rows).map(|r| dense.neg_entropy[r] - dot[r] + dense.p_sum[r] * lse[r]).collect();
    Ok(rows.chunks(n).map(|r| r.iter().sum::<f64>() / n as f64).collect())
}

/// [`row_stats`] with the dense distribution `p` `(b, n, vocab)` (the `sum p z` terms).
fn full_p_row_stats(lm: &dyn BlockLm, normed: &Tensor, p: &Tensor) -> Result<Option<Vec<RowStats>>> {
    let (storage, layout) = p.storage_and_layout();
    match f32_values(&storage, layout) {
        Some(p) => row_stats(lm, normed, Some(p), None),
        None => Ok(None),
    }
}

/// Per row of `logits` `(b, n, vocab)`: `lse(z)` and `sum p z`, with tensor operations.
fn kl_terms_of_logits(logits: &Tensor, p: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let lse = logits.log_sum_exp(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let dot = (p * logits)?.sum(D::Minus1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    Ok((lse, dot))
}

/// Vocabulary entries per slice of the sliced head: a slice of logits for a 4 x 128-token batch
/// (8 MB) stays in the last-level cache, and the slice GEMMs run at full speed (SmolLM2's head,
/// 508 rows: 65 ms in slices of 2,048-8,192 against 94 ms as one GEMM).
const VOCAB_SLICE: usize = 4096;

/// Per-row statistics of the head's logits on the normalised states `normed` `(b, n, hidden)`,
/// with the dense distribution `p` (`(b, n, vocab)` values) and/or the `targets` (row-major), on
/// the CPU in f32; `None` elsewhere (the callers then use tensor operations).
///
/// With a plain linear head ([`BlockLm::lm_head_linear`]) the logits are produced one vocabulary
/// slice at a time and each slice is reduced while it is in cache, so the `(rows, vocab)` logits
/// never reach memory; otherwise the head's full logits are reduced row by row.
fn row_stats(lm: &dyn BlockLm, normed: &Tensor, p: Option<&[f32]>, targets: Option<&[u32]>) -> Result<Option<Vec<RowStats>>> {
    if !normed.device().is_cpu() {
        return Ok(None);
    }
    if let Some((w, bias)) = lm.lm_head_linear() {
        if normed.dtype() == DType::F32 && w.dtype() == DType::F32 && bias.is_none_or(|b| b.dtype() == DType::F32) {
            let (b, n, k) = normed.dims3()?;
            return Ok(Some(sliced_head_stats(&normed.reshape((b * n, k))?, w, bias, p, targets)?));
        }
    }
    let logits = lm.lm_head(normed)?.contiguous()?;
    let v = logits.dim(D::Minus1)?;
    let (storage, layout) = logits.storage_and_layout();
    Ok(f32_values(&storage, layout).map(|z| full_row_stats(z, v, p, targets)))
}

/// The values of a contiguous f32 CPU tensor's storage; `None` otherwise.
fn f32_values<'a>(storage: &'a candle_core::Storage, layout: &candle_core::Layout) -> Option<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(d)) => layout.contiguous_offsets().map(|(a, b)| &d[a..b]),
        _ => None,
    }
}

/// Row statistics of full logits `z` (rows of `v`).
fn full_row_stats(z: &[f32], v: usize, p: Option<&[f32]>, targets: Option<&[u32]>) -> Vec<RowStats> {
    z.par_chunks(v)
        .enumerate()
        .map(|(r, row)| {
            let mut s = RowStats::EMPTY;
            s.absorb(row, p.map(|p| &p[r * v..(r + 1) * v]), targets.map(|t| t[r] as usize));
            s
        })
        .collect()
}

/// Row statistics of `normed w^T + bias` for `normed` `(rows, k)` and `w` `(vocab, k)`, computed
/// one slice of [`VOCAB_SLICE`] vocabulary entries at a time.
fn sliced_head_stats(normed: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Option<&[f32]>, targets: Option<&[u32]>) -> Result<Vec<RowStats>> {
    let rows = normed.dim(0)?;
    let v = w.dim(0)?;
    let normed = normed.contiguous()?;
    let mut stats = vec![RowStats::EMPTY; rows];
    for off in (0..v).step_by(VOCAB_SLICE) {
        let len = VOCAB_SLICE.min(v - off);
        let mut z = crate::kernels::cpu_matmul::matmul(&normed, &w.narrow(0, off, len)?.t()?)?;
        if let Some(b) = bias {
            z = z.broadcast_add(&b.narrow(0, off, len)?)?;
        }
        let z = z.contiguous()?;
        let (storage, layout) = z.storage_and_layout();
        let z = f32_values(&storage, layout).ok_or_else(|| crate::error::ModelError::Input("the sliced head needs f32 CPU tensors".into()))?;
        stats.par_iter_mut().zip(z.par_chunks(len)).enumerate().for_each(|(r, (s, row))| {
            let t = targets.map(|t| t[r] as usize).filter(|&t| (off..off + len).contains(&t)).map(|t| t - off);
            s.absorb(row, p.map(|p| &p[r * v + off..r * v + off + len]), t);
        });
    }
    Ok(stats)
}

/// Running statistics of one row of logits `z` over the slices absorbed so far.
#[derive(Clone, Copy, Debug)]
struct RowStats {
    /// The maximum (NaN once a slice held a NaN or an infinity).
    max: f32,
    /// `sum exp(z - max)`.
    sum_exp: f64,
    /// `sum p z`.
    dot: f64,
    /// The target's logit.
    target: f32,
}

impl RowStats {
    const EMPTY: RowStats = RowStats { max: f32::NEG_INFINITY, sum_exp: 0.0, dot: 0.0, target: f32::NAN };

    /// Adds a slice of the row (with the same slice of `p`, and the target's index within the
    /// slice when it falls there).
    fn absorb(&mut self, z: &[f32], p: Option<&[f32]>, target: Option<usize>) {
        if let Some(t) = target {
            self.target = z[t];
        }
        if self.max.is_nan() {
            return;
        }
        let Some((m, s, d)) = slice_stats(z, p) else {
            self.max = f32::NAN;
            return;
        };
        let top = self.max.max(m);
        self.sum_exp = self.sum_exp * (self.max as f64 - top as f64).exp() + s * (m as f64 - top as f64).exp();
        self.max = top;
        self.dot += d;
    }

    /// `ln sum exp z`.
    fn lse(&self) -> f64 {
        self.max as f64 + self.sum_exp.ln()
    }

    /// `lse(z) - z[target]`.
    fn nll(&self) -> f64 {
        self.lse() - self.target as f64
    }
}

/// `(max z, sum exp(z - max z), sum p z)` of a slice, `None` if it holds a NaN or an infinity.
fn slice_stats(z: &[f32], p: Option<&[f32]>) -> Option<(f32, f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { slice_stats_avx512(z, p) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { slice_stats_avx2(z, p) };
        }
    }
    slice_stats_generic(z, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn slice_stats_avx512(z: &[f32], p: Option<&[f32]>) -> Option<(f32, f64, f64)> {
    slice_stats_generic(z, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn slice_stats_avx2(z: &[f32], p: Option<&[f32]>) -> Option<(f32, f64, f64)> {
    slice_stats_generic(z, p)
}

const LANES: usize = 16;

/// Written as fixed-width lane loops so the compiler vectorises it for the enabled features.
#[inline(always)]
fn slice_stats_generic(z: &[f32], p: Option<&[f32]>) -> Option<(f32, f64, f64)> {
    let m = finite_max(z)?;
    let sum_exp = lane_sum(z, |x| exp_f32(x - m));
    let dot = match p {
        Some(p) => lane_dot(z, p),
        None => 0.0,
    };
    Some((m, sum_exp, dot))
}

/// `sum f(x)` in f32 lanes flushed into f64 every 16 chunks (no lane sums more than 16 terms).
#[inline(always)]
fn lane_sum(z: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let chunks = z.chunks_exact(LANES);
    let rem = chunks.remainder();
    let mut acc = [0f32; LANES];
    let mut total = 0f64;
    for (i, c) in chunks.enumerate() {
        for k in 0..LANES {
            acc[k] += f(c[k]);
        }
        if i % 16 == 15 {
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
            acc = [0f32; LANES];
        }
    }
    total += acc.iter().map(|&a| a as f64).sum::<f64>();
    total + rem.iter().map(|&x| f(x) as f64).sum::<f64>()
}

/// `sum z p`, accumulated as [`lane_sum`].
#[inline(always)]
fn lane_dot(z: &[f32], p: &[f32]) -> f64 {
    let (zc, pc) = (z.chunks_exact(LANES), p.chunks_exact(LANES));
    let (zrem, prem) = (zc.remainder(), pc.remainder());
    let mut acc = [0f32; LANES];
    let mut total = 0f64;
    for (i, (a, b)) in zc.zip(pc).enumerate() {
        for k in 0..LANES {
            acc[k] += a[k] * b[k];
        }
        if i % 16 == 15 {
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
            acc = [0f32; LANES];
        }
    }
    total += acc.iter().map(|&a| a as f64).sum::<f64>();
    total + zrem.iter().zip(prem).map(|(&a, &b)| (a * b) as f64).sum::<f64>()
}

/// The slice's maximum, `None` if it holds a NaN or an infinity.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `ln sum exp z` in f64.
    fn lse64(z: &[f32]) -> f64 {
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    }

    /// Row `r` of a deterministic spread of logits over a wide range.
    fn logits(rows: usize, v: usize, seed: usize) -> Vec<f32> {
        (0..rows * v).map(|i| (((i * 7919 + seed * 104_729) % 2_003) as f32 / 97.0 - 10.0) * if i % 5 == 0 { 1.7 } else { 1.0 }).collect()
    }

    /// A deterministic tensor of `shape` with values spread over about `[-scale, scale]`, on `dev`.
    fn spread(shape: &[usize], scale: f32, seed: usize, dev: &Device) -> Tensor {
        let count: usize = shape.iter().product();
        let v: Vec<f32> = (0..count).map(|i| (((i * 7919 + seed * 104_729) % 2_003) as f32 / 1_001.0 - 1.0) * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_device(dev).unwrap()
    }

    #[test]
    fn row_stats_match_a_direct_computation_whole_or_in_slices() {
        // Longer than 16 * 16 lanes with a remainder; slices of odd sizes, the maximum in a late one.
        let mut row = logits(1, 1_000, 3);
        row[870] = 25.0;
        let p: Vec<f32> = (0..1_000).map(|i| ((i % 13) as f32 + 1.0) / 7_000.0).collect();
        let want_dot: f64 = row.iter().zip(&p).map(|(&z, &q)| z as f64 * q as f64).sum();
        for target in [0, 17, 999] {
            let want = lse64(&row) - row[target] as f64;
            let mut whole = RowStats::EMPTY;
            whole.absorb(&row, Some(&p), Some(target));
            let mut sliced = RowStats::EMPTY;
            for (lo, hi) in [(0, 97), (97, 430), (430, 431), (431, 1_000)] {
                let t = (lo..hi).contains(&target).then(|| target - lo);
                sliced.absorb(&row[lo..hi], Some(&p[lo..hi]), t);
            }
            for s in [whole, sliced] {
                assert!((s.nll() - want).abs() < 1e-6 * want.abs(), "{} vs {want}", s.nll());
                assert!((s.dot - want_dot).abs() < 1e-6 * want_dot.abs(), "{} vs {want_dot}", s.dot);
            }
            assert_eq!(slice_stats_generic(&row, None), slice_stats_generic(&row, None));
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let mut row = row.clone();
            row[500] = bad;
            let mut s = RowStats::EMPTY;
            s.absorb(&row[..430], None, Some(0));
            s.absorb(&row[430..], None, None);
            assert!(s.nll().is_nan() && s.lse().is_nan());
        }
    }

    #[test]
    fn kl_rows_match_a_direct_computation_on_both_paths() {
        let (b, n, v) = (2, 3, 1_003);
        let (zd, zc) = (logits(b * n, v, 1), logits(b * n, v, 2));
        let dense = Tensor::from_vec(zd.clone(), (b, n, v), &Device::Cpu).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&dense).unwrap();
        let pv: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        let p_sum: Vec<f64> = p.sum(D::Minus1).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let kl = |(ld, dd): (Vec<f64>, Vec<f64>), (lc, dc): (Vec<f64>, Vec<f64>)| -> Vec<f64> {
            (0..b * n).map(|r| (dd[r] - p_sum[r] * ld[r]) - dc[r] + p_sum[r] * lc[r]).collect()
        };
        let fused_terms = |z: &[f32]| -> (Vec<f64>, Vec<f64>) { full_row_stats(z, v, Some(&pv), None).iter().map(|s| (s.lse(), s.dot)).unzip() };
        let tensor_terms = |z: &[f32]| kl_terms_of_logits(&Tensor::from_vec(z.to_vec(), (b, n, v), &Device::Cpu).unwrap(), &p).unwrap();
        let fast = kl(fused_terms(&zd), fused_terms(&zc));
        let slow = kl(tensor_terms(&zd), tensor_terms(&zc));
        for r in 0..b * n {
            let (zd, zc) = (&zd[r * v..(r + 1) * v], &zc[r * v..(r + 1) * v]);
            let (ld, lc) = (lse64(zd), lse64(zc));
            let want: f64 = (0..v).map(|i| (zd[i] as f64 - ld).exp() * ((zd[i] as f64 - ld) - (zc[i] as f64 - lc))).sum();
            assert!(want > 0.1, "the test needs distinct distributions ({want})");
            assert!((fast[r] - want).abs() < 1e-5 * want, "row {r}: {} vs {want}", fast[r]);
            assert!((slow[r] - want).abs() < 1e-5 * want, "row {r}: {} vs {want}", slow[r]);
        }
        // The dense logits against themselves: 0 up to f64 rounding of the same terms.
        let own = kl(fused_terms(&zd), fused_terms(&zd));
        assert!(own.iter().all(|&k| k.abs() < 1e-12), "{own:?}");
        // Non-finite logits give NaN.
        let mut bad = zc;
        bad[5] = f32::INFINITY;
        assert!(kl(fused_terms(&zd), fused_terms(&bad))[0].is_nan());
    }

    #[test]
    fn the_sliced_head_equals_the_full_logits() {
        // Three slices, the last partial; targets in each; with a bias.
        let (rows, k, v) = (5, 24, 2 * VOCAB_SLICE + 123);
        let cpu = Device::Cpu;
        let (normed, w, bias) = (spread(&[rows, k], 1.5, 1, &cpu), spread(&[v, k], 0.8, 2, &cpu), spread(&[v], 0.2, 3, &cpu));
        let p: Vec<f32> = candle_nn::ops::softmax_last_dim(&spread(&[rows, v], 3.0, 4, &cpu)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let targets: Vec<u32> = vec![0, 5_000, v as u32 - 1, VOCAB_SLICE as u32, 77];
        let z: Vec<f32> = normed.matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let full = full_row_stats(&z, v, Some(&p), Some(&targets));
        let sliced = sliced_head_stats(&normed, &w, Some(&bias), Some(&p), Some(&targets)).unwrap();
        for r in 0..rows {
            let (a, b) = (full[r], sliced[r]);
            assert!((a.lse() - b.lse()).abs() < 1e-6 * a.lse().abs(), "row {r}: lse {} vs {}", a.lse(), b.lse());
            assert!((a.dot - b.dot).abs() < 1e-5 * a.dot.abs().max(1.0), "row {r}: dot {} vs {}", a.dot, b.dot);
            assert!((a.target - b.target).abs() <= 1e-5 * a.target.abs().max(1.0), "row {r}: target {} vs {}", a.target, b.target);
            assert!((a.nll() - (lse64(&z[r * v..(r + 1) * v]) - z[r * v + targets[r] as usize] as f64)).abs() < 1e-5);
        }
    }

    #[test]
    fn projected_dense_terms_equal_sum_p_z() {
        // sum_v p_v z_v through p^T w and p . bias, against a direct f64 sum over the vocabulary,
        // over two slices; on `EVOP_TEST_DEVICE` (f32 there, f64 on the CPU).
        let dev = crate::device::test_device().unwrap();
        let tol = if dev.is_cpu() { 1e-9 } else { 1e-4 };
        let (b, n, k, v) = (2, 3, 24, VOCAB_SLICE + 321);
        let (x, w, bias) = (spread(&[b, n, k], 1.5, 5, &dev), spread(&[v, k], 0.8, 6, &dev), spread(&[v], 0.2, 7, &dev));
        let p = candle_nn::ops::softmax_last_dim(&spread(&[b, n, v], 3.0, 8, &dev)).unwrap();
        let (p_w, p_bias) = project(&p, &w, Some(&bias)).unwrap();
        let got: Vec<f64> = row_dots(&x, &p_w).unwrap().iter().zip(&p_bias).map(|(d, b)| d + b).collect();
        let (xv, wv, bv): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (x.flatten_all().unwrap().to_vec1().unwrap(), w.flatten_all().unwrap().to_vec1().unwrap(), bias.to_vec1().unwrap());
        let pv: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
        for r in 0..b * n {
            let want: f64 = (0..v)
                .map(|j| {
                    let z: f64 = (0..k).map(|i| xv[r * k + i] as f64 * wv[j * k + i] as f64).sum::<f64>() + bv[j] as f64;
                    pv[r * v + j] as f64 * z
                })
                .sum();
            assert!((got[r] - want).abs() < tol * want.abs().max(1.0), "row {r}: {} vs {want}", got[r]);
        }
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
