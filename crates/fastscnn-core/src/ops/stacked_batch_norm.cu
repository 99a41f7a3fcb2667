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

// coefficients[ch] = scale, coefficients[c + ch] = shift; one thread per channel, so that the
// f64 root and division run once per channel and `batch_norm_apply` is f32 throughout: GPUs
// other than datacenter ones run f64 at a small fraction of their f32 rate.
extern "C" __global__ void batch_norm_coefficients_f32(const float* __restrict__ params,
                                                       float* __restrict__ coefficients,
                                                       unsigned c, double eps) {
    const unsigned ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    scale_shift(params, c, ch, eps, &coefficients[ch], &coefficients[c + ch]);
}

// out = x·scale + shift, through max(0, ·) if `relu`; `coefficients` from
// `batch_norm_coefficients`.
extern "C" __global__ void batch_norm_apply_f32(const float* __restrict__ x,
                                                const float* __restrict__ coefficients,
                                                float* __restrict__ out, unsigned n, unsigned c,
                                                unsigned plane, int relu) {
    const size_t total = (size_t)n * c * plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ch = (i / plane) % c;
        float y = x[i] * coefficients[ch] + coefficients[c + ch];
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

// The input gradient's per-channel terms, once per channel (as `batch_norm_coefficients`):
// dx = γ/σ · (g − Σg/M − x̂·Σg·x̂/M) = a·g − b − k·(x − μ), M = N·plane, with a = γ/σ,
// b = a·Σg/M and k = a/σ·Σg·x̂/M, each computed in f64 and rounded; `params` rows 4 and 5 hold
// the two sums. terms rows: scale, shift (the forward's, for the ReLU), a, b, k, μ.
extern "C" __global__ void batch_norm_grad_coefficients_f32(const float* __restrict__ params,
                                                            float* __restrict__ terms,
                                                            unsigned c, double count,
                                                            double eps) {
    const unsigned ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    scale_shift(params, c, ch, eps, &terms[ch], &terms[c + ch]);
    const double inv = inverse_std(params[3 * c + ch], eps);
    const double a = (double)params[ch] * inv;
    terms[2 * c + ch] = (float)a;
    terms[3 * c + ch] = (float)(a * (double)params[4 * c + ch] / count);
    terms[4 * c + ch] = (float)(a * inv * (double)params[5 * c + ch] / count);
    terms[5 * c + ch] = params[2 * c + ch];
}

// dx from x, the output gradient dy and the `terms` of `batch_norm_grad_coefficients`, in f32.
extern "C" __global__ void batch_norm_input_grad_f32(const float* __restrict__ x,
                                                     const float* __restrict__ dy,
                                                     const float* __restrict__ terms,
                                                     float* __restrict__ grad_x, unsigned n,
                                                     unsigned c, unsigned plane, int relu) {
    const size_t total = (size_t)n * c * plane;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ch = (i / plane) % c;
        const float g = through_relu(dy[i], x[i], terms[ch], terms[c + ch], relu);
        grad_x[i] = terms[2 * c + ch] * g - terms[3 * c + ch] -
                    terms[4 * c + ch] * (x[i] - terms[5 * c + ch]);
    }
}
