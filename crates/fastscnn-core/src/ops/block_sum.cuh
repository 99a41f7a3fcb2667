// Deterministic sums across a thread block, shared by the kernels that reduce (the depthwise
// weight gradient, BatchNorm's statistics, the loss): warp shuffles, then one warp over the
// warps' sums, always in the same order, so that a result does not change from run to run.
#pragma once

// Every lane's `v` summed; the total is valid in lane 0.
__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Every thread's `v` summed; the total is valid in thread 0. Every thread of the block must call
// it (blockDim.x a multiple of 32, at most 1024: the ops launch `SUM_THREADS`, 256, of
// `ops/cuda.rs`); `shared` holds 32 doubles and may be reused by the next call.
__device__ __forceinline__ double block_sum(double v, double* shared) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) {
        shared[warp] = v;
    }
    __syncthreads();
    const unsigned warps = (blockDim.x + 31u) >> 5;
    v = threadIdx.x < warps ? shared[threadIdx.x] : 0.0;
    if (warp == 0) {
        v = warp_sum(v);
    }
    return v;
}

// The stretch of a channel's `count` values that block `split` of `splits` sums, in the
// reductions over a grid of (split, channel) blocks whose partial sums one thread per channel
// then adds in order.
__device__ __forceinline__ void stretch(size_t count, unsigned split, unsigned splits,
                                        size_t* start, size_t* end) {
    const size_t per = (count + splits - 1) / splits;
    *start = min(count, (size_t)split * per);
    *end = min(count, *start + per);
}
