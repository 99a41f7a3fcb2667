// Softmax cross-entropy over the class axis of (N, C, H, W) f32 logits against an (N, H, W) map
// of target classes (as f32; negative: ignored), and its gradient. Each pixel's loss is
// log Σ exp(x − max) + max − x[target], computed in f32 as the CPU kernel does; blocks sum
// their pixels' losses in f64 into `partials`, which one thread adds in order: the same loss
// on every run.
#include "block_sum.cuh"

// A pixel's target class, or -1 where it takes no part in the loss (a negative or NaN entry).
__device__ __forceinline__ int target_class(float target) {
    return target >= 0.0f ? (int)target : -1;
}

extern "C" __global__ void cross_entropy_partial_f32(const float* __restrict__ logits,
                                                     const float* __restrict__ targets,
                                                     double* __restrict__ partials, unsigned n,
                                                     unsigned c, unsigned plane) {
    __shared__ double shared[32];
    const size_t pixels = (size_t)n * plane;
    double sum = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < pixels;
         i += (size_t)gridDim.x * blockDim.x) {
        const int target = target_class(targets[i]);
        // The op checks the targets against the classes first; a stray one reads nothing.
        if (target < 0 || target >= (int)c) continue;
        const float* px = logits + (i / plane) * c * plane + i % plane;
        float max = px[0];
        for (unsigned k = 1; k < c; ++k) max = fmaxf(max, px[(size_t)k * plane]);
        float total = 0.0f;
        for (unsigned k = 0; k < c; ++k) total += expf(px[(size_t)k * plane] - max);
        sum += (double)(logf(total) + max - px[(size_t)target * plane]);
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// loss[0] = Σ partials · scale (1/count), one thread.
extern "C" __global__ void cross_entropy_finish_f32(const double* __restrict__ partials,
                                                    float* __restrict__ loss, unsigned blocks,
                                                    double scale) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double sum = 0.0;
    for (unsigned b = 0; b < blocks; ++b) sum += partials[b];
    loss[0] = (float)(sum * scale);
}

// grad = (softmax − onehot(target)) · scale at pixels with a target, 0 at the others; one
// thread per pixel.
extern "C" __global__ void cross_entropy_grad_f32(const float* __restrict__ logits,
                                                  const float* __restrict__ targets,
                                                  float* __restrict__ grad, unsigned n,
                                                  unsigned c, unsigned plane, float scale) {
    const size_t pixels = (size_t)n * plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < pixels;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t offset = (i / plane) * c * plane + i % plane;
        const float* px = logits + offset;
        float* gx = grad + offset;
        const int target = target_class(targets[i]);
        if (target < 0 || target >= (int)c) {
            for (unsigned k = 0; k < c; ++k) gx[(size_t)k * plane] = 0.0f;
            continue;
        }
        float max = px[0];
        for (unsigned k = 1; k < c; ++k) max = fmaxf(max, px[(size_t)k * plane]);
        float total = 0.0f;
        for (unsigned k = 0; k < c; ++k) total += expf(px[(size_t)k * plane] - max);
        const float inv = 1.0f / total;
        for (unsigned k = 0; k < c; ++k) {
            const float p = expf(px[(size_t)k * plane] - max) * inv;
            gx[(size_t)k * plane] = (p - ((int)k == target ? 1.0f : 0.0f)) * scale;
        }
    }
}
