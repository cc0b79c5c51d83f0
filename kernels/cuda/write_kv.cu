// Scatters a step's new key (or value) rows into their cache slots (src/write_kv.rs).
//
//   src          (num_tokens, row) with row = num_kv_heads * head_dim
//   cache        (num_slots, row) = (num_blocks, block_size, num_kv_heads, head_dim)
//   slot_mapping (num_tokens) u32, every slot < num_slots (checked on the host)
//
// Grid (num_tokens, ceil(row / blockDim.x)): a plain copy, one element per thread.

#include "common.cuh"

#define WRITE_KV(SUFFIX, T)                                                                          \
    extern "C" __global__ void write_kv_##SUFFIX(T* __restrict__ cache, const T* __restrict__ src,  \
                                                 const uint32_t* __restrict__ slot_mapping, int row) { \
        const int token = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;                    \
        if (c < row) cache[(size_t)slot_mapping[token] * row + c] = src[(size_t)token * row + c];    \
    }
QS_FOR_EACH_DTYPE(WRITE_KV)
