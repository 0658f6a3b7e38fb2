//! f32 matrix products on the CPU, the work split over the rayon pool by output tiles.
//!
//! candle's CPU matmul hands a whole product to the `gemm` crate's own threading. At the narrow
//! shapes of a forward over a few hundred tokens (SmolLM2's 128 x 576 x 576 projections, Qwen2's
//! 128 x 4864 x 896 down projection) that reached 60-80% of what one single-threaded `gemm`
//! call per worker on its own block of output columns (or rows) reaches, on both processors
//! measured (docs/performance.md, "Projections split by output tiles"). Here every worker
//! computes one tile of the output with the whole reduction, so the result of an element does
//! not depend on the tiling beyond the kernel's own summation order.
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_attention::SharedOut;

/// Columns below which a column strip is not split further (a few 16-lane AVX-512 kernels wide).
const MIN_TILE_COLS: usize = 128;
/// Rows below which a row block is not split further.
const MIN_TILE_ROWS: usize = 16;
/// Tile boundaries fall on multiples of this many columns (one AVX-512 register of f32).
const COL_ALIGN: usize = 16;

/// `a (m, k) x b (k, n)`: on the CPU in f32 by output tiles ([`tiles`]), anything else through
/// candle's `matmul`. Both operands may be strided views (a transposed weight reads in place).
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let on_cpu = a.device().is_cpu() && b.device().is_cpu();
    if on_cpu && a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.rank() == 2 && b.rank() == 2 {
        a.apply_op2_no_bwd(b, &TiledMatMul)
    } else {
        a.matmul(b)
    }
}

/// The output tiles `(rows, columns)` for `workers` workers: the columns in at most `workers`
/// strips of at least [`MIN_TILE_COLS`] (aligned to [`COL_ALIGN`]), then each strip's rows in as
/// many blocks as the remaining workers allow (at least [`MIN_TILE_ROWS`] rows each). Covers the
/// `m x n` output exactly once; one tile when `workers` is 1.
pub fn tiles(m: usize, n: usize, workers: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let workers = workers.max(1);
    let col_strips = workers.min((n / MIN_TILE_COLS).max(1));
    let row_blocks = (workers / col_strips).min((m / MIN_TILE_ROWS).max(1)).max(1);
    let cols = split(n, col_strips, COL_ALIGN);
    let rows = split(m, row_blocks, 1);
    rows.iter().flat_map(|r| cols.iter().map(move |c| (r.clone(), c.clone()))).collect()
}

/// `len` in `parts` contiguous ranges of nearly equal size, inner boundaries on multiples of
/// `align` where that leaves no range empty.
fn split(len: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, len.max(1));
    let mut bounds = vec![0];
    for i in 1..parts {
        let ideal = len * i / parts;
        let aligned = (ideal + align / 2) / align * align;
        let prev = *bounds.last().expect("non-empty");
        let b = if aligned > prev && aligned < len { aligned } else { ideal };
        if b > prev && b < len {
            bounds.push(b);
        }
    }
    bounds.push(len);
    bounds.windows(2).map(|w| w[0]..w[1]).collect()
}

struct TiledMatMul;

/// A 2-D strided view of f32 storage: base slice (from the layout's offset), row and column strides.
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("cpu matmul: {what} must be f32") };
        let (rows, cols) = layout.shape().dims2()?;
        let stride = layout.stride();
        let (row_stride, col_stride) = (stride[0] as isize, stride[1] as isize);
        let start = layout.start_offset();
        // The last element read must lie inside the storage.
        let last = start + rows.saturating_sub(1) * stride[0] + cols.saturating_sub(1) * stride[1];
        if rows > 0 && cols > 0 && last >= data.len() {
            candle_core::bail!("cpu matmul: {what} view ({rows}, {cols}) strides {stride:?} offset {start} overruns its storage of {}", data.len());
        }
        Ok(View { data: &data[start.min(data.len())..], rows, cols, row_stride, col_stride })
    }

    /// Pointer to element `(r, c)`.
    fn at(&self, r: usize, c: usize) -> *const f32 {
        // SAFETY: callers stay inside (rows, cols), which `new` checked against the storage.
        unsafe { self.data.as_ptr().offset(r as isize * self.row_stride + c as isize * self.col_stride) }
    }
}

impl CustomOp2 for TiledMatMul {
    fn name(&self) -> &'static str {
        "evop-tiled-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = View::new(s1, l1, "left operand")?;
        let b = View::new(s2, l2, "right operand")?;
        if a.cols != b.rows {
            candle_core::bail!("cpu matmul: shapes ({}, {}) and ({}, {}) do not chain", a.rows, a.cols, b.rows, b.cols);
        }
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let mut out = vec![0f32; m * n];
        if m > 0 && n > 0 && k > 0 {
            // Each tile writes only its own disjoint part of `out`.
            let dst = SharedOut(out.as_mut_ptr());
            let run = |(rows, cols): &(Range<usize>, Range<usize>)| {
                // SAFETY: the tile (rows, cols) lies inside the m x n output (row stride n) and inside
                // both operands' checked views; tiles are disjoint, so each output element has one writer.
                unsafe {
                    gemm::gemm(
                        rows.len(),
                        cols.len(),
                        k,
                        dst.get().add(rows.start * n + cols.start),
                        1,
                        n as isize,
                        false,
                        a.at(rows.start, 0),
                        a.col_stride,
                        a.row_stride,
                        b.at(0, cols.start),
                        b.col_stride,
                        b.row_stride,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            };
            let plan = tiles(m, n, rayon::current_num_threads());
            if plan.len() == 1 {
                run(&plan[0]);
            } else {
                plan.par_iter().for_each(run);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The product in f64, element by element: an independent reference.
    fn reference(a: &Tensor, b: &Tensor) -> Vec<f32> {
        let a: Vec<Vec<f32>> = a.to_vec2().unwrap();
        let b: Vec<Vec<f32>> = b.to_vec2().unwrap();
        let (m, n) = (a.len(), b.first().map_or(0, |r| r.len()));
        let mut out = Vec::with_capacity(m * n);
        for row in &a {
            out.extend((0..n).map(|j| row.iter().zip(&b).map(|(x, b_row)| *x as f64 * b_row[j] as f64).sum::<f64>() as f32));
        }
        out
    }

    fn check(m: usize, k: usize, n: usize, transposed_b: bool, threads: usize, seed: u64) {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(values(seed, m * k), (m, k), &dev).unwrap();
        let b = if transposed_b {
            Tensor::from_vec(values(seed + 1, n * k), (n, k), &dev).unwrap().t().unwrap()
        } else {
            Tensor::from_vec(values(seed + 1, k * n), (k, n), &dev).unwrap()
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let got: Vec<f32> = pool.install(|| matmul(&a, &b)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = reference(&a, &b);
        assert_eq!(got.len(), want.len());
        let tol = 1e-5 * (k as f32).sqrt().max(1.0);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= tol, "{m}x{k}x{n} (b transposed: {transposed_b}, {threads} threads): element {i} is {g}, reference {w}");
        }
    }

    #[test]
    fn matches_an_f64_reference_at_model_shapes_and_thread_counts() {
        for threads in [1, 2, 3, 8] {
            check(128, 576, 576, true, threads, 1);
            check(128, 576, 192, false, threads, 2);
            check(7, 64, 1000, true, threads, 3);
            check(300, 33, 17, false, threads, 4);
        }
    }

    #[test]
    fn a_row_offset_view_is_read_from_its_offset() {
        let dev = Device::Cpu;
        let big = Tensor::from_vec(values(9, 40 * 24), (40, 24), &dev).unwrap();
        let a = big.narrow(0, 5, 30).unwrap();
        let b = Tensor::from_vec(values(10, 24 * 200), (24, 200), &dev).unwrap().narrow(1, 3, 150).unwrap();
        let got: Vec<f32> = matmul(&a, &b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = reference(&a.contiguous().unwrap(), &b.contiguous().unwrap());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "{g} vs {w}");
        }
    }

    #[test]
    fn empty_and_mismatched_shapes() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((4, 0), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
        let z: Vec<f32> = matmul(&a, &b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(z, vec![0.0; 12]);
        let a = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((6, 3), DType::F32, &dev).unwrap();
        let err = matmul(&a, &b).unwrap_err().to_string();
        assert!(err.contains("(4, 5)") && err.contains("(6, 3)"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// The tiles cover the output exactly once, and no tile is empty.
        #[test]
        fn tiles_cover_the_output_once(m in 1usize..700, n in 1usize..3000, workers in 1usize..20) {
            let plan = tiles(m, n, workers);
            prop_assert!(plan.len() <= workers.max(1));
            let mut seen = vec![0u8; m * n];
            for (r, c) in &plan {
                prop_assert!(!r.is_empty() && !c.is_empty());
                for i in r.clone() {
                    for j in c.clone() {
                        seen[i * n + j] += 1;
                    }
                }
            }
            prop_assert!(seen.iter().all(|&s| s == 1));
        }

        #[test]
        fn matches_the_reference_on_random_shapes(m in 1usize..80, k in 1usize..90, n in 1usize..300, t in any::<bool>(), threads in 1usize..5) {
            check(m, k, n, t, threads, (m * 131 + k * 17 + n) as u64);
        }
    }
}
