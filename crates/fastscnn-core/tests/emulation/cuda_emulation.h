// The CUDA built-ins the kernels of `src/ops` use, for compiling them as C++ on the host (the
// host compiler's `-include`): `__global__` functions become plain `extern "C"` functions with
// the kernels' own parameters, which `emu_launch` runs once per thread of a grid, every thread of
// a block an OS thread, so that `__syncthreads` and the warp shuffles wait for one another as on
// a GPU. The half-precision types and conversions are CUDA's own headers' host versions.
//
// What it does not model: blocks run one after another, so races between blocks never show;
// `__shared__` arrays are function statics, zeroed at first and keeping the previous block's
// values, so a read of shared memory no thread wrote goes unseen; a thread that returns before a
// barrier the others reach is an error (it stops the run), where a GPU may hang or go on.
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

// Lane i's `v` of lane i + offset of its warp, or its own past the warp's end; the block's
// threads must be a multiple of 32 (as `block_sum.cuh` requires).
double __shfl_down_sync(unsigned mask, double v, int offset);

using std::max;
using std::min;
