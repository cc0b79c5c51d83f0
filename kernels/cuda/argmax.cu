// The argmax of each row of logits, f32, bf16 or f16 (src/argmax.rs, whose CPU loop is the
// reference): the first index of the largest value; NaN never wins, and a row whose first value
// is NaN gives 0, as a scan from index 0 keeping strictly larger values does. Half-precision
// values are compared as floats (exact), so a bf16 row's argmax is its f32 copy's.
//
// Two launches: argmax_partial_*, grid (rows, parts) of THREADS threads, each block the best
// (value, index) of one slice of a row; then argmax_final_*, grid (rows) of 32 threads, the
// best of a row's parts. One block per row would leave all but one SM idle at one sequence
// (candle's argmax took ~130 us for a 152k vocabulary on an H200, 2026-11-27).

#include <limits.h>

#include "common.cuh"

namespace {

constexpr int THREADS = 256;  // ARGMAX_THREADS in src/argmax.rs

// Whether (v, i) beats (best, best_i): larger, or equal at a lower index. NaN never does.
__device__ __forceinline__ bool beats(float v, int i, float best, int best_i) {
    return v > best || (v == best && i < best_i);
}

__device__ __forceinline__ void warp_best(float& best, int& best_i) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        const float v = __shfl_xor_sync(0xffffffffu, best, offset);
        const int i = __shfl_xor_sync(0xffffffffu, best_i, offset);
        if (beats(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
}

}  // namespace

template <typename T>
__device__ __forceinline__ void argmax_partial(const T* __restrict__ x, float* __restrict__ part_v,
                                               int* __restrict__ part_i, int vocab, int chunk) {
    __shared__ float warp_v[THREADS / 32];
    __shared__ int warp_i[THREADS / 32];
    const size_t row = blockIdx.x;
    const int part = blockIdx.y, parts = gridDim.y;
    const T* r = x + row * vocab;
    const int begin = part * chunk, end = min(vocab, begin + chunk);
    // INT_MAX: no value yet; -inf values still win it, at their lowest index.
    float best = -INFINITY;
    int best_i = INT_MAX;
    for (int i = begin + threadIdx.x; i < end; i += THREADS) {
        const float v = qs::to_float(r[i]);
        if (beats(v, i, best, best_i)) {
            best = v;
            best_i = i;
        }
    }
    warp_best(best, best_i);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        warp_v[warp] = best;
        warp_i[warp] = best_i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < THREADS / 32; ++w)
            if (beats(warp_v[w], warp_i[w], best, best_i)) {
                best = warp_v[w];
                best_i = warp_i[w];
            }
        part_v[row * parts + part] = best;
        part_i[row * parts + part] = best_i;
    }
}

template <typename T>
__device__ __forceinline__ void argmax_final(const T* __restrict__ x, const float* __restrict__ part_v,
                                             const int* __restrict__ part_i, uint32_t* __restrict__ out, int vocab,
                                             int parts) {
    const size_t row = blockIdx.x;
    float best = -INFINITY;
    int best_i = INT_MAX;
    for (int p = threadIdx.x; p < parts; p += 32)
        if (beats(part_v[row * parts + p], part_i[row * parts + p], best, best_i)) {
            best = part_v[row * parts + p];
            best_i = part_i[row * parts + p];
        }
    warp_best(best, best_i);
    if (threadIdx.x == 0) out[row] = (best_i == INT_MAX || isnan(qs::to_float(x[row * vocab]))) ? 0u : (uint32_t)best_i;
}

#define ARGMAX(SUFFIX, T)                                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                      \
        argmax_partial_##SUFFIX(const T* __restrict__ x, float* __restrict__ part_v, int* __restrict__ part_i, \
                                int vocab, int chunk) {                                                        \
        argmax_partial<T>(x, part_v, part_i, vocab, chunk);                                                    \
    }                                                                                                          \
    extern "C" __global__ void argmax_final_##SUFFIX(const T* __restrict__ x, const float* __restrict__ part_v, \
                                                     const int* __restrict__ part_i, uint32_t* __restrict__ out, \
                                                     int vocab, int parts) {                                   \
        argmax_final<T>(x, part_v, part_i, out, vocab, parts);                                                 \
    }

ARGMAX(f32, float)
ARGMAX(bf16, __nv_bfloat16)
ARGMAX(f16, __half)
