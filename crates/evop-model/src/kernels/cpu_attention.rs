//! Fused causal attention for f32 on the CPU.
//!
//! The tensor-op attention ([`crate::kernels::attention_reference`]) materialises the
//! `(b, h, s, t)` scores, copies the grouped-query keys and values `n_rep` times, and walks the
//! scores five more times (scale, dtype, mask, softmax, probabilities times values), mostly in
//! single-threaded elementwise ops. Here each task takes one (batch, head, tile of query rows),
//! reads its key/value head in place (no `repeat_kv`), and walks the keys in blocks: the block's
//! scores `Q K^T * scale` (a small GEMM through the `gemm` crate), an online softmax in f32 (running
//! row maximum and sum, FlashAttention-style rescaling of the accumulator), then `P V` accumulated
//! into the tile's output (a second GEMM). Key blocks no query of the tile may see are never
//! touched: the causal limit, Mistral's sliding window and the KV-cache offset all come down to one
//! visible key range `[lo, hi)` per query row ([`KeyRanges`]). Tasks run in parallel on rayon.
//!
//! The output is written directly in the `(b, s, h * d)` layout the output projection reads.
//! Results equal the tensor-op path up to float reassociation and the exponential's rounding (a
//! Cephes-style polynomial, relative error about 2e-7).
use candle_core::{DType, Device, Tensor};
use super::math::exp_f32;
use rayon::prelude::*;

/// The keys each query row may attend: row `i` sees keys `lo..hi` of `ranges[i] = (lo, hi)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRanges {
    ranges: Vec<(usize, usize)>,
    keys: usize,
}

impl KeyRanges {
    /// Causal attention for `seq_len` queries at absolute positions `offset..offset + seq_len`
    /// over `offset + seq_len` keys; with `Some(w)` each query sees only the `w` most recent keys
    /// (itself included), as [`crate::kernels::causal_mask`] builds it.
    pub fn causal(seq_len: usize, offset: usize, sliding_window: Option<usize>) -> candle_core::Result<Self> {
        if sliding_window == Some(0) {
            candle_core::bail!("a sliding window of 0 keys hides every key");
        }
        let ranges = (0..seq_len)
            .map(|i| {
                let q = offset + i;
                let lo = sliding_window.map_or(0, |w| (q + 1).saturating_sub(w));
                (lo, q + 1)
            })
            .collect();
        Ok(Self { ranges, keys: offset + seq_len })
    }

    /// Every query sees every one of `keys` keys (no mask).
    pub fn full(seq_len: usize, keys: usize) -> Self {
        Self { ranges: vec![(0, keys); seq_len], keys }
    }

    /// The ranges of an additive `(seq_len, keys)` f32 mask that is 0 on one non-empty contiguous
    /// range of keys per row and `-inf` elsewhere (what [`crate::kernels::causal_mask`] builds);
    /// `None` for any other mask (other shape, dtype or values).
    pub fn from_mask(mask: &Tensor) -> candle_core::Result<Option<Self>> {
        let Ok((s, t)) = mask.dims2() else { return Ok(None) };
        if mask.dtype() != DType::F32 || !mask.device().is_cpu() {
            return Ok(None);
        }
        let mask = mask.contiguous()?;
        let (storage, layout) = mask.storage_and_layout();
        let Some(data) = cpu_f32(&storage, layout) else { return Ok(None) };
        let mut ranges = Vec::with_capacity(s);
        for row in data.chunks_exact(t.max(1)).take(s) {
            let Some(lo) = row.iter().position(|&x| x == 0.0) else { return Ok(None) };
            let hi = lo + row[lo..].iter().position(|&x| x != 0.0).unwrap_or(t - lo);
            let hidden = |x: &f32| *x == f32::NEG_INFINITY;
            if !row[..lo].iter().all(hidden) || !row[hi..].iter().all(hidden) {
                return Ok(None);
            }
            ranges.push((lo, hi));
        }
        if ranges.len() != s {
            return Ok(None);
        }
        Ok(Some(Self { ranges, keys: t }))
    }

    /// Number of query rows.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether there are no query rows.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The `(lo, hi)` key range of every query row.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }
}

/// Shapes of one attention call: `q` is `(batch, heads, seq, head_dim)`, `k` and `v` are
/// `(batch, kv_heads, keys, head_dim)`, all contiguous; the output is `(batch, seq, heads * head_dim)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub seq: usize,
    pub keys: usize,
    pub head_dim: usize,
}

/// The storage of a contiguous f32 CPU tensor as a slice.
fn cpu_f32<'a>(storage: &'a candle_core::Storage, layout: &candle_core::Layout) -> Option<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(d)) => {
            let (start, end) = layout.contiguous_offsets()?;
            Some(&d[start..end])
        }
        _ => None,
    }
}

/// The fused attention on tensors, or `None` when it does not apply (not CPU, not f32, or a mask
/// other than one key range per row): the caller then runs the tensor-op path. `q: (b, h, s, d)`,
/// `k`/`v`: `(b, h_kv, t, d)`, `mask`: additive `(s, t)`. Returns `(b, s, h * d)`.
pub fn try_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(on_cpu_f32(q) && on_cpu_f32(k) && on_cpu_f32(v)) {
        return Ok(None);
    }
    let (batch, heads, seq, head_dim) = q.dims4()?;
    let (kb, kv_heads, keys, kd) = k.dims4()?;
    if (kb, kd) != (batch, head_dim) || v.dims4()? != (batch, kv_heads, keys, head_dim) {
        candle_core::bail!(
            "attention shapes do not match: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let ranges = match mask {
        None => KeyRanges::full(seq, keys),
        Some(m) => {
            if m.dims() != [seq, keys] {
                return Ok(None);
            }
            match KeyRanges::from_mask(m)? {
                Some(r) => r,
                None => return Ok(None),
            }
        }
    };
    let shape = AttnShape { batch, heads, kv_heads, seq, keys, head_dim };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Some(qd), Some(kd), Some(vd)) = (cpu_f32(&qs, ql), cpu_f32(&ks, kl), cpu_f32(&vs, vl)) else {
        return Ok(None);
    };
    let mut out = vec![0f32; batch * seq * heads * head_dim];
    attention_f32(qd, kd, vd, &shape, &ranges, scale as f32, &mut out)?;
    Ok(Some(Tensor::from_vec(out, (batch, seq, heads * head_dim), &Device::Cpu)?))
}

/// Query rows per task tile (at most) and keys per block.
const TILE_Q: usize = 64;
const BLOCK_K: usize = 256;
/// Tiles shrink (down to 8 rows) until a call has at least this many tasks.
const MIN_TASKS: usize = 32;

/// The fused attention on contiguous slices (layouts in [`AttnShape`]); `out` has
/// `batch * seq * heads * head_dim` elements and is overwritten.
pub fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttnShape,
    ranges: &KeyRanges,
    scale: f32,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let AttnShape { batch, heads, kv_heads, seq, keys, head_dim: d } = *shape;
    if kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("{heads} query heads cannot be grouped over {kv_heads} key/value heads");
    }
    if q.len() != batch * heads * seq * d
        || k.len() != batch * kv_heads * keys * d
        || v.len() != k.len()
        || out.len() != q.len()
    {
        candle_core::bail!(
            "attention buffers do not match {shape:?}: q {}, k {}, v {}, out {}",
            q.len(),
            k.len(),
            v.len(),
            out.len()
        );
    }
    if ranges.len() != seq || ranges.keys != keys || ranges.ranges.iter().any(|&(lo, hi)| lo >= hi || hi > keys) {
        candle_core::bail!("key ranges do not fit {seq} queries over {keys} keys (every row needs a visible key)");
    }
    if q.is_empty() {
        return Ok(());
    }
    let n_rep = heads / kv_heads;
    // Smaller tiles when there are few (batch, head) pairs, so several cores get work. The tile
    // depends on the shape only, and key blocks are aligned to absolute key positions, so every
    // output is the same whatever the thread count.
    let mut tile = TILE_Q;
    while tile > 8 && batch * heads * seq.div_ceil(tile) < MIN_TASKS {
        tile /= 2;
    }
    // Longest tiles first (under causal masking the last query tiles see the most keys).
    let mut tasks: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(batch * heads * seq.div_ceil(tile));
    for t0 in (0..seq).step_by(tile) {
        let t1 = (t0 + tile).min(seq);
        let rows = &ranges.ranges[t0..t1];
        let span = rows.iter().map(|r| r.1).max().unwrap_or(0) - rows.iter().map(|r| r.0).min().unwrap_or(0);
        for b in 0..batch {
            for h in 0..heads {
                tasks.push((span, b, h, t0));
            }
        }
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.0));
    let out_ptr = SharedOut(out.as_mut_ptr());
    let avx512 = has_avx512();
    tasks.par_iter().for_each_init(
        || Scratch::new(tile, d),
        |scratch, &(_, b, h, t0)| {
            let t1 = (t0 + tile).min(seq);
            let kvh = h / n_rep;
            let tile_in = Tile {
                q: &q[((b * heads + h) * seq + t0) * d..((b * heads + h) * seq + t1) * d],
                k: &k[(b * kv_heads + kvh) * keys * d..(b * kv_heads + kvh + 1) * keys * d],
                v: &v[(b * kv_heads + kvh) * keys * d..(b * kv_heads + kvh + 1) * keys * d],
                ranges: &ranges.ranges[t0..t1],
                d,
                scale,
            };
            run_tile(&tile_in, scratch, avx512);
            // Row r of the tile goes to out[b, t0 + r, h * d..(h + 1) * d].
            for r in 0..t1 - t0 {
                let dst = ((b * seq + t0 + r) * heads + h) * d;
                // SAFETY: tasks are distinct (b, h, t0) triples, so the (row, head) slots they
                // write are disjoint and inside `out` (its length was checked above); `out`
                // outlives the parallel loop.
                unsafe {
                    std::ptr::copy_nonoverlapping(scratch.acc[r * d..].as_ptr(), out_ptr.get().add(dst), d);
                }
            }
        },
    );
    Ok(())
}

/// The output pointer, shared by tasks that write disjoint parts of it (also the tiles of
/// [`super::cpu_matmul`]).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: only used for disjoint writes from the tasks of one parallel loop (see above).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// One task's inputs: `q` holds the tile's rows, `k`/`v` the whole key/value head.
struct Tile<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    ranges: &'a [(usize, usize)],
    d: usize,
    scale: f32,
}

/// Per-thread buffers: block scores / probabilities, the output accumulator, running max and sum.
struct Scratch {
    s: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

impl Scratch {
    fn new(tile: usize, d: usize) -> Self {
        Self { s: vec![0.0; tile * BLOCK_K], acc: vec![0.0; tile * d], m: vec![0.0; tile], l: vec![0.0; tile] }
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn run_tile(t: &Tile, s: &mut Scratch, avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is true only when the CPU supports AVX-512F.
        return unsafe { run_tile_avx512(t, s) };
    }
    let _ = avx512;
    run_tile_generic(t, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_tile_avx512(t: &Tile, s: &mut Scratch) {
    run_tile_generic(t, s)
}

/// Online-softmax attention of one tile; leaves the normalised output rows in `s.acc`.
#[inline(always)]
fn run_tile_generic(t: &Tile, s: &mut Scratch) {
    let d = t.d;
    let rows = t.ranges.len();
    let lo = t.ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = t.ranges.iter().map(|r| r.1).max().unwrap_or(0);
    s.acc[..rows * d].fill(0.0);
    s.m[..rows].fill(f32::NEG_INFINITY);
    s.l[..rows].fill(0.0);
    let mut j0 = lo - lo % BLOCK_K;
    while j0 < hi {
        let j1 = (j0 + BLOCK_K).min(hi);
        let nb = j1 - j0;
        // S[r, j] = scale * q_r . k_(j0 + j), row stride BLOCK_K.
        // SAFETY: lhs is rows x d (row stride d) inside t.q; rhs is K^T for keys j0..j1 (element
        // (c, j) at k[(j0 + j) * d + c]) inside t.k; dst is rows x nb inside s.s (nb <= BLOCK_K).
        unsafe {
            gemm::gemm(
                rows,
                nb,
                d,
                s.s.as_mut_ptr(),
                1,
                BLOCK_K as isize,
                false,
                t.q.as_ptr(),
                1,
                d as isize,
                t.k.as_ptr().add(j0 * d),
                d as isize,
                1,
                0.0,
                t.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for r in 0..rows {
            let (rlo, rhi) = t.ranges[r];
            let row = &mut s.s[r * BLOCK_K..r * BLOCK_K + nb];
            let a = rlo.clamp(j0, j1) - j0;
            let e = rhi.clamp(j0, j1) - j0;
            if a >= e {
                row.fill(0.0);
                continue;
            }
            row[..a].fill(0.0);
            row[e..].fill(0.0);
            let vis = &mut row[a..e];
            let m_old = s.m[r];
            let m_new = max_of(vis).max(m_old);
            let sum = exp_shifted_in_place(vis, m_new);
            if m_old != f32::NEG_INFINITY && m_old != m_new {
                let corr = exp_f32(m_old - m_new);
                s.l[r] = s.l[r] * corr + sum;
                for x in &mut s.acc[r * d..(r + 1) * d] {
                    *x *= corr;
                }
            } else {
                s.l[r] += sum;
            }
            s.m[r] = m_new;
        }
        // acc += P V for keys j0..j1.
        // SAFETY: lhs is rows x nb in s.s (row stride BLOCK_K); rhs is nb x d inside t.v; dst is
        // rows x d in s.acc.
        unsafe {
            gemm::gemm(
                rows,
                d,
                nb,
                s.acc.as_mut_ptr(),
                1,
                d as isize,
                true,
                s.s.as_ptr(),
                1,
                BLOCK_K as isize,
                t.v.as_ptr().add(j0 * d),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        j0 = j1;
    }
    for r in 0..rows {
        let inv = 1.0 / s.l[r];
        for x in &mut s.acc[r * d..(r + 1) * d] {
            *x *= inv;
        }
    }
}

const LANES: usize = 16;

/// Maximum of a non-empty slice, as fixed-width lane loops (vectorised).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    let mut mx = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            mx[i] = if c[i] > mx[i] { c[i] } else { mx[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in mx.iter().chain(rem) {
        m = if v > m { v } else { m };
    }
    m
}

/// `x = exp(x - m)` in place (every `x <= m`), returning the sum.
#[inline(always)]
fn exp_shifted_in_place(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_f32(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - m);
        sum += *v;
    }
    sum + acc.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{attention_reference, causal_mask};
    use proptest::prelude::*;

    /// Deterministic values in [-amp, amp) from a seed (SplitMix64).
    fn values(seed: u64, len: usize, amp: f32) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_add(0x632B_E59B_D9B4_E019);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    struct Case {
        batch: usize,
        heads: usize,
        kv_heads: usize,
        seq: usize,
        offset: usize,
        window: Option<usize>,
        d: usize,
        seed: u64,
    }

    /// Largest normwise difference over the output rows (one head's `d` values at one position),
    /// relative to the row of `softmax(q k^T) |v|`: the magnitude of the terms the row sums.
    ///
    /// The output row `sum_j p_j v_j` is a weighted mean of many values in [-1, 1], so over a
    /// long key range it cancels towards 0, and a bound relative to its own norm fails on a
    /// correct kernel whenever the two sides sum in a different order (a row of 4 values over
    /// 251 keys came out 1.07e-5 off). The forward error of a sum is bounded relative to the
    /// sum of its terms' magnitudes, `sum_j p_j |v_j|` (Higham, *Accuracy and Stability of
    /// Numerical Algorithms*, 2nd ed., section 4.2); the softmax's own rounding scales each
    /// `p_j` and is bounded by the same sum. With at most 270 keys that bound is about
    /// 270 * 2^-24 = 1.6e-5 in the worst case and far smaller in practice; the tests keep 1e-5.
    fn compare(c: &Case) -> f32 {
        let t = c.offset + c.seq;
        let dev = Device::Cpu;
        let q = Tensor::from_vec(values(c.seed, c.batch * c.heads * c.seq * c.d, 2.0), (c.batch, c.heads, c.seq, c.d), &dev).unwrap();
        let k = Tensor::from_vec(values(c.seed + 1, c.batch * c.kv_heads * t * c.d, 2.0), (c.batch, c.kv_heads, t, c.d), &dev).unwrap();
        let v = Tensor::from_vec(values(c.seed + 2, c.batch * c.kv_heads * t * c.d, 1.0), (c.batch, c.kv_heads, t, c.d), &dev).unwrap();
        let mask = crate::kernels::needs_mask(c.seq, c.offset, c.window)
            .then(|| causal_mask(c.seq, c.offset, c.window, DType::F32, &dev).unwrap());
        let scale = 1.0 / (c.d as f64).sqrt();
        let fused = try_attention(&q, &k, &v, mask.as_ref(), scale).unwrap().expect("fused path applies");
        let want = attention_reference(&q, &k, &v, mask.as_ref(), scale).unwrap();
        let magnitude = attention_reference(&q, &k, &v.abs().unwrap(), mask.as_ref(), scale).unwrap();
        assert_eq!(fused.dims(), want.dims());
        let a: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let m: Vec<f32> = magnitude.flatten_all().unwrap().to_vec1().unwrap();
        a.chunks(c.d)
            .zip(b.chunks(c.d))
            .zip(m.chunks(c.d))
            .map(|((x, y), z)| {
                let diff = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>().sqrt();
                let norm = z.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
                (diff / norm) as f32
            })
            .fold(0f32, f32::max)
    }

    #[test]
    fn matches_the_tensor_ops_on_fixed_cases() {
        let cases = [
            // SmolLM2-like grouping (n_rep 3), several query tiles and key blocks.
            Case { batch: 2, heads: 6, kv_heads: 2, seq: 200, offset: 0, window: None, d: 64, seed: 1 },
            // No grouping, odd head_dim.
            Case { batch: 1, heads: 2, kv_heads: 2, seq: 37, offset: 0, window: None, d: 24, seed: 2 },
            // KV cache: queries after 150 cached positions.
            Case { batch: 3, heads: 3, kv_heads: 1, seq: 20, offset: 150, window: None, d: 32, seed: 3 },
            // Sliding window, shorter than the sequence, with and without an offset.
            Case { batch: 2, heads: 4, kv_heads: 2, seq: 300, offset: 0, window: Some(70), d: 16, seed: 4 },
            Case { batch: 1, heads: 3, kv_heads: 3, seq: 9, offset: 260, window: Some(130), d: 64, seed: 5 },
            // One-token decoding steps (no mask; with a window that hides old keys).
            Case { batch: 4, heads: 6, kv_heads: 2, seq: 1, offset: 99, window: None, d: 64, seed: 6 },
            Case { batch: 2, heads: 2, kv_heads: 1, seq: 1, offset: 99, window: Some(10), d: 8, seed: 7 },
            Case { batch: 1, heads: 1, kv_heads: 1, seq: 1, offset: 0, window: None, d: 4, seed: 8 },
            // Short rows over many keys: the outputs cancel towards 0 (a draw of the random-shape test).
            Case { batch: 2, heads: 9, kv_heads: 3, seq: 121, offset: 130, window: None, d: 4, seed: 327 },
        ];
        for c in &cases {
            let err = compare(c);
            assert!(err < 1e-5, "b {} h {}/{} s {} offset {} window {:?}: relative error {err}", c.batch, c.heads, c.kv_heads, c.seq, c.offset, c.window);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let dev = Device::Cpu;
        let (b, h, kv, s, offset, d) = (2, 6, 2, 150, 40, 32);
        let q = Tensor::from_vec(values(11, b * h * s * d, 2.0), (b, h, s, d), &dev).unwrap();
        let k = Tensor::from_vec(values(12, b * kv * (offset + s) * d, 2.0), (b, kv, offset + s, d), &dev).unwrap();
        let v = Tensor::from_vec(values(13, b * kv * (offset + s) * d, 1.0), (b, kv, offset + s, d), &dev).unwrap();
        let mask = causal_mask(s, offset, Some(90), DType::F32, &dev).unwrap();
        let run = |threads: usize| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let out = pool.install(|| try_attention(&q, &k, &v, Some(&mask), 0.2).unwrap().unwrap());
            out.flatten_all().unwrap().to_vec1().unwrap()
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            assert!(one.iter().zip(run(threads)).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
        }
    }

    #[test]
    fn key_ranges_read_from_masks_match_the_causal_rule() {
        for (s, offset, w) in [(5, 0, None), (4, 3, None), (7, 2, Some(3)), (1, 9, Some(4))] {
            let m = causal_mask(s, offset, w, DType::F32, &Device::Cpu).unwrap();
            let r = KeyRanges::from_mask(&m).unwrap().expect("a causal mask");
            assert_eq!(r, KeyRanges::causal(s, offset, w).unwrap());
        }
        assert_eq!(KeyRanges::causal(3, 0, Some(2)).unwrap().ranges(), &[(0, 1), (0, 2), (1, 3)]);
    }

    #[test]
    fn other_masks_and_devices_fall_back_to_the_tensor_ops() {
        let dev = Device::Cpu;
        // A hole in the middle of a row, and a row with finite non-zero values.
        let holed = Tensor::from_vec(vec![0f32, f32::NEG_INFINITY, 0.0], (1, 3), &dev).unwrap();
        let biased = Tensor::from_vec(vec![0f32, -1.0, 0.0, 0.0], (2, 2), &dev).unwrap();
        let empty_row = Tensor::from_vec(vec![f32::NEG_INFINITY; 2], (1, 2), &dev).unwrap();
        for m in [&holed, &biased, &empty_row] {
            assert!(KeyRanges::from_mask(m).unwrap().is_none());
        }
        let q = Tensor::ones((1, 1, 1, 4), DType::F32, &dev).unwrap();
        let k = Tensor::ones((1, 1, 3, 4), DType::F32, &dev).unwrap();
        assert!(try_attention(&q, &k, &k, Some(&holed), 0.5).unwrap().is_none());
        let (qh, kh) = (q.to_dtype(DType::BF16).unwrap(), k.to_dtype(DType::BF16).unwrap());
        assert!(try_attention(&qh, &kh, &kh, None, 0.5).unwrap().is_none());
        // Through the dispatcher the fallback gives the reference's answer.
        let a = crate::kernels::attention(&q, &k, &k, Some(&holed), 0.5).unwrap();
        let b = attention_reference(&q, &k, &k, Some(&holed), 0.5).unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 3, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        assert!(try_attention(&q, &k, &k, None, 1.0).is_err(), "3 heads over 2 KV heads");
        let k8 = Tensor::zeros((1, 1, 4, 6), DType::F32, &dev).unwrap();
        assert!(try_attention(&q, &k8, &k8, None, 1.0).is_err(), "head_dim mismatch");
        let shape = AttnShape { batch: 1, heads: 1, kv_heads: 1, seq: 2, keys: 2, head_dim: 2 };
        let mut out = vec![0f32; 4];
        let bad = KeyRanges { ranges: vec![(0, 1), (1, 1)], keys: 2 };
        assert!(attention_f32(&[0.0; 4], &[0.0; 4], &[0.0; 4], &shape, &bad, 1.0, &mut out).is_err());
        let ok = KeyRanges::causal(2, 0, None).unwrap();
        assert!(attention_f32(&[0.0; 3], &[0.0; 4], &[0.0; 4], &shape, &ok, 1.0, &mut out).is_err());
        assert!(KeyRanges::causal(2, 0, Some(0)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn matches_the_tensor_ops_on_random_shapes(
            batch in 1usize..4,
            kv_heads in 1usize..4,
            n_rep in prop::sample::select(vec![1usize, 3]),
            seq in 1usize..140,
            offset in prop::sample::select(vec![0usize, 1, 17, 130]),
            window in prop::option::of(1usize..160),
            d in prop::sample::select(vec![4usize, 16, 64]),
            seed in 0u64..1_000,
        ) {
            let c = Case { batch, heads: kv_heads * n_rep, kv_heads, seq, offset, window, d, seed };
            let err = compare(&c);
            prop_assert!(err < 1e-5, "relative error {}", err);
        }
    }
}
