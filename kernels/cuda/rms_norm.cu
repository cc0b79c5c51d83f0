// RMSNorm over the last dimension, optionally after adding a residual (src/fused/rms_norm.rs).
//
//   x, residual (num_rows, hidden), weight (hidden)
//   out         (num_rows, hidden): x / sqrt(mean(x^2) + eps) * weight
//   sum_out     (num_rows, hidden) or null: with a residual, x + residual rounded to T, which is
//               then what gets normalised (as an unfused add in T would)
//
// Grid (num_rows), any multiple of 32 threads up to 1024; each thread revisits its own elements.

#include "common.cuh"

namespace {

// Elements a thread keeps in registers: rows of up to CACHED * blockDim.x (8192 at 1024
// threads) are read once, every load (x, residual, weight) issued before the reduction, so a
// row costs one round of memory latency rather than three. Longer rows re-read the rest.
constexpr int CACHED = 8;

template <typename T>
__device__ __forceinline__ void rms_norm(const T* __restrict__ x, const T* __restrict__ residual,
                                         const T* __restrict__ weight, T* __restrict__ out,
                                         T* __restrict__ sum_out, int hidden, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * hidden;
    // Element c of the row is the thread's own when c % blockDim.x == threadIdx.x; each thread
    // adds its squares in increasing c.
    float v[CACHED], r[CACHED], w[CACHED];
#pragma unroll
    for (int i = 0; i < CACHED; ++i) {
        const int c = threadIdx.x + i * blockDim.x;
        v[i] = r[i] = w[i] = 0.f;
        if (c < hidden) {
            v[i] = qs::to_float(x[base + c]);
            if (residual != nullptr) r[i] = qs::to_float(residual[base + c]);
            w[i] = qs::to_float(weight[c]);
        }
    }
    float sum_sq = 0.f;
#pragma unroll
    for (int i = 0; i < CACHED; ++i) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c >= hidden) break;
        if (residual != nullptr) {
            // x + residual rounded to T is what gets normalised (as an unfused add in T).
            const T sum = qs::from_float<T>(v[i] + r[i]);
            sum_out[base + c] = sum;
            v[i] = qs::to_float(sum);
        }
        sum_sq += v[i] * v[i];
    }
    for (int c = threadIdx.x + CACHED * blockDim.x; c < hidden; c += blockDim.x) {
        float u = qs::to_float(x[base + c]);
        if (residual != nullptr) {
            const T sum = qs::from_float<T>(u + qs::to_float(residual[base + c]));
            sum_out[base + c] = sum;
            u = qs::to_float(sum);
        }
        sum_sq += u * u;
    }
    const float inv_rms = rsqrtf(qs::block_sum(sum_sq, scratch) / hidden + eps);
#pragma unroll
    for (int i = 0; i < CACHED; ++i) {
        const int c = threadIdx.x + i * blockDim.x;
        if (c < hidden) out[base + c] = qs::from_float<T>(v[i] * inv_rms * w[i]);
    }
    const T* normed = residual != nullptr ? sum_out : x;
    for (int c = threadIdx.x + CACHED * blockDim.x; c < hidden; c += blockDim.x) {
        out[base + c] = qs::from_float<T>(qs::to_float(normed[base + c]) * inv_rms * qs::to_float(weight[c]));
    }
}

}  // namespace

// Up to 1024 threads a block (src/fused/rms_norm.rs): at most 64 registers a thread.
#define RMS_NORM(SUFFIX, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(1024) rms_norm_##SUFFIX(                            \
        const T* x, const T* residual, const T* weight, T* out, T* sum_out, int hidden, float eps) { \
        rms_norm<T>(x, residual, weight, out, sum_out, hidden, eps);                                 \
    }
QS_FOR_EACH_DTYPE(RMS_NORM)
