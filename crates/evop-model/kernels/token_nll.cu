// Next-token negative log-likelihood of every row of logits in one pass over memory:
// nll[r] = log(sum_c exp(z[r, c])) - z[r, target[r]], in f32 for every storage type. One thread
// block per row; each thread keeps a running (maximum, sum of exponentials) pair over its columns
// (the online softmax of Milakov & Gimelshein 2018), the pairs are merged across the block, and
// the row is read once. It replaces the f32 copy of the logits and the five passes of a
// tensor-op log-sum-exp (maximum, subtract, exp, sum, log) plus the gather.
#include "common.cuh"
#include <math_constants.h>

// Merges the running pair (m, s) with (om, os): the sum of exponentials relative to the larger
// maximum. An empty pair has m = -inf and s = 0.
__device__ __forceinline__ void merge(float& m, float& s, float om, float os) {
    if (om == -CUDART_INF_F) return;
    if (m == -CUDART_INF_F) { m = om; s = os; return; }
    if (om > m) { s = s * expf(m - om) + os; m = om; }
    else { s += os * expf(om - m); }
}

template <typename T>
__device__ void token_nll(const T* z, const unsigned int* target, float* nll, int cols) {
    __shared__ float shared_m[32], shared_s[32];
    const size_t row = blockIdx.x;
    const T* zr = z + row * (size_t)cols;
    float m = -CUDART_INF_F, s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = to_f32(zr[c]);
        if (v > m) { s = (m == -CUDART_INF_F ? 0.0f : s * expf(m - v)) + 1.0f; m = v; }
        else if (v != -CUDART_INF_F) { s += expf(v - m); }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float om = __shfl_xor_sync(0xffffffff, m, o), os = __shfl_xor_sync(0xffffffff, s, o);
        merge(m, s, om, os);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    if (lane == 0) { shared_m[warp] = m; shared_s[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? shared_m[lane] : -CUDART_INF_F;
        s = lane < warps ? shared_s[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            const float om = __shfl_xor_sync(0xffffffff, m, o), os = __shfl_xor_sync(0xffffffff, s, o);
            merge(m, s, om, os);
        }
        if (lane == 0) {
            const unsigned int t = target[row];
            const float picked = t < (unsigned int)cols ? to_f32(zr[t]) : CUDART_NAN_F;
            nll[row] = m + logf(s) - picked;
        }
    }
}

#define TOKEN_NLL(T, NAME)                                                                        \
    extern "C" __global__ void NAME(const T* z, const unsigned int* target, float* nll, int cols) { \
        token_nll<T>(z, target, nll, cols);                                                       \
    }

TOKEN_NLL(float, evop_token_nll_f32)
TOKEN_NLL(__nv_bfloat16, evop_token_nll_bf16)
TOKEN_NLL(__half, evop_token_nll_f16)
