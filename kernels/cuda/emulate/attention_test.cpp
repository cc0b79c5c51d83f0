// paged_attention.cu, run by emu.h, against attention in double over the same rounded inputs:
// the cases of kernels/tests/gpu.rs, shortened (the emulator runs ~1 µs per thread switch).
#include "emu.h"

// Built twice by run.sh: the f32-arithmetic kernel, and with -DMMA the tensor-core one.
#ifdef MMA
#include "../paged_attention_mma.cu"
#else
#include "../paged_attention.cu"
#endif

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

struct Case {
    const char* name;
    std::vector<std::pair<int, int>> seqs;  // (tokens already cached, new tokens)
    int heads, kv_heads, d, block_size;
    int num_sms;  // few SMs make short sequences split
    int graph_len = 0;  // splits sized for this many keys, as a CUDA graph's template (0: the batch's longest)
};

template <typename T> T round_to(float f);
template <> float round_to<float>(float f) { return f; }
template <> __nv_bfloat16 round_to<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }
template <> __half round_to<__half>(float f) { return __float2half_rn(f); }

// Mirrors splits(), MIN_KEYS_PER_SPLIT and MAX_SPLITS in src/paged_attention/cuda.rs.
constexpr int MIN_SPLIT = 32, MAX_SPLITS = 64;
static int splits(int num_blocks, int max_seq_len, int num_sms) {
    const int target = num_sms * 4;
    num_blocks = std::max(num_blocks, 1);
    const int wanted = num_blocks >= target ? 1 : std::min(MAX_SPLITS, (target + num_blocks - 1) / num_blocks);
    return std::max(1, std::min(wanted, (max_seq_len + MIN_SPLIT - 1) / MIN_SPLIT));
}

template <typename T>
using Kernel = void (*)(const T*, const T*, const T*, T*, float*, float*, uint32_t*, const uint32_t*,
                        const uint32_t*, const uint32_t*, const uint32_t*, int, int, int, int, int, int, float);

// Largest |kernel - reference| over all outputs (NaN counts as 1e9). A case with a graph_len
// must also give, bit for bit, what the launch sized for its own longest sequence gives.
template <typename T> double max_error(const Case& c, Kernel<T> kernel) {
    std::mt19937 rng(42);
    std::normal_distribution<float> normal;
    const int D = c.d, bs = c.block_size, H = c.heads, KVH = c.kv_heads, G = H / KVH;
    const size_t row = (size_t)KVH * D;  // elements per cache slot
    std::vector<int> blocks;
    int max_blocks = 0, num_blocks = 3;
    for (auto [cached, n] : c.seqs) {
        blocks.push_back((cached + n + bs - 1) / bs);
        max_blocks = std::max(max_blocks, blocks.back());
        num_blocks += blocks.back();
    }
    std::vector<uint32_t> free_blocks(num_blocks), tables(c.seqs.size() * max_blocks, 0);
    for (int i = 0; i < num_blocks; ++i) free_blocks[i] = i;
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
    for (size_t s = 0; s < c.seqs.size(); ++s)
        for (int b = 0; b < blocks[s]; ++b) {
            tables[s * max_blocks + b] = free_blocks.back();
            free_blocks.pop_back();
        }
    std::vector<uint32_t> query_start_loc{0}, seq_lens;
    for (auto [cached, n] : c.seqs) {
        query_start_loc.push_back(query_start_loc.back() + n);
        seq_lens.push_back(cached + n);
    }
    const int num_tokens = query_start_loc.back();
    std::vector<T> k_cache(num_blocks * bs * row, round_to<T>(0)), v_cache = k_cache;
    std::vector<std::vector<float>> K(c.seqs.size()), V(c.seqs.size());  // (seq_len, KVH, D)
    for (size_t s = 0; s < c.seqs.size(); ++s) {
        for (uint32_t p = 0; p < seq_lens[s]; ++p) {
            const size_t slot = (size_t)tables[s * max_blocks + p / bs] * bs + p % bs;
            for (size_t e = 0; e < row; ++e) {
                const T k = round_to<T>(normal(rng)), v = round_to<T>(normal(rng));
                k_cache[slot * row + e] = k;
                v_cache[slot * row + e] = v;
                K[s].push_back(qs::to_float(k));
                V[s].push_back(qs::to_float(v));
            }
        }
    }
    std::vector<T> q((size_t)num_tokens * H * D);
    for (auto& x : q) x = round_to<T>(normal(rng));
    std::vector<uint32_t> tiles;  // as DeviceMetadata's Packed::tiles
    for (size_t s = 0; s < c.seqs.size(); ++s)
        for (uint32_t r = 0; r < (query_start_loc[s + 1] - query_start_loc[s]) * G; r += ROWS) tiles.insert(tiles.end(), {(uint32_t)s, r});
    const int num_tiles = tiles.size() / 2;
    const int longest = *std::max_element(seq_lens.begin(), seq_lens.end());
    const float scale = 1.f / std::sqrt((float)D);
    auto run = [&](int num_splits) {
        std::vector<T> out((size_t)num_tokens * H * D, round_to<T>(NAN));
        const size_t partial = num_splits > 1 ? (size_t)num_splits * num_tokens * H : 1;
        std::vector<float> part_o(partial * D, NAN), part_ml(partial * 2, NAN);
        std::vector<uint32_t> counters((size_t)num_tiles * KVH, 0);
        emu::launch({(unsigned)num_tiles, (unsigned)KVH, (unsigned)num_splits}, {THREADS}, [&] {
            kernel(q.data(), k_cache.data(), v_cache.data(), out.data(), part_o.data(), part_ml.data(), counters.data(),
                   query_start_loc.data(), seq_lens.data(), tables.data(), tiles.data(), num_tokens, H, KVH, bs, max_blocks,
                   MIN_SPLIT, scale);
        });
        // The merging block sets its counter back, so the next launch (a graph's) starts at zero.
        if (std::any_of(counters.begin(), counters.end(), [](uint32_t c) { return c != 0; })) {
            std::printf("  a split counter was left non-zero  FAILED ");
            std::fill(out.begin(), out.end(), round_to<T>(NAN));
        }
        return out;
    };
    const int num_splits = splits(num_tiles * KVH, std::max(c.graph_len, longest), c.num_sms);
    const std::vector<T> out = run(num_splits);
    if (c.graph_len) {
        const int own = splits(num_tiles * KVH, longest, c.num_sms);
        const std::vector<T> step = run(own);
        if (std::memcmp(step.data(), out.data(), out.size() * sizeof(T)) != 0) {
            std::printf("  %d splits differ from the step's own %d  FAILED ", num_splits, own);
            return 1e9;
        }
        std::printf("  same bits as its own %d splits;", own);
    }

    double worst = 0;
    for (size_t s = 0; s < c.seqs.size(); ++s) {
        const int n = query_start_loc[s + 1] - query_start_loc[s];
        for (int i = 0; i < n; ++i) {
            const int pos = seq_lens[s] - n + i, t = query_start_loc[s] + i;
            for (int h = 0; h < H; ++h) {
                const size_t kv = (size_t)(h / G) * D;
                std::vector<double> p(pos + 1);
                double max = -1e300, sum = 0;
                for (int j = 0; j <= pos; ++j) {
                    double dot = 0;
                    for (int e = 0; e < D; ++e) dot += (double)qs::to_float(q[((size_t)t * H + h) * D + e]) * K[s][j * row + kv + e];
                    max = std::max(max, p[j] = dot * scale);
                }
                for (auto& x : p) sum += x = std::exp(x - max);
                for (int e = 0; e < D; ++e) {
                    double o = 0;
                    for (int j = 0; j <= pos; ++j) o += p[j] / sum * V[s][j * row + kv + e];
                    const double got = qs::to_float(out[((size_t)t * H + h) * D + e]);
                    worst = std::max(worst, std::isnan(got) ? 1e9 : std::abs(got - o));
                }
            }
        }
    }
    std::printf("  %d tiles x %d kv heads x %d splits: ", num_tiles, KVH, num_splits);
    return worst;
}

template <typename T> bool check(const Case& c, const char* dtype, double tolerance, Kernel<T> k64, Kernel<T> k128) {
    const double err = max_error<T>(c, c.d == 64 ? k64 : k128);
    const bool ok = err < tolerance;
    std::printf("%s max error %.3g%s\n", dtype, err, ok ? "" : "  FAILED");
    std::fflush(stdout);
    return ok;
}

int main(int argc, char** argv) {
    const std::vector<Case> cases = {
        // A prefill, a chunk after a prefix ending mid-block, two decodes (Qwen2.5-0.5B heads).
        {"mixed batch, head_dim 64", {{0, 37}, {21, 12}, {50, 1}, {0, 1}}, 14, 2, 64, 16, 132},
        {"mixed batch, head_dim 128, blocks of 4", {{5, 3}, {0, 100}, {130, 1}}, 28, 4, 128, 4, 132},
        {"no grouping", {{0, 20}, {7, 1}}, 8, 8, 128, 16, 132},
        {"decodes split unevenly (8 SMs)", {{1000, 1}, {601, 1}, {40, 1}}, 14, 2, 64, 16, 8},
        {"one long decode, split", {{3000, 1}}, 28, 4, 128, 16, 132},
        {"prefill chunk after a prefix, split", {{500, 40}}, 16, 8, 128, 16, 132},
        // Most splits past every sequence's end: they must add nothing.
        {"decodes split for 8192 keys (a CUDA graph)", {{300, 1}, {90, 1}}, 14, 2, 64, 16, 132, 8192},
        // Longer than MAX_SPLITS chunks: longer splits, in the step's launch and the graph's.
        {"a long decode split for 8192 keys", {{3000, 1}, {2100, 1}}, 14, 2, 64, 16, 132, 8192},
        {"one short decode split for 8192 keys", {{40, 1}}, 28, 4, 128, 16, 132, 8192},
        // Eagerly one split (every key in one chunk); the graph's launch merges 256 splits.
        {"a decode within one chunk, split for 8192 keys", {{20, 1}}, 14, 2, 64, 16, 132, 8192},
        {"decodes of a mid-size batch split for 8192 keys", {{500, 1}, {200, 1}, {77, 1}, {1000, 1}}, 28, 4, 128, 16, 12, 8192},
    };
    int failures = 0;
    for (const auto& c : cases) {
        if (argc > 1 && !std::strstr(c.name, argv[1])) continue;
        std::printf("%s\n", c.name);
#ifdef MMA
        // P is rounded to T before it meets V, as FlashAttention does; the bounds are the other
        // kernel's (tests/gpu.rs holds both to the same).
        failures += !check<__nv_bfloat16>(c, "bf16 mma", 1.6e-2, paged_attention_mma_d64_bf16, paged_attention_mma_d128_bf16);
        failures += !check<__half>(c, "f16 mma ", 2e-3, paged_attention_mma_d64_f16, paged_attention_mma_d128_f16);
#else
        failures += !check<float>(c, "f32 ", 1e-5, paged_attention_d64_f32, paged_attention_d128_f32);
        // The output's rounding: a unit in the last place at |out| < 4 (as in tests/gpu.rs).
        failures += !check<__nv_bfloat16>(c, "bf16", 1.6e-2, paged_attention_d64_bf16, paged_attention_d128_bf16);
        failures += !check<__half>(c, "f16 ", 2e-3, paged_attention_d64_f16, paged_attention_d128_f16);
#endif
    }
    std::printf("%d failures\n", failures);
    return failures != 0;
}
