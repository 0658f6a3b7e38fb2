// Scaled, masked softmax over the last dimension of attention scores, in one pass over memory:
// y[r, c] = softmax_c(scale * x[r, c] + mask[r % mask_rows, c]), computed in f32 for every storage
// type. It replaces four elementwise passes of the tensor-op attention (scale, cast to f32, mask
// add, cast back) and candle's one-warp-per-row softmax. One thread block per row; the row is read
// three times (maximum, sum, output), from L1/L2 after the first.
#include "common.cuh"
#include <math_constants.h>


// Reduces `v` over the thread block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `shared` holds 32 floats.
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffff, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();  // `shared` may still be read by a previous reduction
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : (IS_MAX ? -CUDART_INF_F : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffff, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    return v;
}

template <typename T>
__device__ void masked_softmax(const T* x, const T* mask, T* y, int cols, int mask_rows, float scale) {
    __shared__ float shared[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * cols;
    const T* mr = mask_rows > 0 ? mask + (row % mask_rows) * (size_t)cols : nullptr;
    T* yr = y + row * cols;
    float mx = -CUDART_INF_F;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f32(xr[c]) * scale + (mr ? to_f32(mr[c]) : 0.0f);
        mx = fmaxf(mx, v);
    }
    mx = block_reduce<true>(mx, shared);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f32(xr[c]) * scale + (mr ? to_f32(mr[c]) : 0.0f);
        sum += expf(v - mx);
    }
    sum = block_reduce<false>(sum, shared);
    const float inv = 1.0f / sum;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f32(xr[c]) * scale + (mr ? to_f32(mr[c]) : 0.0f);
        yr[c] = from_f32<T>(expf(v - mx) * inv);
    }
}

#define MASKED_SOFTMAX(T, NAME)                                                                   \
    extern "C" __global__ void NAME(const T* x, const T* mask, T* y, int cols, int mask_rows,     \
                                    float scale) {                                               \
        masked_softmax<T>(x, mask, y, cols, mask_rows, scale);                                    \
    }

MASKED_SOFTMAX(float, evop_masked_softmax_f32)
MASKED_SOFTMAX(__nv_bfloat16, evop_masked_softmax_bf16)
MASKED_SOFTMAX(__half, evop_masked_softmax_f16)
