// Bilinear resize of (N, C, H, W) planes to (N, C, OH, OW) and its gradient, for each element
// type of `element.cuh`; one thread per output element forward and per input element backward.
// The gradient gathers from the outputs that read each input instead of scattering with atomics:
// no write conflicts, and the same sum in the same order on every run.
#include "bilinear_taps.cuh"
#include "element.cuh"

// The forward's order of operations is the CPU kernel's: the two rows' horizontal blends, then
// the vertical one, weights rounded to f32 first.
template <typename T>
__device__ void resize_bilinear(const T* __restrict__ x, T* __restrict__ out, unsigned planes,
                                unsigned h, unsigned w, unsigned oh, unsigned ow,
                                int align_corners) {
    const size_t total = (size_t)planes * oh * ow;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ox = i % ow;
        const size_t rest = i / ow;
        const unsigned oy = rest % oh;
        const size_t plane = rest / oh;
        const Tap ty = source_tap(oy, h, oh, align_corners);
        const Tap tx = source_tap(ox, w, ow, align_corners);
        const float wy0 = (float)(1.0 - ty.l), wy1 = (float)ty.l;
        const float wx0 = (float)(1.0 - tx.l), wx1 = (float)tx.l;
        const T* r0 = x + (plane * h + ty.i0) * w;
        const T* r1 = x + (plane * h + ty.i1) * w;
        const float top = wx0 * load(r0[tx.i0]) + wx1 * load(r0[tx.i1]);
        const float bottom = wx0 * load(r1[tx.i0]) + wx1 * load(r1[tx.i1]);
        out[i] = store<T>(wy0 * top + wy1 * bottom);
    }
}

// The most column weights a thread of the gradient keeps.
#define COLUMN_CACHE 64

// grad_x[p, iy, ix] = sum over the outputs (oy, ox) that read (iy, ix) of
// weight_y(oy, iy) * weight_x(ox, ix) * g[p, oy, ox].
template <typename T>
__device__ void resize_bilinear_grad(const T* __restrict__ g, T* __restrict__ grad_x,
                                     unsigned planes, unsigned h, unsigned w, unsigned oh,
                                     unsigned ow, int align_corners) {
    const size_t total = (size_t)planes * h * w;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ix = i % w;
        const size_t rest = i / w;
        const unsigned iy = rest % h;
        const size_t plane = rest / h;
        const unsigned oy0 = first_output_from(iy > 0 ? iy - 1 : 0, h, oh, align_corners);
        const unsigned oy1 = first_output_from(iy + 1, h, oh, align_corners);
        const unsigned ox0 = first_output_from(ix > 0 ? ix - 1 : 0, w, ow, align_corners);
        const unsigned ox1 = first_output_from(ix + 1, w, ow, align_corners);
        // The column weights, once per thread where the run of outputs is short (every
        // upsampling up to 32x and every downsampling); longer runs compute them in the loop.
        float column_weights[COLUMN_CACHE];
        const bool cached = ox1 - ox0 <= COLUMN_CACHE;
        if (cached) {
            for (unsigned ox = ox0; ox < ox1; ++ox) {
                column_weights[ox - ox0] = tap_weight(source_tap(ox, w, ow, align_corners), ix);
            }
        }
        const T* grad = g + plane * oh * ow;
        float acc = 0.0f;
        for (unsigned oy = oy0; oy < oy1; ++oy) {
            const float wy = tap_weight(source_tap(oy, h, oh, align_corners), iy);
            if (wy == 0.0f) continue;
            float row = 0.0f;
            for (unsigned ox = ox0; ox < ox1; ++ox) {
                const float wx = cached ? column_weights[ox - ox0]
                                        : tap_weight(source_tap(ox, w, ow, align_corners), ix);
                row += wx * load(grad[(size_t)oy * ow + ox]);
            }
            acc += wy * row;
        }
        grad_x[i] = store<T>(acc);
    }
}

#define EXPORT(SUFFIX, T)                                                                    \
    extern "C" __global__ void resize_bilinear_##SUFFIX(                                     \
        const T* __restrict__ x, T* __restrict__ out, unsigned planes, unsigned h,           \
        unsigned w, unsigned oh, unsigned ow, int align_corners) {                           \
        resize_bilinear(x, out, planes, h, w, oh, ow, align_corners);                        \
    }                                                                                        \
    extern "C" __global__ void resize_bilinear_grad_##SUFFIX(                                \
        const T* __restrict__ g, T* __restrict__ grad_x, unsigned planes, unsigned h,        \
        unsigned w, unsigned oh, unsigned ow, int align_corners) {                           \
        resize_bilinear_grad(g, grad_x, planes, h, w, oh, ow, align_corners);                \
    }
FOR_EACH_ELEMENT(EXPORT)
