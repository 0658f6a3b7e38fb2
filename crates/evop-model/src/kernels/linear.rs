//! The projection layer every architecture uses.
use candle_core::Tensor;

/// A linear layer that multiplies all leading dimensions as one matrix: `(.., in) -> (.., out)`.
///
/// candle-nn's `Linear` runs one GEMM per batch element against the broadcast weight; for wide
/// layers (the LM head is 576 x 49152 on SmolLM2) that streams the whole weight once per batch
/// element. Flattening to a single `(rows, in) x (in, out)` GEMM streams it once; on the CPU that
/// GEMM is split over the threads by output tiles ([`super::cpu_matmul`]).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `weight` is `(out, in)` as in PyTorch; `bias` is `(out,)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The `(out, in)` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `(out,)` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl From<candle_nn::Linear> for Linear {
    fn from(l: candle_nn::Linear) -> Self {
        Self::new(l.weight().clone(), l.bias().cloned())
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        let inner = dims[dims.len() - 1];
        let rows = xs.elem_count() / inner.max(1);
        let flat = xs.reshape((rows, inner))?;
        let mut out = super::cpu_matmul::matmul(&flat, &self.weight.t()?)?;
        if let Some(b) = &self.bias {
            out = out.broadcast_add(b)?;
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty shape") = self.weight.dim(0)?;
        out.reshape(shape)
    }
}
