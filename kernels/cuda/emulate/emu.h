// Runs the CUDA kernels' own source on the CPU, to check their logic (indexing, tiling, masking,
// splits, reductions) on machines without a GPU; see run.sh. Not a model of performance, memory
// ordering or PTX: only of what one block's threads compute.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; __syncthreads and warp
// shuffles are barriers that switch fibers. Blocks run one after another, in a shuffled order
// (a kernel may not depend on which block finishes first), so __shared__ can be function
// statics, atomics need no locking and fences nothing. A barrier that not all of a block's (or
// warp's) threads reach aborts.
#pragma once
#include <ucontext.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct uint4 { unsigned x, y, z, w; };
struct float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

namespace emu {
enum State { Runnable, AtBlock, AtWarp, Done };
struct Fiber { ucontext_t ctx; std::vector<char> stack; State state = Runnable; };
inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline unsigned current;
inline const std::function<void()>* body;
inline float warp_buf[32][32];

inline void wait(State s) {
    fibers[current].state = s;
    swapcontext(&fibers[current].ctx, &scheduler);
}

inline void entry() {
    (*body)();
    wait(Done);
}

// Runs the block's fibers until each waits; then releases a warp whose 32 lanes all wait at a
// warp barrier, or the block when every live fiber waits at __syncthreads. Anything else is a
// divergent barrier (undefined on a GPU): reported, and the run aborts.
inline void run_block(unsigned n) {
    for (;;) {
        for (unsigned t = 0; t < n; ++t) {
            if (fibers[t].state != Runnable) continue;
            current = t;
            threadIdx = {t, 0, 0};
            swapcontext(&scheduler, &fibers[t].ctx);
        }
        bool released = false, live = false, all_block = true;
        for (unsigned w = 0; w * 32 < n; ++w) {
            bool all = true;
            for (unsigned l = 0; l < 32; ++l) all &= fibers[w * 32 + l].state == AtWarp;
            if (all) {
                for (unsigned l = 0; l < 32; ++l) fibers[w * 32 + l].state = Runnable;
                released = true;
            }
        }
        for (unsigned t = 0; t < n; ++t) {
            live |= fibers[t].state != Done;
            all_block &= fibers[t].state == AtBlock || fibers[t].state == Done;
        }
        if (!live) return;
        if (released) continue;
        if (all_block) {
            for (auto& f : fibers) if (f.state == AtBlock) f.state = Runnable;
            continue;
        }
        std::fprintf(stderr, "divergent barrier in block (%u,%u,%u)\n", blockIdx.x, blockIdx.y, blockIdx.z);
        std::abort();
    }
}

inline void launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    body = &kernel;
    const unsigned n = block.x;
    fibers.assign(n, Fiber{});
    for (auto& f : fibers) f.stack.resize(1 << 16);
    std::vector<dim3> blocks;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
    static std::mt19937 order(7);
    std::shuffle(blocks.begin(), blocks.end(), order);
    for (const dim3& b : blocks) {
        blockIdx = b;
        for (auto& f : fibers) {
            f.state = Runnable;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, entry, 0);
        }
        run_block(n);
    }
}
}  // namespace emu

inline void __syncthreads() { emu::wait(emu::AtBlock); }
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
inline float __ldcg(const float* p) { return *p; }
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline double __dmul_rn(double a, double b) { return a * b; }
inline int atomicMin(int* p, int v) {
    const int old = *p;
    if (v < old) *p = v;
    return old;
}
using std::isfinite;
using std::isnan;

inline float __shfl_sync(unsigned, float v, int src) {
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    emu::warp_buf[w][lane] = v;  // publish, meet, read the source lane, meet again
    emu::wait(emu::AtWarp);
    const float r = emu::warp_buf[w][src & 31];
    emu::wait(emu::AtWarp);
    return r;
}
inline float __shfl_xor_sync(unsigned m, float v, int mask) { return __shfl_sync(m, v, (threadIdx.x % 32) ^ mask); }

// The kernels' tensor-core tile product (qs::mma_16816 in common.cuh) as a warp collective:
// every lane publishes its fragments, each computes its four outputs from the whole tiles
// (products of 16-bit values are exact in f32; they are added in k order), then the warp meets
// again before the buffers are reused.
#define QS_EMULATOR 1
namespace emu {
inline uint32_t mma_a[32][32][4], mma_b[32][32][2];
inline float half_bits(uint16_t h, bool bf16) {
    if (bf16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
template <bool BF16> void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) mma_a[w][lane][i] = a[i];
    for (int i = 0; i < 2; ++i) mma_b[w][lane][i] = b[i];
    wait(AtWarp);
    auto A = [&](int row, int k) {  // row-major 16 x 16
        const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0), src = (row % 8) * 4 + (k % 8) / 2;
        return half_bits((uint16_t)(mma_a[w][src][reg] >> (16 * (k % 2))), BF16);
    };
    auto B = [&](int k, int col) {  // 16 x 8
        const int reg = k >= 8 ? 1 : 0, src = col * 4 + (k % 8) / 2;
        return half_bits((uint16_t)(mma_b[w][src][reg] >> (16 * (k % 2))), BF16);
    };
    const int g = lane / 4, t = lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        out[i] = acc;
    }
    wait(AtWarp);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
}  // namespace emu
