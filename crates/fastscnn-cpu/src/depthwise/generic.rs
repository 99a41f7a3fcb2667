//! Depthwise 3x3 (padding 1, stride 1 or 2) on batches of planes, written once for f32 and f64:
//! the forward pass the f64 gradient checks run, and both gradients, which training runs. Plane
//! `p` of a batch is channel `p % channels`; weights are (channels, 9).

use rayon::prelude::*;

use crate::sampling::depthwise_output_size;
use crate::Real;

/// The convolution of `x` (planes of `h`x`w`) with no bias, each output row accumulated from the
/// up-to-three input rows it overlaps, in kernel-row order.
pub fn depthwise_forward<T: Real>(
    x: &[T],
    channels: usize,
    (h, w): (usize, usize),
    weight: &[T],
    stride: usize,
) -> Vec<T> {
    let (oh, ow) = (
        depthwise_output_size(h, stride),
        depthwise_output_size(w, stride),
    );
    let planes = x.len().checked_div(h * w).unwrap_or(0);
    let mut out = vec![T::ZERO; planes * oh * ow];
    if oh * ow > 0 {
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, out_plane)| {
                let ch = plane % channels;
                let input = &x[plane * h * w..(plane + 1) * h * w];
                forward_plane(
                    input,
                    h,
                    w,
                    &weight[ch * 9..ch * 9 + 9],
                    stride,
                    out_plane,
                    ow,
                );
            });
    }
    out
}

/// One channel plane: every output row accumulates the up-to-three input rows it overlaps, with a
/// branch-free loop over the interior columns and checked loops at the two borders.
fn forward_plane<T: Real>(
    input: &[T],
    h: usize,
    w: usize,
    kernel: &[T],
    stride: usize,
    out: &mut [T],
    ow: usize,
) {
    // Output columns whose three taps (ox*stride-1 ..= ox*stride+1) all lie inside the row.
    let interior_start = 1.min(ow);
    let interior_end = if w >= 2 {
        ((w - 2) / stride + 1).min(ow)
    } else {
        interior_start
    };
    let interior_end = interior_end.max(interior_start);
    for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
        for ky in 0..3 {
            let iy = (oy * stride + ky) as isize - 1;
            if iy < 0 || iy as usize >= h {
                continue;
            }
            let row = &input[iy as usize * w..(iy as usize + 1) * w];
            let (k0, k1, k2) = (kernel[ky * 3], kernel[ky * 3 + 1], kernel[ky * 3 + 2]);
            let border = |ox: usize| {
                let mut acc = T::ZERO;
                for (kx, k) in [k0, k1, k2].into_iter().enumerate() {
                    let ix = (ox * stride + kx) as isize - 1;
                    if ix >= 0 && (ix as usize) < w {
                        acc += k * row[ix as usize];
                    }
                }
                acc
            };
            for ox in (0..interior_start).chain(interior_end..ow) {
                out_row[ox] += border(ox);
            }
            if interior_start >= interior_end {
                continue;
            }
            // Interior output column ox reads taps ox*stride-1 ..= ox*stride+1; the first interior
            // column is 1, so its window starts at stride-1.
            let dst = &mut out_row[interior_start..interior_end];
            if stride == 1 {
                // Three shifted views of the row, zipped: bounds-check free, so it vectorises.
                let n = dst.len();
                let taps = row[..n].iter().zip(&row[1..n + 1]).zip(&row[2..n + 2]);
                for (o, ((&a, &b), &c)) in dst.iter_mut().zip(taps) {
                    *o += k0 * a + k1 * b + k2 * c;
                }
            } else {
                let windows = row[stride - 1..].windows(3).step_by(stride);
                for (o, taps) in dst.iter_mut().zip(windows) {
                    *o += k0 * taps[0] + k1 * taps[1] + k2 * taps[2];
                }
            }
        }
    }
}

/// The input taps `(output index, kernel tap, input index)` of one axis: output `o` reads input
/// `o*stride + k - 1` for `k` in 0..3 when that lies inside `0..input`.
fn taps(output: usize, input: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    (0..output)
        .flat_map(move |o| {
            (0..3).filter_map(move |k| {
                let i = (o * stride + k).checked_sub(1)?;
                (i < input).then_some((o, k, i))
            })
        })
        .collect()
}

/// The gradient with respect to the input (planes of `h`x`w`): every output gradient `g` (planes
/// of `oh`x`ow`) sent back through the kernel taps that produced it.
pub fn depthwise_input_grad<T: Real>(
    g: &[T],
    channels: usize,
    (oh, ow): (usize, usize),
    (h, w): (usize, usize),
    weight: &[T],
    stride: usize,
) -> Vec<T> {
    let planes = g.len().checked_div(oh * ow).unwrap_or(0);
    let rows = taps(oh, h, stride);
    let cols = taps(ow, w, stride);
    let mut out = vec![T::ZERO; planes * h * w];
    if h * w > 0 {
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, grad_plane)| {
                let kernel = &weight[(plane % channels) * 9..(plane % channels) * 9 + 9];
                let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
                for &(oy, ky, iy) in &rows {
                    let g_row = &g[oy * ow..(oy + 1) * ow];
                    let dst = &mut grad_plane[iy * w..(iy + 1) * w];
                    for &(ox, kx, ix) in &cols {
                        dst[ix] += kernel[ky * 3 + kx] * g_row[ox];
                    }
                }
            });
    }
    out
}

/// The gradient with respect to the (channels, 9) weight: per channel, each tap's correlation of
/// the input `x` (`batch` images) and the output gradient `g`, summed in f64 over the batch in a
/// fixed order, so every run gives the same bits.
pub fn depthwise_weight_grad<T: Real>(
    x: &[T],
    g: &[T],
    (batch, channels): (usize, usize),
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    stride: usize,
) -> Vec<T> {
    let rows = taps(oh, h, stride);
    let cols = taps(ow, w, stride);
    let mut out = vec![T::ZERO; channels * 9];
    out.par_chunks_mut(9)
        .enumerate()
        .for_each(|(ch, grad_kernel)| {
            let mut acc = [0f64; 9];
            for b in 0..batch {
                let plane = b * channels + ch;
                let x = &x[plane * h * w..(plane + 1) * h * w];
                let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
                for &(oy, ky, iy) in &rows {
                    let g_row = &g[oy * ow..(oy + 1) * ow];
                    let x_row = &x[iy * w..(iy + 1) * w];
                    for &(ox, kx, ix) in &cols {
                        acc[ky * 3 + kx] += (g_row[ox] * x_row[ix]).as_f64();
                    }
                }
            }
            for (o, a) in grad_kernel.iter_mut().zip(acc) {
                *o = T::of_f64(a);
            }
        });
    out
}
