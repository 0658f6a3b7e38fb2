// Fused elementwise steps of a decoder block on CUDA, one pass over memory each:
// - silu_mul: y = silu(gate) * up (SwiGLU's activation), two elements per thread step;
// - rope_to_heads: rotary embedding (half-split layout, as Hugging Face Llama) of a projection
//   output read as (b, s, h, d) and written as (b, h, s, d), so the transpose to heads costs no
//   separate copy;
// - to_heads: the same transpose without the rotation (values), 16 bytes per thread step.
// Arithmetic in f32 for every storage type.
#include "common.cuh"
#include <stdint.h>


__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

template <typename T>
__device__ void silu_mul(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; 2 * i < n; i += stride) {
        const size_t j = 2 * i;
        const float a0 = to_f32(g[j]), b0 = to_f32(u[j]);
        y[j] = from_f32<T>(silu(a0) * b0);
        if (j + 1 < n) {
            const float a1 = to_f32(g[j + 1]), b1 = to_f32(u[j + 1]);
            y[j + 1] = from_f32<T>(silu(a1) * b1);
        }
    }
}

template <typename T>
__device__ void rope_to_heads(const T* __restrict__ x, const T* __restrict__ cos, const T* __restrict__ sin,
                              T* __restrict__ y, int b, int s, int h, int d) {
    const int half = d / 2;
    const size_t total = (size_t)b * s * h * half;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int i = idx % half;
        size_t rest = idx / half;
        const int head = rest % h;
        rest /= h;
        const int pos = rest % s;
        const int batch = rest / s;
        const T* xr = x + (((size_t)batch * s + pos) * h + head) * d;
        T* yr = y + (((size_t)batch * h + head) * s + pos) * d;
        const float c = to_f32(cos[(size_t)pos * half + i]), sn = to_f32(sin[(size_t)pos * half + i]);
        const float x1 = to_f32(xr[i]), x2 = to_f32(xr[i + half]);
        yr[i] = from_f32<T>(x1 * c - x2 * sn);
        yr[i + half] = from_f32<T>(x2 * c + x1 * sn);
    }
}

// (b, s, h, d) -> (b, h, s, d), in 16-byte chunks (d a multiple of 8 and rows 16-byte aligned, so
// a row holds whole chunks for 2- and 4-byte types).
template <typename T>
__device__ void to_heads(const T* __restrict__ x, T* __restrict__ y, int b, int s, int h, int d) {
    constexpr int V = 16 / sizeof(T);  // elements per chunk
    const int chunks = d / V;
    const size_t total = (size_t)b * s * h * chunks;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int c = idx % chunks;
        size_t rest = idx / chunks;
        const int head = rest % h;
        rest /= h;
        const int pos = rest % s;
        const int batch = rest / s;
        const uint4 v = *reinterpret_cast<const uint4*>(x + (((size_t)batch * s + pos) * h + head) * d + c * V);
        *reinterpret_cast<uint4*>(y + (((size_t)batch * h + head) * s + pos) * d + c * V) = v;
    }
}

#define OPS(T, SUFFIX)                                                                                 \
    extern "C" __global__ void evop_silu_mul_##SUFFIX(const T* g, const T* u, T* y, size_t n) {       \
        silu_mul<T>(g, u, y, n);                                                                     \
    }                                                                                                \
    extern "C" __global__ void evop_rope_to_heads_##SUFFIX(const T* x, const T* cos, const T* sin, T* y, \
                                                           int b, int s, int h, int d) {             \
        rope_to_heads<T>(x, cos, sin, y, b, s, h, d);                                                \
    }                                                                                                \
    extern "C" __global__ void evop_to_heads_##SUFFIX(const T* x, T* y, int b, int s, int h, int d) { \
        to_heads<T>(x, y, b, s, h, d);                                                               \
    }

OPS(float, f32)
OPS(__nv_bfloat16, bf16)
OPS(__half, f16)
