//! The bilinear resize written once for f32 and f64, per output pixel with PyTorch's
//! `upsample_bilinear2d` arithmetic (horizontal taps, then vertical): the forward pass and the
//! fused argmax the candle ops run, and the gradient. The separable f32 kernels of this module's
//! parent compute the same values and are tested against these.

use rayon::prelude::*;

use crate::sampling::{source_index, taps};
use crate::Real;

/// `x`, planes of `h`x`w`, resized to `oh`x`ow`.
pub fn resize_forward<T: Real>(
    x: &[T],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    align_corners: bool,
) -> Vec<T> {
    let planes = x.len().checked_div(h * w).unwrap_or(0);
    let columns = taps::<T>(w, ow, align_corners);
    let mut out = vec![T::ZERO; planes * oh * ow];
    if oh * ow == 0 {
        return out;
    }
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, out_plane)| {
            let input = &x[plane * h * w..(plane + 1) * h * w];
            for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
                let (y0, y1, l) = source_index(oy, h, oh, align_corners);
                let (wy0, wy1) = (T::of_f64(1.0 - l), T::of_f64(l));
                let r0 = &input[y0 * w..(y0 + 1) * w];
                let r1 = &input[y1 * w..(y1 + 1) * w];
                for (o, &(x0, x1, wx0, wx1)) in out_row.iter_mut().zip(&columns) {
                    let top = wx0 * r0[x0] + wx1 * r0[x1];
                    let bottom = wx0 * r1[x0] + wx1 * r1[x1];
                    *o = wy0 * top + wy1 * bottom;
                }
            }
        });
    out
}

/// The gradient of [`resize_forward`]: each output's gradient `g` (planes of `oh`x`ow`) sent back
/// to its four source pixels with the forward's weights, in the forward's order reversed: each
/// output row's gradients are first gathered onto one input-width row through the column taps,
/// which is then added to its two source rows with the row weights (two scattered adds per output
/// instead of four).
pub fn resize_grad<T: Real>(
    g: &[T],
    (oh, ow): (usize, usize),
    (h, w): (usize, usize),
    align_corners: bool,
) -> Vec<T> {
    let planes = g.len().checked_div(oh * ow).unwrap_or(0);
    let columns = taps::<T>(w, ow, align_corners);
    let mut out = vec![T::ZERO; planes * h * w];
    if h * w == 0 || ow == 0 {
        return out;
    }
    out.par_chunks_mut(h * w).enumerate().for_each_init(
        || vec![T::ZERO; w],
        |row_grad, (plane, grad_plane)| {
            let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
            for (oy, g_row) in g.chunks_exact(ow).enumerate() {
                row_grad.fill(T::ZERO);
                for (&gv, &(x0, x1, wx0, wx1)) in g_row.iter().zip(&columns) {
                    row_grad[x0] += wx0 * gv;
                    row_grad[x1] += wx1 * gv;
                }
                let (y0, y1, l) = source_index(oy, h, oh, align_corners);
                for (y, wy) in [(y0, T::of_f64(1.0 - l)), (y1, T::of_f64(l))] {
                    let dst = &mut grad_plane[y * w..(y + 1) * w];
                    for (d, &r) in dst.iter_mut().zip(row_grad.iter()) {
                        *d += wy * r;
                    }
                }
            }
        },
    );
    out
}

/// The argmax over the `classes` planes of each image of `scores` after [`resize_forward`], as
/// (images, oh, ow) labels: the same arithmetic, so the same values, and the first class winning
/// ties, as `argmax` does.
pub fn resize_argmax_forward<T: Real>(
    scores: &[T],
    classes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    align_corners: bool,
) -> Vec<u32> {
    let images = scores.len().checked_div(classes * h * w).unwrap_or(0);
    let columns = taps::<T>(w, ow, align_corners);
    let mut labels = vec![0u32; images * oh * ow];
    if ow == 0 {
        return labels;
    }
    labels
        .par_chunks_mut(ow)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (b, oy) = (row / oh, row % oh);
            let (y0, y1, l) = source_index(oy, h, oh, align_corners);
            let (wy0, wy1) = (T::of_f64(1.0 - l), T::of_f64(l));
            let mut best = vec![T::ZERO; ow];
            for class in 0..classes {
                let plane = &scores[(b * classes + class) * h * w..][..h * w];
                let r0 = &plane[y0 * w..(y0 + 1) * w];
                let r1 = &plane[y1 * w..(y1 + 1) * w];
                for ((&(x0, x1, wx0, wx1), best), label) in
                    columns.iter().zip(best.iter_mut()).zip(out_row.iter_mut())
                {
                    // The forward's order of operations, so the values are identical.
                    let top = wx0 * r0[x0] + wx1 * r0[x1];
                    let bottom = wx0 * r1[x0] + wx1 * r1[x1];
                    let v = wy0 * top + wy1 * bottom;
                    if class == 0 || v > *best {
                        *best = v;
                        *label = class as u32;
                    }
                }
            }
        });
    labels
}
