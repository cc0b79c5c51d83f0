// A decode step's q/k/v projection of a few rows with the ops on both sides of it, in one launch
// (src/qkv/matmul.rs; its reference is the composition of the NORM few-rows matmul and the q/k/v
// step, small_matmul.cu and qkv.cu, whose arithmetic this follows): the layer's input RMSNorm,
// the stacked projection, each part's bias, the rotation of q and k, and the cache write.
// Models with a per-head norm of q and k (Qwen3) need a head's whole row first and do not take it.
//
//   x              (m, k) the residual stream, m <= M; norm (k) the RMSNorm's weight
//   w              ((num_heads + 2 num_kv_heads) * D, k): q's rows, then k's, then v's
//   bias           (that many) or null: added to the projection rounded to T, the sum rounded
//   cos, sin       (max_positions, D / 2): q and k rotated (rotate-half layout) by their token's
//                  position; a position past the tables gives NaN, as the rope kernel does
//   slot_mapping   (m): k and v rows go to cache slot slot_mapping[token] (checked on the host)
//   q_out          (m, num_heads, D); k_cache, v_cache (num_slots, num_kv_heads, D)
//
// One warp per pair of rows (i, i + D / 2) of one head, so that both halves a rotation mixes
// come out of the same warp; warps stride over the pairs. Lane t writes token t's pair.

#include "small_matmul.cuh"

namespace {

constexpr int QKV_MATMUL_WARPS = 4;  // as in src/qkv/matmul.rs

template <typename T, int M>
__device__ __forceinline__ void qkv_matmul(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ norm,
                                           float eps, const T* __restrict__ bias, const T* __restrict__ cos,
                                           const T* __restrict__ sin, const uint32_t* __restrict__ positions,
                                           int max_positions, const uint32_t* __restrict__ slot_mapping,
                                           T* __restrict__ q_out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                           int m, int k, int num_heads, int num_kv_heads, int head_dim) {
    const int lane = threadIdx.x % 32;
    const int half = head_dim / 2;
    const int pairs = (num_heads + 2 * num_kv_heads) * half;
    const int num_warps = gridDim.x * (blockDim.x / 32);
    for (int p = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; p < pairs; p += num_warps) {  // warp-uniform
        const int h = p / half, i = p % half;
        const size_t row = (size_t)h * head_dim + i;
        const T* w_rows[2] = {w + row * k, w + (row + half) * k};
        float acc[2][M], sq[M];
        qs::warp_row_sums<T, M, 2, true>(x, w_rows, norm, m, k, acc, sq);
#pragma unroll
        for (int t = 0; t < M; ++t) {
            if (lane != t || t >= m) continue;
            const float inv_rms = rsqrtf(sq[t] / k + eps);
            // As the separate ops: the projection rounded to T, plus the bias rounded again.
            float a = qs::to_float(qs::from_float<T>(acc[0][t] * inv_rms));
            float b = qs::to_float(qs::from_float<T>(acc[1][t] * inv_rms));
            if (bias != nullptr) {
                a = qs::to_float(qs::from_float<T>(a + qs::to_float(bias[row])));
                b = qs::to_float(qs::from_float<T>(b + qs::to_float(bias[row + half])));
            }
            T* dst;
            if (h < num_heads) {
                dst = q_out + ((size_t)t * num_heads + h) * head_dim;
            } else if (h < num_heads + num_kv_heads) {
                dst = k_cache + ((size_t)slot_mapping[t] * num_kv_heads + (h - num_heads)) * head_dim;
            } else {
                dst = v_cache + ((size_t)slot_mapping[t] * num_kv_heads + (h - num_heads - num_kv_heads)) * head_dim;
            }
            if (h < num_heads + num_kv_heads) {
                const uint32_t pos = positions[t];
                float c = NAN, s = NAN;
                if (pos < (uint32_t)max_positions) {
                    c = qs::to_float(cos[(size_t)pos * half + i]);
                    s = qs::to_float(sin[(size_t)pos * half + i]);
                }
                const float a0 = a;
                a = a0 * c - b * s;
                b = b * c + a0 * s;
            }
            dst[i] = qs::from_float<T>(a);
            dst[i + half] = qs::from_float<T>(b);
        }
    }
}

}  // namespace

#define QKV_MATMUL_M(SUFFIX, T, M)                                                                              \
    extern "C" __global__ void __launch_bounds__(QKV_MATMUL_WARPS * 32) qkv_matmul_m##M##_##SUFFIX(                        \
        const T* x, const T* w, const T* norm, float eps, const T* bias, const T* cos, const T* sin,            \
        const uint32_t* positions, int max_positions, const uint32_t* slot_mapping, T* q_out, T* k_cache,       \
        T* v_cache, int m, int k, int num_heads, int num_kv_heads, int head_dim) {                              \
        qkv_matmul<T, M>(x, w, norm, eps, bias, cos, sin, positions, max_positions, slot_mapping, q_out, k_cache, \
                         v_cache, m, k, num_heads, num_kv_heads, head_dim);                                     \
    }
#define QKV_MATMUL(SUFFIX, T) \
    QKV_MATMUL_M(SUFFIX, T, 1) QKV_MATMUL_M(SUFFIX, T, 2) QKV_MATMUL_M(SUFFIX, T, 4) QKV_MATMUL_M(SUFFIX, T, 8)
QS_FOR_EACH_DTYPE(QKV_MATMUL)
