// Training BatchNorm on (N, C, H, W) f32 maps, forward and backward, in the passes of the CPU
// op: the batch statistics, the normalisation (with the ReLU), the per-channel sums of the
// backward pass and the input gradient. The per-channel sums run over a grid of (split,
// channel) blocks, each summing one stretch of the channel in f64 into `partials`, which one
// thread per channel then adds in a fixed order: every channel's reduction spreads over the
// GPU and its result is the same on every run.
//
// `params` rows, each of C values: gamma, beta, mean, variance (biased) and, for the input
// gradient, the two sums of the backward pass.
#include "block_sum.cuh"

// Element `e` of channel `ch`'s N·plane values.
__device__ __forceinline__ size_t channel_index(size_t e, unsigned ch, unsigned c,
                                                size_t plane) {
    return ((e / plane) * c + ch) * plane + e % plane;
}

// The stretch of a channel's `count` values that block `split` of `splits` sums.
__device__ __forceinline__ void stretch(size_t count, unsigned split, unsigned splits,
                                        size_t* start, size_t* end) {
    const size_t per = (count + splits - 1) / splits;
    *start = min(count, (size_t)split * per);
    *end = min(count, *start + per);
}

// 1/sqrt(var + eps) in f64, as the CPU op computes it.
__device__ __forceinline__ double inverse_std(float variance, double eps) {
    return 1.0 / sqrt((double)variance + eps);
}

// Sums of d and d², d = x − (the channel's first value): the shift keeps the variance's
// subtraction of two large sums exact enough in f64.
extern "C" __global__ void batch_norm_partial_moments_f32(const float* __restrict__ x,
                                                          double* __restrict__ partials,
                                                          unsigned n, unsigned c,
                                                          unsigned plane) {
    __shared__ double shared[32];
    const unsigned split = blockIdx.x, splits = gridDim.x, ch = blockIdx.y;
    size_t start, end;
    stretch((size_t)n * plane, split, splits, &start, &end);
    const double shift = x[(size_t)ch * plane];
    double sum = 0.0, squares = 0.0;
    for (size_t e = start + threadIdx.x; e < end; e += blockDim.x) {
        const double d = (double)x[channel_index(e, ch, c, plane)] - shift;
        sum += d;
        squares += d * d;
    }
    sum = block_sum(sum, shared);
    squares = block_sum(squares, shared);
    if (threadIdx.x == 0) {
        partials[((size_t)ch * splits + split) * 2] = sum;
        partials[((size_t)ch * splits + split) * 2 + 1] = squares;
    }
}

// moments[ch] = mean, moments[c + ch] = biased variance; one thread per channel.
extern "C" __global__ void batch_norm_finish_moments_f32(const float* __restrict__ x,
                                                         const double* __restrict__ partials,
                                                         float* __restrict__ moments,
                                                         unsigned n, unsigned c, unsigned plane,
                                                         unsigned splits) {
    const unsigned ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sum = 0.0, squares = 0.0;
    for (unsigned s = 0; s < splits; ++s) {
        sum += partials[((size_t)ch * splits + s) * 2];
        squares += partials[((size_t)ch * splits + s) * 2 + 1];
    }
    const double count = (double)n * (double)plane;
    const double shifted_mean = sum / count;
    const double variance = fmax(squares / count - shifted_mean * shifted_mean, 0.0);
    moments[ch] = (float)((double)x[(size_t)ch * plane] + shifted_mean);
    moments[c + ch] = (float)variance;
}

// The channel's scale γ/σ and shift β − μ·γ/σ, computed in f64 and rounded, as the CPU op does.
__device__ __forceinline__ void scale_shift(const float* params, unsigned c, unsigned ch,
                                            double eps, float* scale, float* shift) {
    const double s = inverse_std(params[3 * c + ch], eps) * (double)params[ch];
    *scale = (float)s;
    *shift = (float)((double)params[c + ch] - (double)params[2 * c + ch] * s);
}

// out = x·scale + shift, through max(0, ·) if `relu`.
extern "C" __global__ void batch_norm_apply_f32(const float* __restrict__ x,
                                                const float* __restrict__ params,
                                                float* __restrict__ out, unsigned n, unsigned c,
                                                unsigned plane, double eps, int relu) {
    const size_t total = (size_t)n * c * plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ch = (i / plane) % c;
        float scale, shift;
        scale_shift(params, c, ch, eps, &scale, &shift);
        float y = x[i] * scale + shift;
        if (relu) y = y > 0.0f ? y : 0.0f;
        out[i] = y;
    }
}

// The output gradient through the ReLU: dy where the output (recomputed from x exactly as the
// forward computed it) is positive.
__device__ __forceinline__ float through_relu(float dy, float x, float scale, float shift,
                                              int relu) {
    return !relu || x * scale + shift > 0.0f ? dy : 0.0f;
}

// Sums of g and g·(x − mean), g the output gradient through the ReLU.
extern "C" __global__ void batch_norm_partial_grad_f32(
    const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ params,
    double* __restrict__ partials, unsigned n, unsigned c, unsigned plane, double eps,
    int relu) {
    __shared__ double shared[32];
    const unsigned split = blockIdx.x, splits = gridDim.x, ch = blockIdx.y;
    size_t start, end;
    stretch((size_t)n * plane, split, splits, &start, &end);
    float scale, shift;
    scale_shift(params, c, ch, eps, &scale, &shift);
    const double mean = params[2 * c + ch];
    double sum = 0.0, centred = 0.0;
    for (size_t e = start + threadIdx.x; e < end; e += blockDim.x) {
        const size_t i = channel_index(e, ch, c, plane);
        const double g = through_relu(dy[i], x[i], scale, shift, relu);
        sum += g;
        centred += g * ((double)x[i] - mean);
    }
    sum = block_sum(sum, shared);
    centred = block_sum(centred, shared);
    if (threadIdx.x == 0) {
        partials[((size_t)ch * splits + split) * 2] = sum;
        partials[((size_t)ch * splits + split) * 2 + 1] = centred;
    }
}

// sums[ch] = Σ g (β's gradient), sums[c + ch] = Σ g·x̂ (γ's gradient); one thread per channel.
extern "C" __global__ void batch_norm_finish_grad_f32(const double* __restrict__ partials,
                                                      const float* __restrict__ params,
                                                      float* __restrict__ sums, unsigned c,
                                                      unsigned splits, double eps) {
    const unsigned ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sum = 0.0, centred = 0.0;
    for (unsigned s = 0; s < splits; ++s) {
        sum += partials[((size_t)ch * splits + s) * 2];
        centred += partials[((size_t)ch * splits + s) * 2 + 1];
    }
    sums[ch] = (float)sum;
    sums[c + ch] = (float)(centred * inverse_std(params[3 * c + ch], eps));
}

// dx = γ/σ · (g − Σg/M − x̂·Σg·x̂/M), M = N·plane; `params` rows 4 and 5 hold the two sums.
extern "C" __global__ void batch_norm_input_grad_f32(const float* __restrict__ x,
                                                     const float* __restrict__ dy,
                                                     const float* __restrict__ params,
                                                     float* __restrict__ grad_x, unsigned n,
                                                     unsigned c, unsigned plane, double eps,
                                                     int relu) {
    const size_t total = (size_t)n * c * plane;
    const double count = (double)n * (double)plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ch = (i / plane) % c;
        float scale, shift;
        scale_shift(params, c, ch, eps, &scale, &shift);
        const double inv = inverse_std(params[3 * c + ch], eps);
        const double xhat = ((double)x[i] - (double)params[2 * c + ch]) * inv;
        const double g = through_relu(dy[i], x[i], scale, shift, relu);
        const double mean_g = (double)params[4 * c + ch] / count;
        const double mean_gx = (double)params[5 * c + ch] / count;
        grad_x[i] = (float)((double)params[ch] * inv * (g - mean_g - xhat * mean_gx));
    }
}
