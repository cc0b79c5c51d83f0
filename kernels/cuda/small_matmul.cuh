// The core of the few-rows matmuls (small_matmul.cu, qkv_matmul.cu): a warp's sums of a few
// rows of w against the (at most 8) rows of x, reading w at memory speed.
#pragma once

#include "common.cuh"

namespace qs {

// Loads of w a lane issues before using them.
constexpr int LOADS_IN_FLIGHT = 8;

// The R rows `w_rows[r]` of w (k elements each, 16-byte aligned) against rows 0..m-1 of x (m <=
// M; rows k elements apart), each x element times g's (the norm's weight) when NORMED. Called
// by a whole warp; every lane ends with the totals: acc[r][i] = sum_c x[i][c] (* g[c]) *
// w_rows[r][c] and, when NORMED, sq[i] = sum_c x[i][c]². Lane l takes the 16-byte vectors l,
// l + 32, ... of each row and issues LOADS_IN_FLIGHT loads of w before using any; the sums
// are then one lane-strided partial each and a warp sum, in the same order for any m.
template <typename T, int M, int R, bool NORMED>
__device__ __forceinline__ void warp_row_sums(const T* __restrict__ x, const T* const (&w_rows)[R], const T* __restrict__ g,
                                              int m, int k, float (&acc)[R][M], float (&sq)[M]) {
    constexpr int N = Vec<T>::N;
    constexpr int U = LOADS_IN_FLIGHT / R;  // vectors per row a lane loads per round
    const int lane = threadIdx.x % 32;
    const int chunks = k / N;
#pragma unroll
    for (int i = 0; i < M; ++i) {
        sq[i] = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][i] = 0.f;
    }
    for (int c0 = lane; c0 < chunks; c0 += 32 * U) {
        uint4 raw[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int c = c0 + u * 32;
                raw[u][r] = c < chunks ? load_stream(w_rows[r] + (size_t)c * N) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + u * 32;
            if (c >= chunks) break;
            float wv[R][N], gv[N];
#pragma unroll
            for (int r = 0; r < R; ++r) unpack_vec<T>(raw[u][r], wv[r]);
            if constexpr (NORMED) load_vec(g + (size_t)c * N, gv);
#pragma unroll
            for (int i = 0; i < M; ++i) {
                if (i >= m) break;  // uniform
                float xv[N];
                load_vec(x + (size_t)i * k + (size_t)c * N, xv);
                if constexpr (NORMED) {
#pragma unroll
                    for (int e = 0; e < N; ++e) {
                        sq[i] = fmaf(xv[e], xv[e], sq[i]);
                        xv[e] *= gv[e];
                    }
                }
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                    for (int e = 0; e < N; ++e) acc[r][i] = fmaf(wv[r][e], xv[e], acc[r][i]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
        if constexpr (NORMED) sq[i] = warp_sum(sq[i]);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][i] = warp_sum(acc[r][i]);
    }
}

}  // namespace qs
