// Matrix times a few vectors, out (m, n) = x (m, k) · w (n, k)ᵀ for 1 <= m <= 8: the projections
// of a decode step of a few sequences (src/small_matmul.rs, whose CPU loop in f64 is the
// reference), optionally with the ops around them fused in, so that with qkv_matmul.cu a
// decoder layer of a few rows is five launches (attention's included) instead of ten:
//
//   PLAIN     out = x · wᵀ
//   NORM      out = rms_norm(x) · wᵀ, rms_norm(x) = x / sqrt(mean(x²) + eps) * aux (the norm's
//             weight, (k)). One pass: each warp reads the whole of x anyway, so it adds up x²
//             as it goes and scales its dot products by the row's 1 / rms at the end.
//   NORM_F32  NORM with f32 output (the logits)
//   GATE_UP   NORM against rows j and n + j of w (2n, k), stacked gate and up projections:
//             out (m, n) = silu(gate) * up, gate and up rounded to T first, as the unfused ops
//             would store them
//   RESIDUAL  out = aux + x · wᵀ, aux (m, n) the residual stream; the product is rounded to T
//             before the add, as the unfused add would see it
//
//   x    (m, k) contiguous, w contiguous, both 16-byte aligned, k a multiple of 16 / sizeof(T)
//
// Reading w is the whole cost. One warp per output row (GATE_UP: per pair of rows), summed by
// qs::warp_row_sums (small_matmul.cuh): each lane issues 8 16-byte loads of w before using any,
// so a row of up to 8 * 32 vectors (k = 2048 in bf16) is one round trip to memory; x and the
// norm's weight stay in L1, and w bypasses it. Warps stride over the rows; a row's result does
// not depend on how many rows are batched with it. M is m rounded up to 1, 2, 4 or 8.

#include "small_matmul.cuh"

namespace {

constexpr int WARPS = 4;  // SMALL_MATMUL_WARPS in src/small_matmul.rs

enum Mode { PLAIN, NORM, NORM_F32, GATE_UP, RESIDUAL };

template <typename T, int MODE> struct Out {
    using Type = T;
};
template <typename T> struct Out<T, NORM_F32> {
    using Type = float;
};

template <typename T, int M, int MODE>
__device__ __forceinline__ void small_matmul(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ aux, typename Out<T, MODE>::Type* __restrict__ out,
                                             int m, int n, int k, float eps) {
    constexpr bool NORMED = MODE == NORM || MODE == NORM_F32 || MODE == GATE_UP;
    constexpr int R = MODE == GATE_UP ? 2 : 1;  // rows of w per output
    const int lane = threadIdx.x % 32;
    const int num_warps = gridDim.x * (blockDim.x / 32);
    // Warp-uniform: every lane of a warp takes the same rows (the warp sums need all 32).
    for (int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < n; row += num_warps) {
        const T* w_rows[R];
#pragma unroll
        for (int r = 0; r < R; ++r) w_rows[r] = w + (size_t)(row + r * n) * k;
        float acc[R][M], sq[M];
        qs::warp_row_sums<T, M, R, NORMED>(x, w_rows, aux, m, k, acc, sq);
        // Lane i writes output (i, row).
#pragma unroll
        for (int i = 0; i < M; ++i) {
            if (lane != i || i >= m) continue;
            const size_t at = (size_t)i * n + row;
            const float inv_rms = NORMED ? rsqrtf(sq[i] / k + eps) : 1.f;
            if constexpr (MODE == GATE_UP) {
                const float g = qs::to_float(qs::from_float<T>(acc[0][i] * inv_rms));
                const float u = qs::to_float(qs::from_float<T>(acc[R - 1][i] * inv_rms));
                out[at] = qs::from_float<T>(g / (1.f + expf(-g)) * u);
            } else if constexpr (MODE == RESIDUAL) {
                out[at] = qs::from_float<T>(qs::to_float(qs::from_float<T>(acc[0][i])) + qs::to_float(aux[at]));
            } else {
                out[at] = qs::from_float<typename Out<T, MODE>::Type>(acc[0][i] * inv_rms);
            }
        }
    }
}

}  // namespace

#define SMALL_MATMUL_MODE(SUFFIX, T, M, MODE, NAME)                                                            \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) small_matmul_##NAME##_m##M##_##SUFFIX(           \
        const T* x, const T* w, const T* aux, typename Out<T, MODE>::Type* out, int m, int n, int k, float eps) { \
        small_matmul<T, M, MODE>(x, w, aux, out, m, n, k, eps);                                               \
    }
#define SMALL_MATMUL_M(SUFFIX, T, M)                                     \
    SMALL_MATMUL_MODE(SUFFIX, T, M, PLAIN, plain)                        \
    SMALL_MATMUL_MODE(SUFFIX, T, M, NORM, norm)                          \
    SMALL_MATMUL_MODE(SUFFIX, T, M, NORM_F32, norm_f32)                  \
    SMALL_MATMUL_MODE(SUFFIX, T, M, GATE_UP, gate_up)                    \
    SMALL_MATMUL_MODE(SUFFIX, T, M, RESIDUAL, residual)
#define SMALL_MATMUL(SUFFIX, T)                                                                      \
    SMALL_MATMUL_M(SUFFIX, T, 1) SMALL_MATMUL_M(SUFFIX, T, 2) SMALL_MATMUL_M(SUFFIX, T, 4) SMALL_MATMUL_M(SUFFIX, T, 8)
QS_FOR_EACH_DTYPE(SMALL_MATMUL)
