// Helpers shared by the kernels: element conversion (arithmetic is always f32, as on the CPU
// path), 16-byte vector loads/stores and warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace qs {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Elements of T in one 16-byte access.
template <typename T> struct Vec {
    static constexpr int N = 16 / sizeof(T);
};

// The Vec<T>::N elements held in 16 bytes, as floats.
template <typename T> __device__ __forceinline__ void unpack_vec(uint4 raw, float* dst) {
    constexpr int N = Vec<T>::N;
    union {
        uint4 raw;
        T elems[N];
    } u;
    u.raw = raw;
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = to_float(u.elems[i]);
}

// Loads Vec<T>::N elements from `src` (16-byte aligned) as floats.
template <typename T> __device__ __forceinline__ void load_vec(const T* src, float* dst) {
    unpack_vec<T>(*reinterpret_cast<const uint4*>(src), dst);
}

// Stores Vec<T>::N floats to `dst` (16-byte aligned), rounding to T.
template <typename T> __device__ __forceinline__ void store_vec(T* dst, const float* src) {
    constexpr int N = Vec<T>::N;
    union {
        uint4 raw;
        T elems[N];
    } u;
#pragma unroll
    for (int i = 0; i < N; ++i) u.elems[i] = from_float<T>(src[i]);
    *reinterpret_cast<uint4*>(dst) = u.raw;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

// Sum over the block; every thread gets the result. `scratch` holds one float per warp.
// Must be reached by all threads of the block.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = (blockDim.x + 31) / 32;
    x = warp_sum(x);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < num_warps; ++w) total += scratch[w];
    return total;
}

// Maximum over the block; every thread gets the result. `scratch` holds one float per warp.
// Must be reached by all threads of the block.
__device__ __forceinline__ float block_max(float x, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = (blockDim.x + 31) / 32;
    x = warp_max(x);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < num_warps; ++w) m = fmaxf(m, scratch[w]);
    return m;
}

}  // namespace qs

// X-macro over the element types: MACRO(suffix, type) for each, so a file instantiates its
// `extern "C"` entry points `<kernel>_f32`, `<kernel>_bf16`, `<kernel>_f16` in one line.
#define QS_FOR_EACH_DTYPE(MACRO) \
    MACRO(f32, float)            \
    MACRO(bf16, __nv_bfloat16)   \
    MACRO(f16, __half)
