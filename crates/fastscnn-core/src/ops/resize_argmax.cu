// The label map of (N, C, H, W) scores (each element type of `element.cuh`) upsampled to
// (OH, OW): one thread per output pixel blends each class's score as the resize does (the same
// operations in the same order, so the same values) and keeps the first class with the largest.
// Half-precision scores are blended in f32 without rounding, so their labels are those of the f32
// kernel on the same scores.
#include "bilinear_taps.cuh"
#include "element.cuh"

template <typename T>
__device__ void resize_argmax(const T* __restrict__ scores, unsigned* __restrict__ labels,
                              unsigned n, unsigned classes, unsigned h, unsigned w, unsigned oh,
                              unsigned ow, int align_corners) {
    const size_t total = (size_t)n * oh * ow;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const unsigned ox = i % ow;
        const size_t rest = i / ow;
        const unsigned oy = rest % oh;
        const size_t b = rest / oh;
        const Tap ty = source_tap(oy, h, oh, align_corners);
        const Tap tx = source_tap(ox, w, ow, align_corners);
        const float wy0 = (float)(1.0 - ty.l), wy1 = (float)ty.l;
        const float wx0 = (float)(1.0 - tx.l), wx1 = (float)tx.l;
        float best = 0.0f;
        unsigned label = 0;
        for (unsigned k = 0; k < classes; ++k) {
            const T* plane = scores + (b * classes + k) * h * w;
            const T* r0 = plane + (size_t)ty.i0 * w;
            const T* r1 = plane + (size_t)ty.i1 * w;
            const float top = wx0 * load(r0[tx.i0]) + wx1 * load(r0[tx.i1]);
            const float bottom = wx0 * load(r1[tx.i0]) + wx1 * load(r1[tx.i1]);
            const float v = wy0 * top + wy1 * bottom;
            if (k == 0 || v > best) {
                best = v;
                label = k;
            }
        }
        labels[i] = label;
    }
}

#define EXPORT(SUFFIX, T)                                                                    \
    extern "C" __global__ void resize_argmax_##SUFFIX(                                       \
        const T* __restrict__ scores, unsigned* __restrict__ labels, unsigned n,             \
        unsigned classes, unsigned h, unsigned w, unsigned oh, unsigned ow,                  \
        int align_corners) {                                                                 \
        resize_argmax(scores, labels, n, classes, h, w, oh, ow, align_corners);              \
    }
FOR_EACH_ELEMENT(EXPORT)
