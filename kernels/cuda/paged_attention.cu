// Causal attention of a flattened batch of new tokens over a paged KV cache: one kernel family
// for prefill, chunked prefill after a cached prefix, and decode (the semantics of the CPU op in
// src/paged_attention.rs, which is the reference).
//
// Shapes (T = float, __nv_bfloat16 or __half; D = head_dim, 64 or 128):
//   q                (num_tokens, num_heads, D)
//   k_cache, v_cache (num_blocks, block_size, num_kv_heads, D)
//   out              (num_tokens, num_heads, D)
//   query_start_loc  (num_seqs + 1) u32, seq_lens (num_seqs) u32,
//   block_tables     (num_seqs, max_blocks_per_seq) u32: see AttentionMetadata
//   tiles            (num_tiles, 2) u32: (seq, first row) of each tile of ROWS query rows, where
//                    sequence s's rows are its new tokens times the `group` query heads sharing
//                    a KV head: row = token_in_seq * group + head_in_group
//   part_o           (num_splits, num_tokens, num_heads, D) f32, part_ml (..., 2) f32,
//                    counters (num_tiles * num_kv_heads) u32: used only when num_splits > 1
//
// Grid (num_tiles, num_kv_heads, num_splits), THREADS threads. A block computes ROWS query rows
// of one KV head against keys [split * split_size, (split + 1) * split_size), cut at the tile's
// causal end, where each sequence's split_size divides its own keys among the splits
// (rounded up to whole chunks, at least min_split): an online softmax over chunks of KEYS keys
// staged in shared memory, so no score matrix exists. The next chunk's loads are issued while
// this one is scored, and the tile's rows are dealt round the warps. Every K/V row a block
// loads serves all its rows (the GQA group and several tokens). With one split the block
// writes the output. With several (flash-decoding: few, long sequences would otherwise leave
// most of the GPU idle) each split that has keys writes its unnormalised output and
// (max, sum) per row, and the last of them to finish merges them into the output: `counters`
// (one per (tile, KV head), zero before the launch) count the finished splits, and the last
// block sets its counter back to zero, so a CUDA graph can replay the launch. Splits past the
// tile's keys (most of a graph's launch) return at once.
//
// The host picks num_splits = min(W, ceil(longest / min_split)), W what fills the GPU (at most
// MAX_SPLITS, 64, in src/paged_attention/cuda.rs). A launch sized for longer sequences than the
// step has (a CUDA graph's, with the same W) gives the step's own bits: either both have the
// same number of splits, or the step's own launch has at most min_split keys per split, so
// every sequence's split_size is min_split in both. The merge sums the splits in split order
// whichever block does it, skipping those without keys for a row, and the unsplit output is
// acc / l, as the merge computes it.
//
// Scores are kept in log2 units (q is pre-scaled by scale * log2(e)) so exponentials are exp2.

#include "attention_tile.cuh"

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int ROWS_PER_WARP = 4;
constexpr int ROWS = WARPS * ROWS_PER_WARP;  // ATTENTION_TILE_ROWS in src/device_metadata.rs
constexpr int KEYS = 32;                     // keys per chunk: one per lane
constexpr int MERGE_LOADS = 4;               // splits whose partial outputs the merge loads at once
// Resident blocks per SM the registers must allow (the host aims at 4: BLOCKS_PER_SM in
// src/paged_attention/cuda.rs); more at head_dim 64, whose blocks use half the shared memory.
constexpr int min_blocks(int d) { return d == 64 ? 6 : 4; }
constexpr float LOG2E = 1.4426950408889634f;

template <typename T, int D>
__device__ __forceinline__ void attention_tile(ATTENTION_PARAMS(T)) {
    constexpr int N = qs::Vec<T>::N;  // elements per 16-byte load
    constexpr int DL = D / 32;        // output elements per lane: lane + 32 * e
    __shared__ __align__(16) float q_s[ROWS][D];
    // Rows padded by one 16-byte vector: lane j reading row j's vector d / 4 (a quarter-warp's
    // 8 lanes at once) meets every bank once. Both are written a vector at a time.
    __shared__ __align__(16) float k_s[KEYS][D + 4];
    __shared__ __align__(16) float v_s[KEYS][D];

    const TileRange tile = tile_range(tiles, query_start_loc, seq_lens, num_heads, num_kv_heads, min_split, ROWS, KEYS);
    // A split past this tile's keys (most of a CUDA graph's launch) has nothing to add.
    // Block-uniform, before any barrier. (Split 0 always has keys.)
    if (tile.kv_begin >= tile.kv_end) return;
    const int kvh = tile.kvh, group = tile.group, q_start = tile.q_start, first_pos = tile.first_pos;
    const int num_rows = tile.num_rows, row0 = tile.row0, kv_begin = tile.kv_begin, kv_end = tile.kv_end;
    const uint32_t* table = block_tables + (size_t)tile.seq * max_blocks_per_seq;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    for (int v = threadIdx.x; v < ROWS * (D / N); v += THREADS) {
        const int r = v / (D / N), d = (v % (D / N)) * N;
        float vals[N];
        if (r < num_rows) {
            const int row = row0 + r;
            const int token = q_start + row / group, head = kvh * group + row % group;
            qs::load_vec(q + ((size_t)token * num_heads + head) * D + d, vals);
        } else {
#pragma unroll
            for (int e = 0; e < N; ++e) vals[e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < N; ++e) q_s[r][d + e] = vals[e] * (scale * LOG2E);
    }

    // This warp's rows: warp + WARPS * i, dealt round so that a decode tile's few rows (a GQA
    // group of 7 in 16) keep every warp busy. pos = -1 marks a row past the tile's end.
    int pos[ROWS_PER_WARP];
    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][DL];
#pragma unroll
    for (int i = 0; i < ROWS_PER_WARP; ++i) {
        const int r = warp + WARPS * i;
        pos[i] = r < num_rows ? first_pos + (row0 + r) / group : -1;
        m[i] = -INFINITY;
        l[i] = 0.f;
#pragma unroll
        for (int e = 0; e < DL; ++e) acc[i][e] = 0.f;
    }

    const int rows_here = warp < num_rows ? (num_rows - warp + WARPS - 1) / WARPS : 0;
    // Each thread's share of a chunk's K and V rows, as raw 16-byte vectors (zeros past
    // kv_end): the next chunk's loads are issued before this one is scored, so the memory's
    // latency hides behind the arithmetic instead of adding to it chunk after chunk.
    constexpr int LOADS = KEYS * (D / N) / THREADS;
    static_assert(KEYS * (D / N) % THREADS == 0, "a chunk is whole loads per thread");
    uint4 k_raw[LOADS], v_raw[LOADS];
    auto fetch = [&](int c0) {
#pragma unroll
        for (int t = 0; t < LOADS; ++t) {
            const int v = threadIdx.x + t * THREADS;
            const int j = v / (D / N), d = (v % (D / N)) * N, key = c0 + j;
            if (key < kv_end) {
                const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
                const size_t offset = (slot * num_kv_heads + kvh) * D + d;
                k_raw[t] = *reinterpret_cast<const uint4*>(k_cache + offset);
                v_raw[t] = *reinterpret_cast<const uint4*>(v_cache + offset);
            } else {
                k_raw[t] = v_raw[t] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
    fetch(kv_begin);
    for (int c0 = kv_begin; c0 < kv_end; c0 += KEYS) {
        __syncthreads();  // q_s is complete, and every warp is done with the previous chunk
#pragma unroll
        for (int t = 0; t < LOADS; ++t) {
            const int v = threadIdx.x + t * THREADS;
            const int j = v / (D / N), d = (v % (D / N)) * N;
            float kv[N], vv[N];
            qs::unpack_vec<T>(k_raw[t], kv);
            qs::unpack_vec<T>(v_raw[t], vv);
#pragma unroll
            for (int e = 0; e < N; e += 4) {
                *reinterpret_cast<float4*>(&k_s[j][d + e]) = make_float4(kv[e], kv[e + 1], kv[e + 2], kv[e + 3]);
                *reinterpret_cast<float4*>(&v_s[j][d + e]) = make_float4(vv[e], vv[e + 1], vv[e + 2], vv[e + 3]);
            }
        }
        __syncthreads();
        if (c0 + KEYS < kv_end) fetch(c0 + KEYS);
        // Rows past the tile's end (a decode tile holds one token's GQA group, often fewer
        // than ROWS rows) are not scored: a warp whose rows all are only helps load.
        // Warp-uniform; the barriers stay outside.
        if (rows_here == 0) continue;

        // Lane j scores key c0 + j against each of the warp's rows.
        float s[ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; ++i) s[i] = 0.f;
#pragma unroll 4
        for (int d = 0; d < D; d += 4) {
            const float4 kk = *reinterpret_cast<const float4*>(&k_s[lane][d]);
            const float k0 = kk.x, k1 = kk.y, k2 = kk.z, k3 = kk.w;
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; ++i) {
                if (i >= rows_here) break;
                const float4 qv = *reinterpret_cast<const float4*>(&q_s[warp + WARPS * i][d]);
                s[i] = fmaf(qv.x, k0, fmaf(qv.y, k1, fmaf(qv.z, k2, fmaf(qv.w, k3, s[i]))));
            }
        }

        // Each row's online-softmax update, then one pass over the chunk's values for all the
        // warp's rows: each value is read from shared memory once, not once per row.
        const int key = c0 + lane;
        float p[ROWS_PER_WARP];
        bool seen[ROWS_PER_WARP];  // warp-uniform: whether the row has seen a key yet
#pragma unroll
        for (int i = 0; i < ROWS_PER_WARP; ++i) {
            p[i] = 0.f;
            seen[i] = false;
            if (i >= rows_here) continue;
            const bool visible = key < kv_end && key <= pos[i];
            const float x = visible ? s[i] : -INFINITY;
            const float m_new = fmaxf(m[i], qs::warp_max(x));
            if (m_new == -INFINITY) continue;
            seen[i] = true;
            p[i] = visible ? exp2f(x - m_new) : 0.f;
            const float correction = exp2f(m[i] - m_new);  // 0 while m[i] is -inf
            l[i] = l[i] * correction + qs::warp_sum(p[i]);
            m[i] = m_new;
#pragma unroll
            for (int e = 0; e < DL; ++e) acc[i][e] *= correction;
        }
#pragma unroll 8
        for (int j = 0; j < KEYS; ++j) {
            float vj[DL];
#pragma unroll
            for (int e = 0; e < DL; ++e) vj[e] = v_s[j][lane + 32 * e];
#pragma unroll
            for (int i = 0; i < ROWS_PER_WARP; ++i) {
                if (i >= rows_here) break;
                const float pj = __shfl_sync(0xffffffffu, p[i], j);
                if (!seen[i]) continue;
#pragma unroll
                for (int e = 0; e < DL; ++e) acc[i][e] = fmaf(pj, vj[e], acc[i][e]);
            }
        }
    }

    finish_rows<T, D, ROWS_PER_WARP, WARPS, MERGE_LOADS>(acc, m, l, rows_here, tile, out, part_o, part_ml, counters,
                                                          num_tokens, num_heads);
}

}  // namespace

#define ATTENTION(SUFFIX, T, D)                                          \
    extern "C" __global__ void __launch_bounds__(THREADS, min_blocks(D)) \
        paged_attention_d##D##_##SUFFIX(ATTENTION_PARAMS(T)) {           \
        attention_tile<T, D>(ATTENTION_ARGS);                            \
    }
#define ATTENTION_ALL_D(SUFFIX, T) ATTENTION(SUFFIX, T, 64) ATTENTION(SUFFIX, T, 128)
QS_FOR_EACH_DTYPE(ATTENTION_ALL_D)
