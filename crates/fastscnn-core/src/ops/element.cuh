// The element types the memory-bound kernels (depthwise convolution, pooling, resize, resize +
// argmax) read and write: f32, f16 and bf16. Every kernel computes in f32 (its sums in f64 where
// the f32 kernel has them, rounded to f32 as there) and rounds to the element type once on the
// store, so a half-precision result is the f32 kernel's on the same inputs, rounded. The kernels
// are templates; each is exported once per type as `<name>_f32`, `<name>_f16` and `<name>_bf16`.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__half v) { return __half2float(v); }
__device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }

// f32 rounded to nearest even to the element type.
template <typename T>
__device__ __forceinline__ T store(float v);
template <>
__device__ __forceinline__ float store<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __half store<__half>(float v) {
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// EXPORT(suffix, type) once per element type: the exported kernels of a file.
#define FOR_EACH_ELEMENT(EXPORT) \
    EXPORT(f32, float)           \
    EXPORT(f16, __half)          \
    EXPORT(bf16, __nv_bfloat16)
