//! Scalar math for the vectorised CPU kernels.

/// `exp(x)` in f32: Cephes `expf` (range reduction by `ln 2` in two parts, degree-6 polynomial,
/// relative error about 2e-7), branch-free so loops over it vectorise. Arguments are clamped to
/// [-87.3, 88.3]: below, about 1.2e-38 instead of a smaller number or 0; above, about 2.2e38
/// instead of a larger number or infinity. NaN gives NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer.
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 0.5; // Cephes' 5.0000001e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    // 2^n from the integer n held in t's low mantissa bits (|n| < 2^22), without a float-to-int
    // cast (Rust's saturating casts do not vectorise).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_matches_the_library_exp() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + 175.0 * i as f32 / 400_000.0;
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) >= 0.0 && exp_f32(-1e4) < 2e-38);
        assert!(exp_f32(1e4).is_finite());
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
