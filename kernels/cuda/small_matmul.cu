// Matrix times a few vectors: out (m, n) = x (m, k) · w (n, k)ᵀ for 1 <= m <= 8, the projections
// of a decode step of a few sequences (src/small_matmul.rs, whose CPU loop is the reference).
// Reading w is the whole cost, so each warp streams two of its rows once, 16 bytes per lane per
// load, and applies them to all m inputs; x (at most 8 rows) stays in L1/L2.
//
//   x    (m, k) contiguous, w (n, k) contiguous, both 16-byte aligned, k a multiple of 16 / sizeof(T)
//   out  (m, n) contiguous
//
// Grid ceil(n / (R * WARPS)), WARPS * 32 threads; warp g computes rows [g * R, g * R + R) of w.
// Each output is one lane-strided partial sum per lane, then a warp sum: the same order for
// any m, so a row's result does not depend on how many rows are batched with it.

#include "common.cuh"

namespace {

constexpr int R = 2;      // rows of w per warp
constexpr int WARPS = 4;  // SMALL_MATMUL_WARPS in src/small_matmul.rs

template <typename T, int M>
__device__ __forceinline__ void small_matmul(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                                             int n, int k) {
    constexpr int N = qs::Vec<T>::N;
    const int lane = threadIdx.x % 32;
    const int n0 = (blockIdx.x * WARPS + threadIdx.x / 32) * R;
    if (n0 >= n) return;  // warp-uniform
    const int rows = min(R, n - n0);
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = 0.f;

#pragma unroll 2
    for (int k0 = lane * N; k0 < k; k0 += 32 * N) {
        float xv[M][N];
#pragma unroll
        for (int i = 0; i < M; ++i) qs::load_vec(x + (size_t)i * k + k0, xv[i]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r >= rows) break;  // warp-uniform
            float wv[N];
            qs::load_vec(w + (size_t)(n0 + r) * k + k0, wv);
#pragma unroll
            for (int i = 0; i < M; ++i)
#pragma unroll
                for (int e = 0; e < N; ++e) acc[r][i] = fmaf(wv[e], xv[i][e], acc[r][i]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = qs::warp_sum(acc[r][i]);
    // Lane r * M + i writes output (i, n0 + r).
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i)
            if (lane == r * M + i && r < rows) out[(size_t)i * n + n0 + r] = qs::from_float<T>(acc[r][i]);
}

}  // namespace

#define SMALL_MATMUL_M(SUFFIX, T, M)                                                                   \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) small_matmul_m##M##_##SUFFIX(            \
        const T* x, const T* w, T* out, int n, int k) {                                                \
        small_matmul<T, M>(x, w, out, n, k);                                                           \
    }
#define SMALL_MATMUL(SUFFIX, T)                                                                        \
    SMALL_MATMUL_M(SUFFIX, T, 1) SMALL_MATMUL_M(SUFFIX, T, 2) SMALL_MATMUL_M(SUFFIX, T, 3)             \
    SMALL_MATMUL_M(SUFFIX, T, 4) SMALL_MATMUL_M(SUFFIX, T, 5) SMALL_MATMUL_M(SUFFIX, T, 6)             \
    SMALL_MATMUL_M(SUFFIX, T, 7) SMALL_MATMUL_M(SUFFIX, T, 8)
QS_FOR_EACH_DTYPE(SMALL_MATMUL)
