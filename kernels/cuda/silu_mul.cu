// SwiGLU activation: out = silu(gate) * up, silu(g) = g / (1 + e^-g) (src/fused/silu_mul.rs).
//
//   gate, up  (num_rows, width), each row contiguous; rows gate_stride / up_stride elements
//             apart, so both may be halves of one fused gate_up projection
//   out       (num_rows, width), contiguous
//
// Grid (num_rows, ceil(width / blockDim.x)).

#include "common.cuh"

#define SILU_MUL(SUFFIX, T)                                                                          \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* __restrict__ gate, const T* __restrict__ up, \
                                                 T* __restrict__ out, int width, int gate_stride,   \
                                                 int up_stride) {                                    \
        const size_t row = blockIdx.x;                                                               \
        const int c = blockIdx.y * blockDim.x + threadIdx.x;                                         \
        if (c >= width) return;                                                                      \
        const float g = qs::to_float(gate[row * gate_stride + c]);                                   \
        const float u = qs::to_float(up[row * up_stride + c]);                                       \
        out[row * width + c] = qs::from_float<T>(g / (1.f + expf(-g)) * u);                          \
    }
QS_FOR_EACH_DTYPE(SILU_MUL)
