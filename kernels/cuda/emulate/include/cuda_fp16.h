// Host stand-in for cuda_fp16.h (CPU emulation of the kernels only).
#pragma once
#include <cstdint>
#include <cstring>
struct __half { uint16_t x; };
inline float __half2float(__half h) { _Float16 v; std::memcpy(&v, &h.x, 2); return (float)v; }
inline __half __float2half_rn(float f) { _Float16 v = (_Float16)f; __half h; std::memcpy(&h.x, &v, 2); return h; }
