// A draw from a whole row of logits, f32, bf16 or f16, with temperature and min-p (src/sample.rs:
// its `draw_whole` is the sampler's own arithmetic, repeated here step by step so that a row's
// draw on the GPU is the host's but for `expf`'s last bits): weights e^((l - max) / t), those
// below min-p (or 0) as 0; sums by chunks of SAMPLE_CHUNK weights, each over 8 lanes in f64 then the
// lanes in order; the total as the chunks' sum in order; r = u * total; the chunk where r falls,
// then the token. A row whose largest value is not finite gets its argmax (first index of its
// largest value; NaN never wins; 0 if its first value is NaN); a row with t <= 0 is left out.
//
// One block per row: the max and the chunk sums by every thread, into shared memory (at most
// SAMPLE_MAX_CHUNKS: vocabularies up to 384,000), the ordered total and the walk by one (a few
// thousand f64 adds from shared memory; the host's order). The draw's product is rounded on
// its own (no fused multiply-add), as on the host.

#include <limits.h>

#include "common.cuh"

namespace {

constexpr int SAMPLE_THREADS = 1024;  // THREADS in src/sample.rs
constexpr int SAMPLE_CHUNK = 64;  // WALK_CHUNK in src/sample.rs
constexpr int SAMPLE_MAX_CHUNKS = 6000;  // MAX_VOCAB / WALK_CHUNK in src/sample.rs: 48,000 bytes

__device__ __forceinline__ float sample_block_max(float v, float* shared) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        const float o = __shfl_xor_sync(0xffffffffu, v, offset);
        if (o > v) v = o;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < SAMPLE_THREADS / 32; ++w)
        if (shared[w] > m) m = shared[w];
    __syncthreads();
    return m;
}

template <typename T>
__device__ __forceinline__ float sample_weight(const T* r, int i, float max, float t, float min_p) {
    const float w = expf((qs::to_float(r[i]) - max) / t);
    return (w > 0.f && w >= min_p) ? w : 0.f;
}

template <typename T>
__device__ __forceinline__ void sample_whole(const T* __restrict__ x, const float* __restrict__ params,
                                             const double* __restrict__ us, uint32_t* __restrict__ out, int vocab) {
    __shared__ double s[SAMPLE_MAX_CHUNKS];
    __shared__ float warp_max[SAMPLE_THREADS / 32];
    __shared__ int s_first;
    const size_t row = blockIdx.x;
    const float t = params[2 * row], min_p = params[2 * row + 1];
    if (!(t > 0.f)) {  // the same for the whole block
        if (threadIdx.x == 0) out[row] = 0;
        return;
    }
    const T* r = x + row * (size_t)vocab;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const float v = qs::to_float(r[i]);
        if (v > m) m = v;
    }
    const float max = sample_block_max(m, warp_max);
    if (!isfinite(max)) {
        // The argmax: the first index holding the largest value (+-inf here).
        if (threadIdx.x == 0) s_first = INT_MAX;
        __syncthreads();
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
            if (qs::to_float(r[i]) == max) atomicMin(&s_first, i);
        __syncthreads();
        if (threadIdx.x == 0) out[row] = (s_first == INT_MAX || isnan(qs::to_float(r[0]))) ? 0u : (uint32_t)s_first;
        return;
    }
    const int chunks = (vocab + SAMPLE_CHUNK - 1) / SAMPLE_CHUNK;  // <= SAMPLE_MAX_CHUNKS (the host checks)
    for (int c = threadIdx.x; c < chunks; c += SAMPLE_THREADS) {
        const int begin = c * SAMPLE_CHUNK, len = min(SAMPLE_CHUNK, vocab - begin);
        double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int whole = len / 8 * 8;
        for (int i = 0; i < whole; i += 8)
#pragma unroll
            for (int j = 0; j < 8; ++j) lanes[j] += (double)sample_weight(r, begin + i + j, max, t, min_p);
        double rest = 0;
        for (int i = whole; i < len; ++i) rest += (double)sample_weight(r, begin + i, max, t, min_p);
        double sum = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) sum += lanes[j];
        s[c] = sum + rest;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    double total = 0;
    for (int c = 0; c < chunks; ++c) total += s[c];
    double rem = __dmul_rn(us[row], total);
    int c = 0;
    while (c + 1 < chunks && rem >= s[c]) {
        rem -= s[c];
        ++c;
    }
    for (int i = c * SAMPLE_CHUNK; i < vocab; ++i) {
        const float w = sample_weight(r, i, max, t, min_p);
        if (w > 0.f) {
            if (rem < (double)w) {
                out[row] = (uint32_t)i;
                return;
            }
            rem -= (double)w;
        }
    }
    // Past the end by rounding: the last token kept (the row's largest weighs 1, so one is).
    for (int i = vocab - 1; i >= 0; --i)
        if (sample_weight(r, i, max, t, min_p) > 0.f) {
            out[row] = (uint32_t)i;
            return;
        }
    out[row] = 0;
}

}  // namespace

#define SAMPLE_WHOLE(SUFFIX, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)                                                     \
        sample_whole_##SUFFIX(const T* __restrict__ x, const float* __restrict__ params,                      \
                              const double* __restrict__ us, uint32_t* __restrict__ out, int vocab) {         \
        sample_whole<T>(x, params, us, out, vocab);                                                           \
    }

SAMPLE_WHOLE(f32, float)
SAMPLE_WHOLE(bf16, __nv_bfloat16)
SAMPLE_WHOLE(f16, __half)
