// Host stand-in for cuda_bf16.h (CPU emulation of the kernels only).
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>
struct __nv_bfloat16 { uint16_t x; };
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = (uint32_t)b.x << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if (std::isnan(f)) { b.x = 0x7fc0; return b; }
    u += 0x7fff + ((u >> 16) & 1);
    b.x = (uint16_t)(u >> 16);
    return b;
}
