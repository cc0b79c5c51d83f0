// A layer's q/k/v projections turned into attention's inputs in one launch (src/qkv.rs, whose
// CPU composition of bias add, per-head RMSNorm, rotary embedding and write_kv is the
// reference): replaces a bias add, three copies, two rotations and the KV write.
//
//   q, k, v        (num_tokens, heads * D) rows, each row contiguous, rows q_stride / k_stride /
//                  v_stride elements apart (column views of one stacked projection, or not)
//   q_bias, ...    (heads * D) or null: added first, the sum rounded to T
//   q_norm, k_norm (D) or null: each q and k head normalised, x / sqrt(mean(x^2) + eps) * w,
//                  rounded to T (Qwen3)
//   cos, sin       (max_positions, D / 2): q and k rotated (rotate-half layout) by their token's
//                  position; a position past the tables gives NaN, as the rope kernel does
//   slot_mapping   (num_tokens): k and v rows go to cache slot slot_mapping[token], every one
//                  inside the cache (checked on the host)
//   q_out          (num_tokens, num_heads, D); k_cache, v_cache (num_slots, num_kv_heads, D)
//
// Grid (num_tokens, ceil(heads / warps)), THREADS threads: warp w of block (t, y) takes head
// y * warps + w of token t (q heads, then k, then v), each lane the pairs (i, i + D / 2) for
// i = lane, lane + 32, ...; D even, at most 2 * 32 * PAIRS. One block per token would handle a
// decode step's heads a few at a time in one SM (9.5 us for the 7B shape on an H200).

#include "common.cuh"

namespace {

constexpr int QKV_THREADS = 256;
constexpr int PAIRS = 4;  // pairs per lane: head dims up to 256

template <typename T>
__device__ __forceinline__ void qkv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                    int q_stride, int k_stride, int v_stride, const T* __restrict__ q_bias,
                                    const T* __restrict__ k_bias, const T* __restrict__ v_bias,
                                    const T* __restrict__ q_norm, const T* __restrict__ k_norm, float eps,
                                    const T* __restrict__ cos, const T* __restrict__ sin,
                                    const uint32_t* __restrict__ positions, int max_positions,
                                    const uint32_t* __restrict__ slot_mapping, T* __restrict__ q_out,
                                    T* __restrict__ k_cache, T* __restrict__ v_cache, int num_heads,
                                    int num_kv_heads, int head_dim) {
    const size_t token = blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, num_warps = blockDim.x / 32;
    const int half = head_dim / 2;
    const uint32_t pos = positions[token];
    const bool valid = pos < (uint32_t)max_positions;
    const size_t slot = slot_mapping[token];
    for (int h = blockIdx.y * num_warps + warp; h < num_heads + 2 * num_kv_heads; h += num_warps * gridDim.y) {
        // Which projection this head belongs to, its source row, bias, norm and destination.
        const T *src, *bias, *norm;
        T* dst;
        bool rotate;
        if (h < num_heads) {
            src = q + token * q_stride + (size_t)h * head_dim;
            bias = q_bias != nullptr ? q_bias + (size_t)h * head_dim : nullptr;
            norm = q_norm;
            dst = q_out + (token * num_heads + h) * head_dim;
            rotate = true;
        } else if (h < num_heads + num_kv_heads) {
            const int kh = h - num_heads;
            src = k + token * k_stride + (size_t)kh * head_dim;
            bias = k_bias != nullptr ? k_bias + (size_t)kh * head_dim : nullptr;
            norm = k_norm;
            dst = k_cache + (slot * num_kv_heads + kh) * head_dim;
            rotate = true;
        } else {
            const int vh = h - num_heads - num_kv_heads;
            src = v + token * v_stride + (size_t)vh * head_dim;
            bias = v_bias != nullptr ? v_bias + (size_t)vh * head_dim : nullptr;
            norm = nullptr;
            dst = v_cache + (slot * num_kv_heads + vh) * head_dim;
            rotate = false;
        }
        // x1[p], x2[p]: elements i and i + half of this lane's p-th pair, i = lane + 32 p.
        float x1[PAIRS], x2[PAIRS];
        float sum_sq = 0.f;
#pragma unroll
        for (int p = 0; p < PAIRS; ++p) {
            const int i = lane + 32 * p;
            x1[p] = x2[p] = 0.f;
            if (i >= half) continue;
            x1[p] = qs::to_float(src[i]);
            x2[p] = qs::to_float(src[i + half]);
            if (bias != nullptr) {
                x1[p] = qs::to_float(qs::from_float<T>(x1[p] + qs::to_float(bias[i])));
                x2[p] = qs::to_float(qs::from_float<T>(x2[p] + qs::to_float(bias[i + half])));
            }
            sum_sq += x1[p] * x1[p] + x2[p] * x2[p];
        }
        if (norm != nullptr) {  // warp-uniform
            const float inv_rms = rsqrtf(qs::warp_sum(sum_sq) / head_dim + eps);
#pragma unroll
            for (int p = 0; p < PAIRS; ++p) {
                const int i = lane + 32 * p;
                if (i >= half) continue;
                x1[p] = qs::to_float(qs::from_float<T>(x1[p] * inv_rms * qs::to_float(norm[i])));
                x2[p] = qs::to_float(qs::from_float<T>(x2[p] * inv_rms * qs::to_float(norm[i + half])));
            }
        }
#pragma unroll
        for (int p = 0; p < PAIRS; ++p) {
            const int i = lane + 32 * p;
            if (i >= half) continue;
            float a = x1[p], b = x2[p];
            if (rotate) {
                float c = NAN, s = NAN;
                if (valid) {
                    c = qs::to_float(cos[(size_t)pos * half + i]);
                    s = qs::to_float(sin[(size_t)pos * half + i]);
                }
                a = x1[p] * c - x2[p] * s;
                b = x2[p] * c + x1[p] * s;
            }
            dst[i] = qs::from_float<T>(a);
            dst[i + half] = qs::from_float<T>(b);
        }
    }
}

}  // namespace

#define QKV(SUFFIX, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(QKV_THREADS) qkv_##SUFFIX(                          \
        const T* q, const T* k, const T* v, int q_stride, int k_stride, int v_stride,               \
        const T* q_bias, const T* k_bias, const T* v_bias, const T* q_norm, const T* k_norm,        \
        float eps, const T* cos, const T* sin, const uint32_t* positions, int max_positions,        \
        const uint32_t* slot_mapping, T* q_out, T* k_cache, T* v_cache, int num_heads,              \
        int num_kv_heads, int head_dim) {                                                            \
        qkv<T>(q, k, v, q_stride, k_stride, v_stride, q_bias, k_bias, v_bias, q_norm, k_norm, eps,  \
               cos, sin, positions, max_positions, slot_mapping, q_out, k_cache, v_cache, num_heads, \
               num_kv_heads, head_dim);                                                              \
    }
QS_FOR_EACH_DTYPE(QKV)
