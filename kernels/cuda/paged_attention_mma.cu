// Paged attention on the tensor cores (mma.m16n8k16, bf16 and f16): the semantics, grid, tiles,
// splits and ending of paged_attention.cu (see its header), with a tile's 16 query rows as one
// mma row block. The default for bf16/f16 on sm_80 and later (QWEN_SERVE_CUDA_MMA_ATTENTION=0
// takes the other kernel, src/paged_attention/cuda.rs): 6-16% faster on an H200 at 1 to 256
// streams (2026-11-27).
//
// A chunk of KEYS keys is staged in shared memory as T; warp w scores keys [16w, 16w + 16) of
// it against all 16 rows (S = Q K^T: two 16 x 8 tiles, D / 16 steps; q stays in registers as
// A fragments, exactly its T values, the scale applied to the f32 scores), keeps its own
// online softmax per row, and adds P V (P rounded to T, as FlashAttention does) into its own
// 16 x D output. Needs sm_80 or later (the host checks). After the last chunk the warps' states are merged in warp order through
// shared memory, and attention_tile.cuh's ending takes the tile's rows from there. Scores are
// in log2 units, as in the other kernel.

#include "attention_tile.cuh"

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr int ROWS = 16;                   // ATTENTION_TILE_ROWS: one mma row block
constexpr int WARP_KEYS = 16;              // keys a warp takes of each chunk: one k step of P V
constexpr int KEYS = WARPS * WARP_KEYS;    // keys per chunk
constexpr int SPLIT_KEYS = 32;             // split sizes are whole multiples, as in the other kernel
constexpr int PAD = 8;                     // elements past each staged row: 16 bytes
constexpr int MERGE_LOADS = 4;
constexpr float LOG2E = 1.4426950408889634f;

template <typename T, int D>
__device__ __forceinline__ void attention_mma(ATTENTION_PARAMS(T)) {
    constexpr int N = qs::Vec<T>::N;  // elements per 16-byte load
    constexpr int KSTEPS = D / 16;    // mma steps over the head dimension
    constexpr int NT = D / 8;         // 8-column tiles of the output
    constexpr int RPW = ROWS / WARPS; // rows per warp in the ending's layout
    __shared__ __align__(16) T k_s[KEYS][D + PAD];
    __shared__ __align__(16) T v_s[KEYS][D + PAD];
    __shared__ float ml_s[WARPS][ROWS][2];
    __shared__ __align__(16) float o_s[ROWS][D + 4];

    const TileRange tile = tile_range(tiles, query_start_loc, seq_lens, num_heads, num_kv_heads, min_split, ROWS, SPLIT_KEYS);
    if (tile.kv_begin >= tile.kv_end) return;  // block-uniform, before any barrier
    const uint32_t* table = block_tables + (size_t)tile.seq * max_blocks_per_seq;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;  // the lane's fragment rows g, g + 8 and column pair 2t

    // q's A fragments, straight from memory (rows past the tile's end are zero).
    uint32_t qa[KSTEPS][4];
    int pos[2];  // each of the lane's two rows' position; -1 past the tile's end
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int rr = g + 8 * h;
        const bool real = rr < tile.num_rows;
        const int row = tile.row0 + rr;
        pos[h] = real ? tile.first_pos + row / tile.group : -1;
        const T* q_row = real ? q + ((size_t)(tile.q_start + row / tile.group) * num_heads + tile.kvh * tile.group + row % tile.group) * D : q;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            const T zero = qs::from_float<T>(0.f);
            const int c = ks * 16 + 2 * t;
            qa[ks][h] = real ? qs::pair(q_row[c], q_row[c + 1]) : qs::pair(zero, zero);
            qa[ks][h + 2] = real ? qs::pair(q_row[c + 8], q_row[c + 9]) : qs::pair(zero, zero);
        }
    }

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float o[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[nt][i] = 0.f;

    for (int c0 = tile.kv_begin; c0 < tile.kv_end; c0 += KEYS) {
        __syncthreads();  // every warp is done with the previous chunk
        for (int v = threadIdx.x; v < KEYS * (D / N); v += THREADS) {
            const int j = v / (D / N), d = (v % (D / N)) * N, key = c0 + j;
            uint4 kk = make_uint4(0u, 0u, 0u, 0u), vv = kk;
            if (key < tile.kv_end) {
                const size_t slot = (size_t)table[key / block_size] * block_size + key % block_size;
                const size_t offset = (slot * num_kv_heads + tile.kvh) * D + d;
                kk = *reinterpret_cast<const uint4*>(k_cache + offset);
                vv = *reinterpret_cast<const uint4*>(v_cache + offset);
            }
            *reinterpret_cast<uint4*>(&k_s[j][d]) = kk;
            *reinterpret_cast<uint4*>(&v_s[j][d]) = vv;
        }
        __syncthreads();
        const int kw = warp * WARP_KEYS;  // the warp's first key in the chunk
        if (c0 + kw >= tile.kv_end) continue;  // warp-uniform: no keys of this warp's here

        // S for keys kw + 8 * nt + (2t, 2t + 1), rows g (s[nt][0..1]) and g + 8 (s[nt][2..3]).
        float s[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) s[nt][i] = 0.f;
            const T* key_row = &k_s[kw + 8 * nt + g][0];
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
                const uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(key_row + ks * 16 + 2 * t),
                                       *reinterpret_cast<const uint32_t*>(key_row + ks * 16 + 8 + 2 * t)};
                qs::mma_16816<T>(s[nt], qa[ks], b);
            }
        }
        // Each row's online softmax over the warp's 16 keys (a row's values lie in the four
        // lanes of its group).
        float p[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float big = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int key = c0 + kw + 8 * nt + 2 * t + e;
                    const bool visible = key < tile.kv_end && key <= pos[h];
                    float& x = s[nt][2 * h + e];
                    x = visible ? x * (scale * LOG2E) : -INFINITY;
                    big = fmaxf(big, x);
                }
            big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, 1));
            big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, 2));
            const float m_new = fmaxf(m[h], big);
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    // The f32 weights are summed; V meets them rounded to T. (Summing the rounded
                    // ones instead gave larger errors in the emulator: bf16 0.0097 against 0.0080.)
                    const float x = s[nt][2 * h + e];
                    p[nt][2 * h + e] = x == -INFINITY ? 0.f : exp2f(x - m_new);
                    sum += p[nt][2 * h + e];
                }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float correction = m[h] == -INFINITY ? 0.f : exp2f(m[h] - m_new);
            if (m_new != -INFINITY) {
                l[h] = l[h] * correction + sum;
                m[h] = m_new;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    o[nt][2 * h] *= correction;
                    o[nt][2 * h + 1] *= correction;
                }
            }
        }
        // P as an A fragment (16 rows x the warp's 16 keys), then O += P V, 8 columns a step.
        const uint32_t pa[4] = {qs::pack2<T>(p[0][0], p[0][1]), qs::pack2<T>(p[0][2], p[0][3]),
                                qs::pack2<T>(p[1][0], p[1][1]), qs::pack2<T>(p[1][2], p[1][3])};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int col = 8 * nt + g;
            const uint32_t b[2] = {qs::pair(v_s[kw + 2 * t][col], v_s[kw + 2 * t + 1][col]),
                                   qs::pair(v_s[kw + 2 * t + 8][col], v_s[kw + 2 * t + 9][col])};
            qs::mma_16816<T>(o[nt], pa, b);
        }
    }

    // The warps' states, merged in warp order: M = max m_w, L = sum 2^(m_w - M) l_w,
    // O = sum 2^(m_w - M) o_w.
    if (t == 0) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            ml_s[warp][g + 8 * h][0] = m[h];
            ml_s[warp][g + 8 * h][1] = l[h];
        }
    }
    __syncthreads();
    float weight[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float big = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) big = fmaxf(big, ml_s[w][g + 8 * h][0]);
        weight[h] = m[h] == -INFINITY ? 0.f : exp2f(m[h] - big);
    }
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
        if (warp == w) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    float& dst = o_s[g + 8 * (i / 2)][8 * nt + 2 * t + (i % 2)];
                    const float x = weight[i / 2] * o[nt][i];
                    dst = w == 0 ? x : dst + x;
                }
        }
        __syncthreads();
    }
    // The ending's layout: this warp's rows warp + WARPS * i, dimension lane + 32 * e.
    float acc[RPW][D / 32], mr[RPW], lr[RPW];
    const int rows_here = warp < tile.num_rows ? (tile.num_rows - warp + WARPS - 1) / WARPS : 0;
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
        const int row = warp + WARPS * i;
        float big = -INFINITY, sum = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) big = fmaxf(big, ml_s[w][row][0]);
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const float m_w = ml_s[w][row][0];
            sum += m_w == -INFINITY ? 0.f : exp2f(m_w - big) * ml_s[w][row][1];
        }
        mr[i] = big;
        lr[i] = sum;
#pragma unroll
        for (int e = 0; e < D / 32; ++e) acc[i][e] = o_s[row][lane + 32 * e];
    }
    finish_rows<T, D, RPW, WARPS, MERGE_LOADS>(acc, mr, lr, rows_here, tile, out, part_o, part_ml, counters, num_tokens, num_heads);
}

}  // namespace

#define ATTENTION_MMA(SUFFIX, T, D)                                \
    extern "C" __global__ void __launch_bounds__(THREADS)          \
        paged_attention_mma_d##D##_##SUFFIX(ATTENTION_PARAMS(T)) { \
        attention_mma<T, D>(ATTENTION_ARGS);                       \
    }
ATTENTION_MMA(bf16, __nv_bfloat16, 64)
ATTENTION_MMA(bf16, __nv_bfloat16, 128)
ATTENTION_MMA(f16, __half, 64)
ATTENTION_MMA(f16, __half, 128)
