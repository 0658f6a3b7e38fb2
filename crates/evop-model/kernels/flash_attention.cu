// Causal attention in one pass over the keys, FlashAttention-2 style (Dao 2023, "FlashAttention-2:
// Faster Attention with Better Parallelism and Work Partitioning"): the (s, t) scores are never
// written to memory. One thread block = 4 warps = 64 query rows of one (batch, head); each warp
// owns 16 rows. Key/value tiles of 64 rows are staged in shared memory; Q K^T and P V run on the
// tensor cores (mma.sync m16n8k16, bf16/f16 inputs, f32 accumulation); the softmax is online (running
// row maximum and sum, the output rescaled when the maximum grows). Key tiles no query of the block
// may see (beyond the causal limit, before a sliding window) are skipped.
//
// Layouts: q (b, h, s, D), k and v (b, h_kv, t, D), all contiguous; query i sits at absolute
// position offset + i and sees keys j with j <= offset + i (and j > offset + i - window when
// window > 0); grouped-query heads read kv head (head / (h / h_kv)) in place. The output is written
// as (b, s, h * D), the layout the output projection reads.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#include <stdint.h>

namespace {

constexpr int BQ = 64;     // query rows per block
constexpr int BK = 64;     // keys per tile
constexpr int WARPS = 4;   // 16 query rows each

template <typename T> struct Pack;
template <> struct Pack<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t two(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};
template <> struct Pack<__half> {
    static __device__ __forceinline__ uint32_t two(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

// d += a * b for one 16x8x16 tile; a: 4 registers (16x16, row-major fragment), b: 2 (16x8, col).
template <typename T> __device__ __forceinline__ void mma(float* d, const uint32_t* a, uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma<__nv_bfloat16>(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma<__half>(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ uint32_t two_halves(const T* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Four 8x8 tiles of 16-bit values from shared memory; lane l gives the address of row l % 8 of tile
// l / 8. Without TRANS lane t receives (row t / 4, columns 2 (t % 4) and +1) of each tile, with
// TRANS (rows 2 (t % 4) and +1, column t / 4): the B-fragment layouts of mma.m16n8k16.
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    if (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    }
}

template <typename T, int D>
__device__ void flash_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                          int h, int h_kv, int s, int t, int offset, int window, float scale_log2) {
    constexpr int LD = D + 8;  // shared-memory row stride (elements): spreads rows over banks
    __shared__ __align__(16) T ks[BK * LD];
    __shared__ __align__(16) T vs[BK * LD];

    const int qtile = blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
    const int kv_head = head / (h / h_kv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, tq = lane & 3;
    const int row0 = qtile * BQ + warp * 16;  // this warp's first query row
    const int rows[2] = {row0 + g, row0 + g + 8};

    const T* qb = q + ((size_t)(batch * h + head) * s) * D;
    const T* kb = k + ((size_t)(batch * h_kv + kv_head) * t) * D;
    const T* vb = v + ((size_t)(batch * h_kv + kv_head) * t) * D;

    // Q fragments for the whole head dimension, in registers (zeros past the last row).
    uint32_t qa[D / 16][4];
    #pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int col = kc * 16 + half * 8 + 2 * tq;
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                qa[kc][half * 2 + r] = rows[r] < s ? two_halves(qb + (size_t)rows[r] * D + col) : 0u;
            }
        }
    }

    float o[D / 8][4];
    #pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F};  // running maxima (log2 domain)
    float l[2] = {0.0f, 0.0f};                    // this thread's share of the running sums

    // Keys any query of the block may see.
    const int first_q = offset + qtile * BQ;
    const int last_q = offset + min(qtile * BQ + BQ, s) - 1;
    const int k_lo = window > 0 ? max(0, first_q - window + 1) : 0;
    const int k_hi = min(t, last_q + 1);

    for (int kt = (k_lo / BK) * BK; kt < k_hi; kt += BK) {
        __syncthreads();  // the previous tile is no longer read
        constexpr int VEC = 8;  // elements per 16-byte load
        for (int idx = threadIdx.x; idx < BK * D / VEC; idx += WARPS * 32) {
            const int r = idx / (D / VEC), c = (idx % (D / VEC)) * VEC;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (kt + r < t) {
                kv = *reinterpret_cast<const uint4*>(kb + (size_t)(kt + r) * D + c);
                vv = *reinterpret_cast<const uint4*>(vb + (size_t)(kt + r) * D + c);
            }
            *reinterpret_cast<uint4*>(ks + r * LD + c) = kv;
            *reinterpret_cast<uint4*>(vs + r * LD + c) = vv;
        }
        __syncthreads();
        if (row0 >= s) continue;  // this warp has no query rows (it still helps load tiles)

        // Scores S = Q K^T for 16 rows x 64 keys: 8 column tiles of 8 keys.
        // K fragments by ldmatrix: tiles (keys nt*8.., dims kc*16 + {0, 8}, (kc+1)*16 + {0, 8}).
        float sc[BK / 8][4];
        const int tile = lane / 8, tile_row = lane % 8;
        #pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const T* krow = ks + (nt * 8 + tile_row) * LD + (tile >> 1) * 16 + (tile & 1) * 8;
            #pragma unroll
            for (int kc = 0; kc < D / 16; kc += 2) {
                uint32_t kb[4];
                ldmatrix_x4<false>(kb, krow + kc * 16);
                mma<T>(sc[nt], qa[kc], kb[0], kb[1]);
                mma<T>(sc[nt], qa[kc + 1], kb[2], kb[3]);
            }
        }
        // Mask, scale into the log2 domain, running maxima.
        float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
        #pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const int key = kt + nt * 8 + 2 * tq + (e & 1);
                const int pos = offset + rows[r];
                const bool visible = key < t && key <= pos && (window <= 0 || key > pos - window);
                const float x = visible ? sc[nt][e] * scale_log2 : -CUDART_INF_F;
                sc[nt][e] = x;
                tile_max[r] = fmaxf(tile_max[r], x);
            }
        }
        float alpha[2];
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffff, tile_max[r], 2));
            const float m_new = fmaxf(m[r], tile_max[r]);
            // With every key so far hidden the maximum is -inf: use 0 so that exp2 gives 0, not NaN.
            const float base = m_new == -CUDART_INF_F ? 0.0f : m_new;
            alpha[r] = exp2f(m[r] - base);
            m[r] = m_new;
            l[r] *= alpha[r];
            #pragma unroll
            for (int nt = 0; nt < BK / 8; ++nt) {
                sc[nt][2 * r] = exp2f(sc[nt][2 * r] - base);
                sc[nt][2 * r + 1] = exp2f(sc[nt][2 * r + 1] - base);
                l[r] += sc[nt][2 * r] + sc[nt][2 * r + 1];
            }
        }
        #pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[dt][0] *= alpha[0];
            o[dt][1] *= alpha[0];
            o[dt][2] *= alpha[1];
            o[dt][3] *= alpha[1];
        }
        // O += P V: P's accumulator layout is the A-fragment layout of 16-key chunks.
        #pragma unroll
        for (int kc = 0; kc < BK / 16; ++kc) {
            uint32_t pa[4] = {
                Pack<T>::two(sc[2 * kc][0], sc[2 * kc][1]),
                Pack<T>::two(sc[2 * kc][2], sc[2 * kc][3]),
                Pack<T>::two(sc[2 * kc + 1][0], sc[2 * kc + 1][1]),
                Pack<T>::two(sc[2 * kc + 1][2], sc[2 * kc + 1][3]),
            };
            // V fragments by transposing ldmatrix: tiles (keys kc*16 + {0, 8}, dims dt*8, (dt+1)*8).
            const T* vrow = vs + (kc * 16 + (tile & 1) * 8 + tile_row) * LD + (tile >> 1) * 8;
            #pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                uint32_t vb[4];
                ldmatrix_x4<true>(vb, vrow + dt * 8);
                mma<T>(o[dt], pa, vb[0], vb[1]);
                mma<T>(o[dt + 1], pa, vb[2], vb[3]);
            }
        }
    }
    if (row0 >= s) return;
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
    }
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (rows[r] >= s) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        T* orow = out + ((size_t)batch * s + rows[r]) * h * D + (size_t)head * D;
        #pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * tq) = Pack<T>::two(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        }
    }
}

}  // namespace

#define FLASH(T, D, NAME)                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) NAME(const T* q, const T* k, const T* v, T* out, int h, \
                                                          int h_kv, int s, int t, int offset, int window,  \
                                                          float scale_log2) {                              \
        flash_fwd<T, D>(q, k, v, out, h, h_kv, s, t, offset, window, scale_log2);                          \
    }

FLASH(__nv_bfloat16, 64, evop_flash_attention_d64_bf16)
FLASH(__nv_bfloat16, 128, evop_flash_attention_d128_bf16)
FLASH(__half, 64, evop_flash_attention_d64_f16)
FLASH(__half, 128, evop_flash_attention_d128_f16)
