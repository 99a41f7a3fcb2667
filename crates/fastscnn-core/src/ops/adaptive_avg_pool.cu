// Adaptive average pooling with PyTorch's windows (output cell i averages inputs
// floor(i*in/out) .. ceil((i+1)*in/out)) and its gradient, on (N, C, H, W) planes of each element
// type of `element.cuh`: one thread per output cell forward (its window summed in f64), per
// input element backward (gathering the share of every window that holds it).
#include "element.cuh"

__device__ __forceinline__ unsigned window_start(unsigned i, unsigned input, unsigned output) {
    return (unsigned)(((size_t)i * input) / output);
}

__device__ __forceinline__ unsigned window_end(unsigned i, unsigned input, unsigned output) {
    return (unsigned)(((size_t)(i + 1) * input + output - 1) / output);
}

template <typename T>
__device__ void adaptive_avg_pool(const T* __restrict__ x, T* __restrict__ out, unsigned planes,
                                  unsigned h, unsigned w, unsigned oh, unsigned ow) {
    const size_t total = (size_t)planes * oh * ow;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ox = i % ow;
        const size_t rest = i / ow;
        const unsigned oy = rest % oh;
        const size_t plane = rest / oh;
        const unsigned y0 = window_start(oy, h, oh), y1 = window_end(oy, h, oh);
        const unsigned x0 = window_start(ox, w, ow), x1 = window_end(ox, w, ow);
        const T* src = x + plane * h * w;
        double sum = 0.0;
        for (unsigned y = y0; y < y1; ++y) {
            for (unsigned xx = x0; xx < x1; ++xx) sum += (double)load(src[(size_t)y * w + xx]);
        }
        out[i] = store<T>((float)(sum / (double)((size_t)(y1 - y0) * (x1 - x0))));
    }
}

// The windows holding input row iy are those of the outputs from floor(iy*out/in) to
// ceil((iy+1)*out/in) - 1; each is checked, so the range only has to contain them.
template <typename T>
__device__ void adaptive_avg_pool_grad(const T* __restrict__ g, T* __restrict__ grad_x,
                                       unsigned planes, unsigned h, unsigned w, unsigned oh,
                                       unsigned ow) {
    const size_t total = (size_t)planes * h * w;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ix = i % w;
        const size_t rest = i / w;
        const unsigned iy = rest % h;
        const size_t plane = rest / h;
        const T* grad = g + plane * oh * ow;
        const unsigned oy_lo = (unsigned)(((size_t)iy * oh) / h);
        const unsigned oy_hi = min(oh, (unsigned)(((size_t)(iy + 1) * oh + h - 1) / h));
        const unsigned ox_lo = (unsigned)(((size_t)ix * ow) / w);
        const unsigned ox_hi = min(ow, (unsigned)(((size_t)(ix + 1) * ow + w - 1) / w));
        float acc = 0.0f;
        for (unsigned oy = oy_lo; oy < oy_hi; ++oy) {
            const unsigned y0 = window_start(oy, h, oh), y1 = window_end(oy, h, oh);
            if (iy < y0 || iy >= y1) continue;
            for (unsigned ox = ox_lo; ox < ox_hi; ++ox) {
                const unsigned x0 = window_start(ox, w, ow), x1 = window_end(ox, w, ow);
                if (ix < x0 || ix >= x1) continue;
                const double count = (double)((size_t)(y1 - y0) * (x1 - x0));
                acc += (float)((double)load(grad[(size_t)oy * ow + ox]) / count);
            }
        }
        grad_x[i] = store<T>(acc);
    }
}

#define EXPORT(SUFFIX, T)                                                                    \
    extern "C" __global__ void adaptive_avg_pool_##SUFFIX(                                   \
        const T* __restrict__ x, T* __restrict__ out, unsigned planes, unsigned h,           \
        unsigned w, unsigned oh, unsigned ow) {                                              \
        adaptive_avg_pool(x, out, planes, h, w, oh, ow);                                     \
    }                                                                                        \
    extern "C" __global__ void adaptive_avg_pool_grad_##SUFFIX(                              \
        const T* __restrict__ g, T* __restrict__ grad_x, unsigned planes, unsigned h,        \
        unsigned w, unsigned oh, unsigned ow) {                                              \
        adaptive_avg_pool_grad(g, grad_x, planes, h, w, oh, ow);                             \
    }
FOR_EACH_ELEMENT(EXPORT)
