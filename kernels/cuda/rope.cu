// Rotary position embedding, rotate-half (GPT-NeoX) layout: dimension i pairs with i + half
// (src/fused/rope.rs).
//
//   x, out     (num_tokens, num_heads, 2 * half)
//   cos, sin   (max_positions, half), of x's dtype
//   positions  (num_tokens) u32
//   out[i] = x[i] cos - x[i + half] sin, out[i + half] = x[i + half] cos + x[i] sin
//
// Grid (num_tokens), any number of threads, striding over num_heads * half pairs. A position
// at or past max_positions (which the CPU op rejects) yields NaN rather than a wild read.

#include "common.cuh"

namespace {

template <typename T>
__device__ __forceinline__ void rope(const T* __restrict__ x, const T* __restrict__ cos,
                                     const T* __restrict__ sin, const uint32_t* __restrict__ positions,
                                     T* __restrict__ out, int num_heads, int half, int max_positions) {
    const size_t token = blockIdx.x;
    const uint32_t pos = positions[token];
    const bool valid = pos < (uint32_t)max_positions;
    for (int p = threadIdx.x; p < num_heads * half; p += blockDim.x) {
        const int head = p / half, i = p % half;
        const size_t a = (token * num_heads + head) * 2 * half + i, b = a + half;
        float c = NAN, s = NAN;
        if (valid) {
            c = qs::to_float(cos[(size_t)pos * half + i]);
            s = qs::to_float(sin[(size_t)pos * half + i]);
        }
        const float x1 = qs::to_float(x[a]), x2 = qs::to_float(x[b]);
        out[a] = qs::from_float<T>(x1 * c - x2 * s);
        out[b] = qs::from_float<T>(x2 * c + x1 * s);
    }
}

}  // namespace

#define ROPE(SUFFIX, T)                                                                              \
    extern "C" __global__ void rope_##SUFFIX(const T* x, const T* cos, const T* sin,                \
                                             const uint32_t* positions, T* out, int num_heads,      \
                                             int half, int max_positions) {                          \
        rope<T>(x, cos, sin, positions, out, num_heads, half, max_positions);                        \
    }
QS_FOR_EACH_DTYPE(ROPE)
