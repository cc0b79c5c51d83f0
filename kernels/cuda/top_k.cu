// The best candidates of each row of logits, f32, bf16 or f16 (src/top_k.rs, whose CPU loop is
// the reference): every value at least as large as the row's k-th largest, so that a sampler
// that needs only a row's top k (top-k sampling, greedy after penalties) can be sent those
// instead of the whole vocabulary. NaN and -inf are never candidates. Ties at the k-th value all
// come, so more than k may; a row with fewer than k candidates sends them all.
//
// One block per row, a radix select on the values' order-preserving keys (the f32 bits, the
// sign folded): each pass counts the keys that match the digits chosen so far by their next
// 8 bits in a shared histogram and keeps the digit where the k-th largest falls; the last pass
// writes out every candidate whose key reaches the chosen prefix. A bf16 value's key is fixed
// by its top 16 bits (two passes), an f16's by its top 19 (three), an f32's needs four.
//
// Output per row: `1 + 2 * cap` u32: the number of candidates (which may exceed `cap`: then only
// `cap` were written, in no particular order, and the caller must read the row whole), then
// (id, f32 bits) pairs in the order the threads found them. A row with k = 0 gets count 0.

#include "common.cuh"

namespace {

constexpr int THREADS = 512;  // TOP_K_THREADS in src/top_k.rs
constexpr int BINS = 256;

__device__ __forceinline__ bool is_candidate(float v) { return !isnan(v) && v > -INFINITY; }

// Larger values give larger keys; -0.0 and +0.0 the same one (a tie keeps both, whether the
// reader orders them apart or not).
__device__ __forceinline__ unsigned key_of(float v) {
    const unsigned u = __float_as_uint(v + 0.f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Calls f(i, value) for every value of a row, in 16-byte loads where the row allows it (a
// 152k-entry bf16 row is ~37 loads a thread, not ~300).
template <typename T, typename F>
__device__ __forceinline__ void for_each_value(const T* __restrict__ r, int vocab, F f) {
    constexpr int N = qs::Vec<T>::N;
    if (vocab % N == 0 && reinterpret_cast<uintptr_t>(r) % 16 == 0) {
        for (int base = threadIdx.x * N; base < vocab; base += THREADS * N) {
            float v[N];
            qs::load_vec<T>(r + base, v);
#pragma unroll
            for (int j = 0; j < N; ++j) f(base + j, v[j]);
        }
    } else {
        for (int i = threadIdx.x; i < vocab; i += THREADS) f(i, qs::to_float(r[i]));
    }
}

template <typename T, int PASSES>
__device__ __forceinline__ void top_k_candidates(const T* __restrict__ x, const unsigned* __restrict__ ks,
                                                 unsigned* __restrict__ out, int vocab, int cap) {
    __shared__ unsigned hist[BINS];
    __shared__ unsigned s_prefix, s_remaining, s_count, s_all;
    const size_t row = blockIdx.x;
    const unsigned k = ks[row];
    unsigned* o = out + row * (1 + 2 * (size_t)cap);
    if (k == 0) {  // the same for the whole block
        if (threadIdx.x == 0) o[0] = 0;
        return;
    }
    const T* r = x + row * (size_t)vocab;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_remaining = k;
        s_count = 0;
        s_all = 0;
    }
    unsigned mask = 0;
    for (int pass = 0; pass < PASSES; ++pass) {
        const int shift = 24 - 8 * pass;
        for (int i = threadIdx.x; i < BINS; i += THREADS) hist[i] = 0;
        __syncthreads();
        const unsigned prefix = s_prefix;
        for_each_value(r, vocab, [&](int, float v) {
            const unsigned key = key_of(v);
            if (is_candidate(v) && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFFu], 1u);
        });
        __syncthreads();
        if (threadIdx.x == 0) {
            // The digit where the count from the top reaches what is still wanted.
            const unsigned remaining = s_remaining;
            unsigned above = 0;
            int d = BINS - 1;
            for (; d >= 0; --d) {
                if (above + hist[d] >= remaining) break;
                above += hist[d];
            }
            if (d < 0) {
                // Only possible in the first pass: fewer than k candidates in the row.
                s_all = 1;
            } else {
                s_prefix = prefix | ((unsigned)d << shift);
                s_remaining = remaining - above;
            }
        }
        __syncthreads();
        if (s_all) break;
        mask |= 0xFFu << shift;
    }
    // The k-th largest key has this prefix; its lower bits (zero here) are the same for every
    // value of the type, and any key with a larger prefix is larger.
    const unsigned threshold = s_all ? 0u : s_prefix;
    for_each_value(r, vocab, [&](int i, float v) {
        if (!is_candidate(v) || key_of(v) < threshold) return;
        const unsigned at = atomicAdd(&s_count, 1u);
        if (at < (unsigned)cap) {
            o[1 + 2 * (size_t)at] = (unsigned)i;
            o[2 + 2 * (size_t)at] = __float_as_uint(v);
        }
    });
    __syncthreads();
    if (threadIdx.x == 0) o[0] = s_count;
}

}  // namespace

#define TOP_K(SUFFIX, T, PASSES)                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                  \
        top_k_candidates_##SUFFIX(const T* __restrict__ x, const unsigned* __restrict__ ks,                \
                                  unsigned* __restrict__ out, int vocab, int cap) {                        \
        top_k_candidates<T, PASSES>(x, ks, out, vocab, cap);                                               \
    }

TOP_K(f32, float, 4)
TOP_K(bf16, __nv_bfloat16, 2)
TOP_K(f16, __half, 3)
