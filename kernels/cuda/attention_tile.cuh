// What the paged-attention kernels share (paged_attention.cu, whose header describes the
// layout, the splits and the merge): a block's tile and key range, and its ending — the output
// of an unsplit launch, or a split's partials and, by the last split to finish, their merge.
#pragma once

#include "common.cuh"

// The attention kernels' parameters, the same for both and in this order (the host launches
// either with one argument list: src/paged_attention/cuda.rs), and the call passing them on.
#define ATTENTION_PARAMS(T)                                                                        \
    const T *__restrict__ q, const T *__restrict__ k_cache, const T *__restrict__ v_cache,          \
        T *__restrict__ out, float *__restrict__ part_o, float *__restrict__ part_ml,               \
        uint32_t *__restrict__ counters, const uint32_t *__restrict__ query_start_loc,              \
        const uint32_t *__restrict__ seq_lens, const uint32_t *__restrict__ block_tables,           \
        const uint32_t *__restrict__ tiles, int num_tokens, int num_heads, int num_kv_heads,        \
        int block_size, int max_blocks_per_seq, int min_split, float scale
#define ATTENTION_ARGS                                                                             \
    q, k_cache, v_cache, out, part_o, part_ml, counters, query_start_loc, seq_lens, block_tables,   \
        tiles, num_tokens, num_heads, num_kv_heads, block_size, max_blocks_per_seq, min_split, scale

namespace {

// A block's tile (blockIdx.x) of one KV head (blockIdx.y) and its split (blockIdx.z) of the
// tile's keys.
struct TileRange {
    int kvh, split, num_splits, seq, row0, group, q_start, first_pos, num_rows;
    int split_size;  // keys of each split of this sequence
    int kv_begin;    // this split's first key
    int tile_end;    // past the tile's last row's own key
    int kv_end;      // past this split's last key the tile sees
};

// Tiles of `rows` query rows; split sizes are whole chunks of `keys`, at least `min_split`.
__device__ __forceinline__ TileRange tile_range(const uint32_t* __restrict__ tiles, const uint32_t* __restrict__ query_start_loc,
                                                const uint32_t* __restrict__ seq_lens, int num_heads, int num_kv_heads,
                                                int min_split, int rows, int keys) {
    TileRange r;
    r.kvh = blockIdx.y;
    r.split = blockIdx.z;
    r.num_splits = gridDim.z;
    r.seq = tiles[2 * blockIdx.x];
    r.row0 = tiles[2 * blockIdx.x + 1];
    r.group = num_heads / num_kv_heads;
    r.q_start = query_start_loc[r.seq];
    const int q_len = query_start_loc[r.seq + 1] - r.q_start;
    r.first_pos = (int)seq_lens[r.seq] - q_len;
    r.num_rows = min(rows, q_len * r.group - r.row0);
    const int per_split = ((int)seq_lens[r.seq] + r.num_splits - 1) / r.num_splits;
    r.split_size = max(min_split, (per_split + keys - 1) / keys * keys);
    r.kv_begin = r.split * r.split_size;
    r.tile_end = r.first_pos + (r.row0 + r.num_rows - 1) / r.group + 1;
    r.kv_end = min(r.tile_end, r.kv_begin + r.split_size);
    return r;
}

// The block's ending, from each warp's rows warp + WARPS * i (i < rows_here) holding the
// online softmax's max m[i] (log2 units), sum l[i] and unnormalised output acc[i][e] at
// dimension lane + 32 * e. Unsplit: writes the output. Split: writes this split's partials;
// the last split of the (tile, KV head) to finish merges every split's, in split order (the
// same bits whichever block that is), and sets the counter back to zero for the next launch.
template <typename T, int D, int RPW, int WARPS, int MERGE_LOADS>
__device__ __forceinline__ void finish_rows(const float (&acc)[RPW][D / 32], const float (&m)[RPW], const float (&l)[RPW],
                                            int rows_here, const TileRange& r, T* __restrict__ out, float* __restrict__ part_o,
                                            float* __restrict__ part_ml, uint32_t* __restrict__ counters, int num_tokens,
                                            int num_heads) {
    constexpr int DL = D / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // (token, head) of each of the warp's rows: an index of `out` and of a split's partials.
    size_t token_head[RPW];
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int row = r.row0 + warp + WARPS * i;
        token_head[i] = (size_t)(r.q_start + row / r.group) * num_heads + r.kvh * r.group + row % r.group;
    }
    if (r.num_splits == 1) {
#pragma unroll
        for (int i = 0; i < RPW; ++i) {
            if (i >= rows_here) break;
#pragma unroll
            for (int e = 0; e < DL; ++e) out[token_head[i] * D + lane + 32 * e] = qs::from_float<T>(l[i] > 0.f ? acc[i][e] / l[i] : 0.f);
        }
        return;
    }

    const size_t split_stride = (size_t)num_tokens * num_heads;  // from one split's partials to the next's
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        if (i >= rows_here) break;
        const size_t p = r.split * split_stride + token_head[i];
        // A row without keys in this split (an early token of a prefill chunk) has only its
        // (max, sum) written: the merge never reads its output (warp-uniform).
        if (m[i] != -INFINITY) {
#pragma unroll
            for (int e = 0; e < DL; ++e) part_o[p * D + lane + 32 * e] = acc[i][e];
        }
        if (lane == 0) {
            part_ml[2 * p] = m[i];
            part_ml[2 * p + 1] = l[i];
        }
    }

    // The last split of this (tile, KV head) to finish merges them all. As in CUDA's
    // threadFenceReduction sample, each thread's writes are made visible before the count.
    const int active = min(r.num_splits, (r.tile_end + r.split_size - 1) / r.split_size);  // splits with keys
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t* counter = counters + (size_t)blockIdx.x * gridDim.y + r.kvh;
        is_last = atomicAdd(counter, 1u) == (uint32_t)active - 1;
        if (is_last) *counter = 0;  // every split has counted: ready for the next launch
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // out = sum_z 2^(m_z - M) o_z / sum_z 2^(m_z - M) l_z over the splits with keys for the
    // row, added in split order. Other blocks' partials are read from L2 (__ldcg), not L1.
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        if (i >= rows_here) break;
        float big = -INFINITY;
        for (int z = lane; z < active; z += 32) big = fmaxf(big, __ldcg(&part_ml[2 * (z * split_stride + token_head[i])]));
        big = qs::warp_max(big);
        float sum = 0.f, o[DL];
#pragma unroll
        for (int e = 0; e < DL; ++e) o[e] = 0.f;
        for (int z0 = 0; z0 < active; z0 += 32) {
            // Lane j weighs split z0 + j; the warp then adds the splits one after another.
            const int z = z0 + lane;
            float w = 0.f, l_z = 0.f;
            if (z < active) {
                const size_t p = z * split_stride + token_head[i];
                const float m_z = __ldcg(&part_ml[2 * p]);
                l_z = __ldcg(&part_ml[2 * p + 1]);
                w = m_z == -INFINITY ? 0.f : exp2f(m_z - big);
            }
            const int n = min(32, active - z0);
            // MERGE_LOADS splits' outputs are loaded at once, then added in order: the loads
            // do not wait on each other (a split per L2 round trip would be ~0.3 us each).
            for (int j0 = 0; j0 < n; j0 += MERGE_LOADS) {
                float o_j[MERGE_LOADS][DL];
#pragma unroll
                for (int jj = 0; jj < MERGE_LOADS; ++jj) {
                    const int j = j0 + jj;
                    const float w_j = __shfl_sync(0xffffffffu, w, j % 32);
                    const float* o_z = part_o + ((z0 + j) * split_stride + token_head[i]) * D + lane;
#pragma unroll
                    for (int e = 0; e < DL; ++e) o_j[jj][e] = j < n && w_j != 0.f ? __ldcg(o_z + 32 * e) : 0.f;
                }
#pragma unroll
                for (int jj = 0; jj < MERGE_LOADS; ++jj) {
                    const int j = j0 + jj;
                    const float w_j = __shfl_sync(0xffffffffu, w, j % 32), l_j = __shfl_sync(0xffffffffu, l_z, j % 32);
                    if (j >= n || w_j == 0.f) continue;  // warp-uniform
                    sum += w_j * l_j;
#pragma unroll
                    for (int e = 0; e < DL; ++e) o[e] += w_j * o_j[jj][e];
                }
            }
        }
#pragma unroll
        for (int e = 0; e < DL; ++e) out[token_head[i] * D + lane + 32 * e] = qs::from_float<T>(sum > 0.f ? o[e] / sum : 0.f);
    }
}

}  // namespace
