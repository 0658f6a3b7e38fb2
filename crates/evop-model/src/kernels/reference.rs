//! Reference numerics written once with tensor ops, on any device and dtype: causal (and
//! sliding-window) masks, grouped-query `repeat_kv` and materialised scaled dot-product attention.
//! The fused kernels beside this file are tested against these.
//!
//! Shapes follow the Hugging Face modelling code: attention tensors are `(batch, heads, seq, head_dim)`.
use candle_core::{DType, Device, Tensor};

/// Additive attention mask of shape `(seq_len, offset + seq_len)`: 0 where query `i` (at absolute
/// position `offset + i`) may attend key `j`, `-inf` elsewhere. With `sliding_window = Some(w)` a
/// query only sees the `w` most recent keys (itself included), as Mistral does.
pub fn causal_mask(
    seq_len: usize,
    offset: usize,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = offset + seq_len;
    let mut data = vec![0f32; seq_len * total];
    for i in 0..seq_len {
        let q = offset + i;
        for j in 0..total {
            let future = j > q;
            let too_old = sliding_window.is_some_and(|w| q >= w && j <= q - w);
            if future || too_old {
                data[i * total + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(data, (seq_len, total), device)?.to_dtype(dtype)
}

/// Whether a mask is needed at all (single-token steps without a sliding window need none).
pub fn needs_mask(seq_len: usize, offset: usize, sliding_window: Option<usize>) -> bool {
    seq_len > 1 || sliding_window.is_some_and(|w| offset + seq_len > w)
}

/// Repeats each of `n_kv` key/value heads `n_rep` times: `(b, n_kv, s, d) -> (b, n_kv * n_rep, s, d)`.
pub fn repeat_kv(xs: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, n_kv, s, d) = xs.dims4()?;
    xs.unsqueeze(2)?.expand((b, n_kv, n_rep, s, d))?.reshape((b, n_kv * n_rep, s, d))
}

/// Keys and values with every grouped-query head repeated up to `heads` (contiguous).
pub fn expand_kv(heads: usize, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let n_rep = heads / k.dim(1)?;
    Ok((repeat_kv(k.contiguous()?, n_rep)?, repeat_kv(v.contiguous()?, n_rep)?))
}

/// Scaled dot-product attention with tensor operations, on any device and dtype (the reference
/// for the fused CPU kernel): grouped-query heads are expanded, the `(b, h, s, t)` scores are
/// materialised and the softmax runs in f32. Shapes as in [`attention`].
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (k, v) = expand_kv(h, k, v)?;
    let dtype = q.dtype();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(DType::F32)?)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    let out = probs.matmul(&v.contiguous()?)?;
    out.transpose(1, 2)?.reshape((b, s, h * d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_and_sliding_masks() {
        let m = causal_mask(3, 1, None, DType::F32, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = m.to_vec2().unwrap();
        assert_eq!(v[0], vec![0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(v[2], vec![0.0; 4]);
        let w = causal_mask(4, 0, Some(2), DType::F32, &Device::Cpu).unwrap();
        let v: Vec<Vec<f32>> = w.to_vec2().unwrap();
        // Query 3 sees keys 2 and 3 only.
        assert_eq!(v[3][..2], [f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(v[3][2..], [0.0, 0.0]);
    }

    #[test]
    fn repeat_kv_repeats_each_head_contiguously() {
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu).unwrap().reshape((1, 2, 2, 1)).unwrap();
        let r = repeat_kv(x, 2).unwrap();
        let v: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }
}
