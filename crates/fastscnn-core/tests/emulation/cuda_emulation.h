// The CUDA built-ins the kernels of `src/ops` use, for compiling them as C++ on the host (the
// host compiler's `-include`): `__global__` functions become plain `extern "C"` functions with
// the kernels' own parameters, which `emu_launch` runs once per thread of a grid, every thread of
// a block an OS thread, so that `__syncthreads` and the warp shuffles meet as on a GPU. The
// half-precision types and conversions are CUDA's own headers' host versions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __forceinline__ inline
// One block runs at a time (`emu_launch`), so a function's static array is its block's shared
// memory.
#define __shared__ static

struct EmuIndex {
    unsigned x, y, z;
};

extern thread_local EmuIndex threadIdx, blockIdx;
extern EmuIndex blockDim, gridDim;

// Waits for every thread of the block.
void __syncthreads();

// Lane i's `v` of lane i + offset of its warp, or its own where that lane is past the warp's end.
double __shfl_down_sync(unsigned mask, double v, int offset);

using std::max;
using std::min;
