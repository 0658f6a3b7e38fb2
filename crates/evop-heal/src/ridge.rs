//! The closed-form patch: `T = argmin ||M T - D||^2 + lambda ||T - I||^2` over calibration tokens,
//! with `M` the MLP output of the block before a removed run and `D` what that output must become
//! (ReplaceMe, Shopkhoev et al. 2025, arXiv 2505.02819, with a ridge toward the identity instead
//! of toward zero, so a weak fit leaves the block as it was).
//!
//! Setting the gradient to zero gives `(G + lambda I) T = C + lambda I` with the Gram matrices
//! `G = M^T M` and `C = M^T D`, accumulated in f64 over every real token (the windows carry no
//! padding). `lambda = ridge * mean(diag(G))` ([`RidgeScale::Mean`]) or, per output dimension,
//! `ridge * G_ii` ([`RidgeScale::Diagonal`]), so `ridge` is free of the activations' scale.
//! `G + lambda I` is symmetric positive definite for any `ridge > 0`: it is solved by Cholesky
//! (linfa-linalg, already in the dependency tree through linfa-clustering; pure Rust, f64).
use crate::error::{HealError, Result};
use candle_core::{DType, Device, Tensor};
use linfa_linalg::cholesky::SolveCInplace;
use ndarray::Array2;

/// How the ridge is scaled to the MLP outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RidgeScale {
    /// One `lambda = ridge * mean(diag(G))` for every output dimension.
    Mean,
    /// `lambda_i = ridge * G_ii` per output dimension (`(G + L) T = C + L`, `L = ridge diag(G)`):
    /// free of each dimension's scale, so the few dimensions of very large activation that LLM
    /// residual streams carry do not set the penalty of all the others.
    Diagonal,
}

/// Gram matrices of one patch's least-squares problem, accumulated batch by batch.
#[derive(Clone, Debug)]
pub struct NormalEquations {
    /// `M^T M`, `(h, h)`.
    gram: Array2<f64>,
    /// `M^T D`, `(h, h)`.
    cross: Array2<f64>,
    /// `||D||^2`: the target's energy.
    target_energy: f64,
    /// Rows (tokens) accumulated.
    tokens: usize,
}

/// Copies a `(n, h)` tensor (any float dtype, any device) to an f64 array.
fn to_f64_rows(t: &Tensor) -> Result<Array2<f64>> {
    let (n, h) = t.dims2()?;
    let v = t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Array2::from_shape_vec((n, h), v).expect("shape matches the element count"))
}

impl NormalEquations {
    /// Empty equations for a hidden size `h`.
    pub fn new(h: usize) -> Self {
        Self { gram: Array2::zeros((h, h)), cross: Array2::zeros((h, h)), target_energy: 0.0, tokens: 0 }
    }

    /// Adds tokens: `m` and `d` are `(n, h)` (the MLP output and the target difference).
    pub fn add(&mut self, m: &Tensor, d: &Tensor) -> Result<()> {
        let h = self.gram.nrows();
        if m.dims() != d.dims() || m.dims2()?.1 != h {
            return Err(HealError::Data(format!("MLP output {:?} and target {:?} must both be (n, {h})", m.dims(), d.dims())));
        }
        let (m, d) = (to_f64_rows(m)?, to_f64_rows(d)?);
        ndarray::linalg::general_mat_mul(1.0, &m.t(), &m, 1.0, &mut self.gram);
        ndarray::linalg::general_mat_mul(1.0, &m.t(), &d, 1.0, &mut self.cross);
        self.target_energy += d.iter().map(|x| x * x).sum::<f64>();
        self.tokens += m.nrows();
        Ok(())
    }

    /// Tokens accumulated.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// `||D||^2`.
    pub fn target_energy(&self) -> f64 {
        self.target_energy
    }

    /// The patch `T` `(h, h)` for `ridge > 0` (see the module header and [`RidgeScale`]).
    pub fn solve(&self, ridge: f64, scale: RidgeScale) -> std::result::Result<Array2<f64>, String> {
        if !(ridge > 0.0 && ridge.is_finite()) {
            return Err(format!("ridge {ridge} must be a positive number"));
        }
        if self.tokens == 0 {
            return Err("no tokens were accumulated".into());
        }
        let h = self.gram.nrows();
        let mean = self.gram.diag().mean().unwrap_or(0.0);
        let floor = if mean > 0.0 { mean * 1e-12 } else { 1.0 };
        let mut a = self.gram.clone();
        let mut b = self.cross.clone();
        for i in 0..h {
            let lambda = ridge * match scale {
                RidgeScale::Mean => mean.max(floor),
                RidgeScale::Diagonal => self.gram[(i, i)].max(floor),
            };
            a[(i, i)] += lambda;
            b[(i, i)] += lambda;
        }
        a.solvec_inplace(&mut b).map_err(|e| format!("Cholesky of G + lambda I failed ({e})"))?;
        Ok(b)
    }

    /// `||M T - D||^2` from the Gram matrices: `tr(T^T G T) - 2 tr(T^T C) + ||D||^2`.
    pub fn residual_energy(&self, t: &Array2<f64>) -> f64 {
        let gt = self.gram.dot(t);
        let quad: f64 = gt.iter().zip(t.iter()).map(|(a, b)| a * b).sum();
        let lin: f64 = self.cross.iter().zip(t.iter()).map(|(a, b)| a * b).sum();
        (quad - 2.0 * lin + self.target_energy).max(0.0)
    }

    /// Fraction of the target's energy explained by `M T`: `1 - ||M T - D||^2 / ||D||^2`.
    pub fn explained(&self, t: &Array2<f64>) -> f64 {
        if self.target_energy > 0.0 {
            1.0 - self.residual_energy(t) / self.target_energy
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, h: usize, seed: u64) -> Array2<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, h), |_| rng.random_range(-1.0..1.0))
    }

    fn tensor(a: &Array2<f64>) -> Tensor {
        Tensor::from_vec(a.iter().copied().collect::<Vec<f64>>(), a.dim(), &Device::Cpu).unwrap()
    }

    /// Data made exactly linear (`D = M T*`) is recovered, and explained in full.
    #[test]
    fn recovers_an_exact_linear_map() {
        let (n, h) = (200, 12);
        let m = random(n, h, 1);
        let t_star = random(h, h, 2);
        let d = m.dot(&t_star);
        let mut eq = NormalEquations::new(h);
        eq.add(&tensor(&m.slice(ndarray::s![..120, ..]).to_owned()), &tensor(&d.slice(ndarray::s![..120, ..]).to_owned())).unwrap();
        eq.add(&tensor(&m.slice(ndarray::s![120.., ..]).to_owned()), &tensor(&d.slice(ndarray::s![120.., ..]).to_owned())).unwrap();
        assert_eq!(eq.tokens(), n);
        let t = eq.solve(1e-12, RidgeScale::Mean).unwrap();
        let err = (&t - &t_star).iter().map(|x| x.abs()).fold(0.0, f64::max);
        assert!(err < 1e-8, "max |T - T*| = {err}");
        assert!((eq.explained(&t) - 1.0).abs() < 1e-9);
    }

    /// The ridge pulls the patch to the identity as it grows.
    #[test]
    fn patch_tends_to_the_identity_as_the_ridge_grows() {
        let (n, h) = (100, 8);
        let m = random(n, h, 3);
        let d = random(n, h, 4);
        let mut eq = NormalEquations::new(h);
        eq.add(&tensor(&m), &tensor(&d)).unwrap();
        let dist = |ridge: f64| {
            let t = eq.solve(ridge, RidgeScale::Mean).unwrap();
            (&t - &Array2::<f64>::eye(h)).iter().map(|x| x * x).sum::<f64>().sqrt()
        };
        let (a, b, c) = (dist(1e-2), dist(1e2), dist(1e8));
        assert!(a > b && b > c, "{a} > {b} > {c}");
        assert!(c < 1e-6, "||T - I|| = {c} at ridge 1e8");
        let t = eq.solve(1e8, RidgeScale::Diagonal).unwrap();
        assert!((&t - &Array2::<f64>::eye(h)).iter().all(|x| x.abs() < 1e-6), "diagonal scaling too");
    }

    /// The residual from the Gram matrices equals the one computed directly.
    #[test]
    fn residual_energy_matches_the_direct_sum() {
        let (n, h) = (50, 6);
        let (m, d, t) = (random(n, h, 5), random(n, h, 6), random(h, h, 7));
        let mut eq = NormalEquations::new(h);
        eq.add(&tensor(&m), &tensor(&d)).unwrap();
        let direct: f64 = (m.dot(&t) - &d).iter().map(|x| x * x).sum();
        assert!((eq.residual_energy(&t) - direct).abs() < 1e-9 * direct.max(1.0));
    }

    #[test]
    fn bad_settings_and_shapes_are_errors() {
        let mut eq = NormalEquations::new(4);
        assert!(eq.solve(1e-3, RidgeScale::Mean).unwrap_err().contains("no tokens"));
        let m = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let d = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(eq.add(&m, &d).is_err());
        eq.add(&m, &m).unwrap();
        assert!(eq.solve(0.0, RidgeScale::Diagonal).unwrap_err().contains("positive"));
        assert!(eq.solve(f64::NAN, RidgeScale::Mean).is_err());
    }
}
