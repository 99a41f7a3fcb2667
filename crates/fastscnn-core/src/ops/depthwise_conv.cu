// Depthwise 3x3 convolution, padding 1, stride 1 or 2, on (N, C, H, W) planes of each element
// type of `element.cuh`, and its two gradients. One thread per output element (forward, input
// gradient); for the weight gradient, whose nine sums per channel run over the whole batch, a
// grid of (split, channel) blocks and then one thread per weight.
#include "block_sum.cuh"
#include "element.cuh"

// out[b, c, oy, ox] = bias[c] + sum over the 3x3 window of x * w[c], then max(0, .) if `relu`.
// `bias` may be null (no bias).
template <typename T>
__device__ void depthwise3x3_forward(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
    T* __restrict__ out, unsigned n, unsigned c, unsigned h, unsigned wd, unsigned oh,
    unsigned ow, unsigned stride, int relu) {
    const size_t total = (size_t)n * c * oh * ow;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ox = i % ow;
        const size_t rest = i / ow;
        const unsigned oy = rest % oh;
        const size_t plane = rest / oh;
        const unsigned ch = plane % c;
        const T* src = x + plane * h * wd;
        const T* k = w + ch * 9;
        float acc = 0.0f;
        for (int ky = 0; ky < 3; ++ky) {
            const int iy = (int)(oy * stride) - 1 + ky;
            if (iy < 0 || iy >= (int)h) continue;
            for (int kx = 0; kx < 3; ++kx) {
                const int ix = (int)(ox * stride) - 1 + kx;
                if (ix < 0 || ix >= (int)wd) continue;
                acc += load(src[(size_t)iy * wd + ix]) * load(k[ky * 3 + kx]);
            }
        }
        if (bias != nullptr) acc += load(bias[ch]);
        if (relu) acc = fmaxf(acc, 0.0f);
        out[i] = store<T>(acc);
    }
}

// grad_x[b, c, iy, ix] = sum of g[b, c, oy, ox] * w[c, ky, kx] over the outputs whose window
// holds the pixel: oy * stride - 1 + ky = iy.
template <typename T>
__device__ void depthwise3x3_input_grad(
    const T* __restrict__ g, const T* __restrict__ w, T* __restrict__ grad_x,
    unsigned n, unsigned c, unsigned h, unsigned wd, unsigned oh, unsigned ow,
    unsigned stride) {
    const size_t total = (size_t)n * c * h * wd;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ix = i % wd;
        const size_t rest = i / wd;
        const unsigned iy = rest % h;
        const size_t plane = rest / h;
        const unsigned ch = plane % c;
        const T* grad = g + plane * oh * ow;
        const T* k = w + ch * 9;
        float acc = 0.0f;
        for (int ky = 0; ky < 3; ++ky) {
            const int ty = (int)iy + 1 - ky;
            if (ty < 0 || ty % (int)stride != 0) continue;
            const unsigned oy = ty / stride;
            if (oy >= oh) continue;
            for (int kx = 0; kx < 3; ++kx) {
                const int tx = (int)ix + 1 - kx;
                if (tx < 0 || tx % (int)stride != 0) continue;
                const unsigned ox = tx / stride;
                if (ox >= ow) continue;
                acc += load(grad[(size_t)oy * ow + ox]) * load(k[ky * 3 + kx]);
            }
        }
        grad_x[i] = store<T>(acc);
    }
}

// grad_w[c, ky, kx] = sum over images and outputs of g[b, c, oy, ox] * x[b, c, oy*s-1+ky,
// ox*s-1+kx], in two stages: block (split, c) sums its stretch of channel c's outputs into nine
// f64 partials, then one thread per weight adds its channel's partials in order.
template <typename T>
__device__ void depthwise3x3_weight_grad_partial(
    const T* __restrict__ x, const T* __restrict__ g, double* __restrict__ partials, unsigned n,
    unsigned c, unsigned h, unsigned wd, unsigned oh, unsigned ow, unsigned stride) {
    __shared__ double shared[32];
    const unsigned split = blockIdx.x, splits = gridDim.x, ch = blockIdx.y;
    double acc[9];
    for (int t = 0; t < 9; ++t) acc[t] = 0.0;
    const size_t per_image = (size_t)oh * ow;
    size_t start, end;
    stretch((size_t)n * per_image, split, splits, &start, &end);
    for (size_t e = start + threadIdx.x; e < end; e += blockDim.x) {
        const size_t b = e / per_image;
        const size_t o = e % per_image;
        const unsigned oy = o / ow;
        const unsigned ox = o % ow;
        const size_t plane = b * c + ch;
        const float go = load(g[plane * per_image + o]);
        const T* src = x + plane * h * wd;
        for (int ky = 0; ky < 3; ++ky) {
            const int iy = (int)(oy * stride) - 1 + ky;
            if (iy < 0 || iy >= (int)h) continue;
            for (int kx = 0; kx < 3; ++kx) {
                const int ix = (int)(ox * stride) - 1 + kx;
                if (ix < 0 || ix >= (int)wd) continue;
                acc[ky * 3 + kx] += (double)go * (double)load(src[(size_t)iy * wd + ix]);
            }
        }
    }
    for (int t = 0; t < 9; ++t) {
        const double total_t = block_sum(acc[t], shared);
        if (threadIdx.x == 0) partials[((size_t)ch * splits + split) * 9 + t] = total_t;
    }
}

template <typename T>
__device__ void depthwise3x3_weight_grad_finish(const double* __restrict__ partials,
                                                T* __restrict__ grad_w, unsigned c,
                                                unsigned splits) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c * 9) return;
    const unsigned ch = i / 9, t = i % 9;
    double sum = 0.0;
    for (unsigned s = 0; s < splits; ++s) sum += partials[((size_t)ch * splits + s) * 9 + t];
    grad_w[i] = store<T>((float)sum);
}

#define EXPORT(SUFFIX, T)                                                                    \
    extern "C" __global__ void depthwise3x3_forward_##SUFFIX(                                \
        const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,        \
        T* __restrict__ out, unsigned n, unsigned c, unsigned h, unsigned wd, unsigned oh,   \
        unsigned ow, unsigned stride, int relu) {                                            \
        depthwise3x3_forward(x, w, bias, out, n, c, h, wd, oh, ow, stride, relu);            \
    }                                                                                        \
    extern "C" __global__ void depthwise3x3_input_grad_##SUFFIX(                             \
        const T* __restrict__ g, const T* __restrict__ w, T* __restrict__ grad_x, unsigned n, \
        unsigned c, unsigned h, unsigned wd, unsigned oh, unsigned ow, unsigned stride) {    \
        depthwise3x3_input_grad(g, w, grad_x, n, c, h, wd, oh, ow, stride);                  \
    }                                                                                        \
    extern "C" __global__ void depthwise3x3_weight_grad_partial_##SUFFIX(                    \
        const T* __restrict__ x, const T* __restrict__ g, double* __restrict__ partials,     \
        unsigned n, unsigned c, unsigned h, unsigned wd, unsigned oh, unsigned ow,           \
        unsigned stride) {                                                                   \
        depthwise3x3_weight_grad_partial(x, g, partials, n, c, h, wd, oh, ow, stride);       \
    }                                                                                        \
    extern "C" __global__ void depthwise3x3_weight_grad_finish_##SUFFIX(                     \
        const double* __restrict__ partials, T* __restrict__ grad_w, unsigned c,             \
        unsigned splits) {                                                                   \
        depthwise3x3_weight_grad_finish(partials, grad_w, c, splits);                        \
    }
FOR_EACH_ELEMENT(EXPORT)
