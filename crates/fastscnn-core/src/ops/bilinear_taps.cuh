// Where an output sample of a bilinear resize reads its input, with PyTorch's `align_corners`
// semantics: the same f64 arithmetic as `fastscnn_cpu::sampling::source_index`, so that both
// devices pick the same two source indices and weights. Shared by the resize, its gradient and
// the fused resize + argmax.
#pragma once

struct Tap {
    unsigned i0, i1;  // the two source indices (equal at the last one)
    double l;         // the weight of i1; i0's is 1 - l
};

__device__ __forceinline__ Tap source_tap(unsigned dst, unsigned input, unsigned output,
                                          int align_corners) {
    double src;
    if (align_corners) {
        src = output > 1 ? (double)dst * ((double)input - 1.0) / ((double)output - 1.0) : 0.0;
    } else {
        const double scale = (double)input / (double)output;
        src = fmax(((double)dst + 0.5) * scale - 0.5, 0.0);
    }
    Tap tap;
    tap.i0 = min((unsigned)src, input - 1);
    tap.i1 = min(tap.i0 + 1, input - 1);
    tap.l = src - (double)tap.i0;
    return tap;
}

// The first output index in [0, output] whose first source index is at least `target`: the
// source indices never decrease along an axis, so the outputs that read input i (as i0 or i1)
// are those from first_output_from(i - 1) to first_output_from(i + 1).
__device__ __forceinline__ unsigned first_output_from(unsigned target, unsigned input,
                                                      unsigned output, int align_corners) {
    unsigned lo = 0, hi = output;
    while (lo < hi) {
        const unsigned mid = lo + (hi - lo) / 2;
        if (source_tap(mid, input, output, align_corners).i0 < target) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// The weight with which output `o` (its tap) reads input `i`: 0 unless i is one of its sources.
__device__ __forceinline__ float tap_weight(Tap tap, unsigned i) {
    float weight = 0.0f;
    if (tap.i0 == i) weight += (float)(1.0 - tap.l);
    if (tap.i1 == i) weight += (float)tap.l;
    return weight;
}
