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

template <typename T>
__device__ __forceinline__ void rms_norm(const T* __restrict__ x, const T* __restrict__ residual,
                                         const T* __restrict__ weight, T* __restrict__ out,
                                         T* __restrict__ sum_out, int hidden, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * hidden;
    float sum_sq = 0.f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v = qs::to_float(x[base + c]);
        if (residual != nullptr) {
            const T sum = qs::from_float<T>(v + qs::to_float(residual[base + c]));
            sum_out[base + c] = sum;
            v = qs::to_float(sum);
        }
        sum_sq += v * v;
    }
    const float inv_rms = rsqrtf(qs::block_sum(sum_sq, scratch) / hidden + eps);
    const T* normed = residual != nullptr ? sum_out : x;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        out[base + c] = qs::from_float<T>(qs::to_float(normed[base + c]) * inv_rms * qs::to_float(weight[c]));
    }
}

}  // namespace

#define RMS_NORM(SUFFIX, T)                                                                          \
    extern "C" __global__ void rms_norm_##SUFFIX(const T* x, const T* residual, const T* weight,    \
                                                 T* out, T* sum_out, int hidden, float eps) {       \
        rms_norm<T>(x, residual, weight, out, sum_out, hidden, eps);                                 \
    }
QS_FOR_EACH_DTYPE(RMS_NORM)
