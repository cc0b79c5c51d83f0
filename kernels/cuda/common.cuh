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

// 16 bytes (16-byte aligned) read once, such as a weight: through the read-only path and not
// kept in L1, which holds what is reused (activations).
__device__ __forceinline__ uint4 load_stream(const void* src) {
#if defined(QS_EMULATOR) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 700
    return *reinterpret_cast<const uint4*>(src);
#else
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(src));
    return v;
#endif
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

// Two elements of T in one 32-bit register, `lo` in the low half (the smaller index in an mma
// fragment), rounded from f32.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    union {
        T t[2];
        uint32_t u;
    } p;
    p.t[0] = from_float<T>(lo);
    p.t[1] = from_float<T>(hi);
    return p.u;
}

// Two elements of T already in memory, `lo` and `hi` apart, in one register as pack2 lays them.
template <typename T> __device__ __forceinline__ uint32_t pair(const T& lo, const T& hi) {
    union {
        T t[2];
        uint32_t u;
    } p;
    p.t[0] = lo;
    p.t[1] = hi;
    return p.u;
}

// d += a * b on the tensor cores, one warp: a 16 x 16 tile of T (row-major fragment a), b
// 16 x 8 (column fragment), d 16 x 8 in f32; the fragments' layout is PTX's for
// mma.m16n8k16 (lane = 4 * group + t: a holds rows group and group + 8, columns 2t, 2t + 1 and
// those plus 8; b rows 2t, 2t + 1 and plus 8 of column group; d rows group and group + 8 of
// columns 2t, 2t + 1). T is __nv_bfloat16 or __half.
template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
#ifdef QS_EMULATOR
template <typename T> __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu::mma_16816<sizeof(T) == 2 && !std::is_same<T, __half>::value>(d, a, b);
}
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
// No bf16/f16 mma.m16n8k16 before sm_80: the host never launches a kernel using it there.
template <typename T> __device__ __forceinline__ void mma_16816(float (&)[4], const uint32_t (&)[4], const uint32_t (&)[2]) { __trap(); }
#else
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

}  // namespace qs

// X-macro over the element types: MACRO(suffix, type) for each, so a file instantiates its
// `extern "C"` entry points `<kernel>_f32`, `<kernel>_bf16`, `<kernel>_f16` in one line.
#define QS_FOR_EACH_DTYPE(MACRO) \
    MACRO(f32, float)            \
    MACRO(bf16, __nv_bfloat16)   \
    MACRO(f16, __half)
