//! Where the network's resampling reads its input: PyTorch's bilinear source indices, adaptive
//! pooling windows and the 3x3 convolution's output size. The inference kernels and the custom
//! ops of `fastscnn-core` (forward and backward) share these, so both follow PyTorch the same way.

use rayon::prelude::*;

use crate::real::Real;

/// Output side length of a 3x3 convolution with padding 1.
pub fn depthwise_output_size(input: usize, stride: usize) -> usize {
    (input + 2 - 3) / stride + 1
}

/// Where output index `dst` samples the input: the two neighbouring input indices and the weight of
/// the second one, exactly as PyTorch's `upsample_bilinear2d` computes them.
pub fn source_index(
    dst: usize,
    input: usize,
    output: usize,
    align_corners: bool,
) -> (usize, usize, f64) {
    let src = if align_corners {
        if output > 1 {
            dst as f64 * (input as f64 - 1.0) / (output as f64 - 1.0)
        } else {
            0.0
        }
    } else {
        let scale = input as f64 / output as f64;
        ((dst as f64 + 0.5) * scale - 0.5).max(0.0)
    };
    let i0 = (src as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, src - i0 as f64)
}

/// For every output index along one axis, its two source indices and their weights in `T`: the
/// table the resize kernels (forward, backward, fused argmax) share.
pub fn taps<T: Real>(
    input: usize,
    output: usize,
    align_corners: bool,
) -> Vec<(usize, usize, T, T)> {
    (0..output)
        .map(|o| {
            let (i0, i1, l) = source_index(o, input, output, align_corners);
            (i0, i1, T::of_f64(1.0 - l), T::of_f64(l))
        })
        .collect()
}

/// The input range `start..end` that output cell `i` of `output` cells averages over `input` cells.
pub fn pool_window(i: usize, input: usize, output: usize) -> (usize, usize) {
    let start = i * input / output;
    let end = ((i + 1) * input).div_ceil(output);
    (start, end)
}

/// Adaptive average pooling on raw planes: every (h, w) plane of `x` to an (oh, ow) plane of
/// `out`, summed in f64.
pub fn pool_planes<T: Real>(x: &[T], h: usize, w: usize, out: &mut [T], oh: usize, ow: usize) {
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(out_plane, input)| {
            for i in 0..oh {
                let (y0, y1) = pool_window(i, h, oh);
                for j in 0..ow {
                    let (x0, x1) = pool_window(j, w, ow);
                    let mut sum = 0f64;
                    for row in input[y0 * w..y1 * w].chunks_exact(w) {
                        sum += row[x0..x1].iter().map(|v| v.as_f64()).sum::<f64>();
                    }
                    let count = ((y1 - y0) * (x1 - x0)) as f64;
                    out_plane[i * ow + j] = T::of_f64(sum / count);
                }
            }
        });
}

/// The gradient of [`pool_planes`]: each output's gradient in `g` (planes of `oh`x`ow`) spread
/// evenly over its window of an `h`x`w` plane; overlapping windows add up.
pub fn pool_planes_grad<T: Real>(
    g: &[T],
    (oh, ow): (usize, usize),
    (h, w): (usize, usize),
) -> Vec<T> {
    let planes = g.len().checked_div(oh * ow).unwrap_or(0);
    let mut out = vec![T::ZERO; planes * h * w];
    if h * w == 0 {
        return out;
    }
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, grad_plane)| {
            let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
            for i in 0..oh {
                let (y0, y1) = pool_window(i, h, oh);
                for j in 0..ow {
                    let (x0, x1) = pool_window(j, w, ow);
                    let share = T::of_f64(g[i * ow + j].as_f64() / ((y1 - y0) * (x1 - x0)) as f64);
                    for row in grad_plane[y0 * w..y1 * w].chunks_exact_mut(w) {
                        for v in &mut row[x0..x1] {
                            *v += share;
                        }
                    }
                }
            }
        });
    out
}
