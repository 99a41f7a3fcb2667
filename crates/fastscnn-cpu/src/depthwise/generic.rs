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

/// The gradient with respect to the input (planes of `h`x`w`): every output gradient `g` (planes
/// of `oh`x`ow`) sent back through the kernel taps that produced it. At stride 1 that is the
/// forward convolution of `g` with each kernel turned by 180°; at stride 2 each input column
/// takes the taps of its parity (even columns the centre tap of one output, odd ones the outer
/// taps of two), so every row is written in one pass.
///
/// # Panics
/// If `stride` is neither 1 nor 2, or at stride 1 the sizes differ.
pub fn depthwise_input_grad<T: Real>(
    g: &[T],
    channels: usize,
    (oh, ow): (usize, usize),
    (h, w): (usize, usize),
    weight: &[T],
    stride: usize,
) -> Vec<T> {
    assert!(stride == 1 || stride == 2, "depthwise stride {stride}");
    if stride == 1 {
        assert_eq!((oh, ow), (h, w), "a stride-1 depthwise conv keeps the size");
        return depthwise_forward(g, channels, (oh, ow), &turned_kernels(weight), 1);
    }
    let planes = g.len().checked_div(oh * ow).unwrap_or(0);
    let mut out = vec![T::ZERO; planes * h * w];
    if oh * ow > 0 {
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, grad_plane)| {
                let kernel = &weight[(plane % channels) * 9..(plane % channels) * 9 + 9];
                let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
                for (oy, g_row) in g.chunks_exact(ow).enumerate() {
                    for ky in 0..3 {
                        // Input row 2·oy + ky − 1, when inside the plane.
                        let Some(iy) = (2 * oy + ky).checked_sub(1).filter(|&iy| iy < h) else {
                            continue;
                        };
                        let dst = &mut grad_plane[iy * w..(iy + 1) * w];
                        stride2_row_grad(dst, g_row, &kernel[ky * 3..ky * 3 + 3]);
                    }
                }
            });
    }
    out
}

/// Each channel's 3x3 kernel turned by 180°: the stride-1 input gradient's kernel.
pub fn turned_kernels<T: Real>(weight: &[T]) -> Vec<T> {
    weight
        .chunks_exact(9)
        .flat_map(|k| k.iter().rev().copied())
        .collect()
}

/// One input row's gradient from one output row at stride 2 through kernel row `k`: input column
/// 2m takes `k[1]·g[m]`, column 2m + 1 takes `k[2]·g[m] + k[0]·g[m + 1]`.
fn stride2_row_grad<T: Real>(dst: &mut [T], g: &[T], k: &[T]) {
    let (k0, k1, k2) = (k[0], k[1], k[2]);
    let pairs = dst.len() / 2;
    // Pairs whose odd column also has an output to its right.
    let full = pairs.min(g.len().saturating_sub(1));
    for (pair, (&a, &b)) in dst[..2 * full]
        .chunks_exact_mut(2)
        .zip(g.iter().zip(&g[1..]))
    {
        pair[0] += k1 * a;
        pair[1] += k2 * a + k0 * b;
    }
    for m in full..pairs {
        dst[2 * m] += k1 * g[m];
        dst[2 * m + 1] += k2 * g[m];
    }
    if dst.len() % 2 == 1 {
        dst[2 * pairs] += k1 * g[pairs];
    }
}

/// Independent partial sums of a dot product: the adds pipeline instead of waiting on each other,
/// and vectorise.
const LANES: usize = 8;

/// Σ a·b with each product rounded to `T` and summed in f64 over [`LANES`] partial sums in a
/// fixed order, so every run gives the same bits.
#[inline]
fn dot_f64<T: Real>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(&u, &v)| (u * v).as_f64())
        .sum();
    for (u, v) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += (u[lane] * v[lane]).as_f64();
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The gradient with respect to the (channels, 9) weight: per channel, each tap's correlation of
/// the input `x` (`batch` images) and the output gradient `g`, summed in f64. Tap (ky, kx) pairs
/// output row oy with input row oy·stride + ky − 1 and output column ox with input column
/// ox·stride + kx − 1; at stride 2 each input row is first split into its even and odd columns,
/// so every tap is a dot product of two contiguous runs.
///
/// # Panics
/// If `stride` is neither 1 nor 2.
pub fn depthwise_weight_grad<T: Real>(
    x: &[T],
    g: &[T],
    (batch, channels): (usize, usize),
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    stride: usize,
) -> Vec<T> {
    assert!(stride == 1 || stride == 2, "depthwise stride {stride}");
    // Output columns [lo, hi) whose tap kx lies inside the row: ox·stride + kx − 1 in 0..w.
    let columns = |kx: usize| {
        let lo = usize::from(kx == 0);
        let hi = ow.min((w + 1 - kx).div_ceil(stride));
        (lo, hi.max(lo))
    };
    let mut out = vec![T::ZERO; channels * 9];
    if oh * ow == 0 {
        return out;
    }
    out.par_chunks_mut(9)
        .enumerate()
        .for_each(|(ch, grad_kernel)| {
            let mut acc = [0f64; 9];
            // At stride 2, phases[p][j] = x_row[2j + p]; stride 1 reads the row itself.
            let mut phases: Vec<Vec<T>> = vec![Vec::new(); stride];
            for b in 0..batch {
                let plane = b * channels + ch;
                let x = &x[plane * h * w..(plane + 1) * h * w];
                let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
                for (oy, g_row) in g.chunks_exact(ow).enumerate() {
                    for ky in 0..3 {
                        let Some(iy) = (oy * stride + ky).checked_sub(1).filter(|&iy| iy < h)
                        else {
                            continue;
                        };
                        let x_row = &x[iy * w..(iy + 1) * w];
                        if stride > 1 {
                            for (p, phase) in phases.iter_mut().enumerate() {
                                phase.clear();
                                phase.extend(x_row.iter().skip(p).step_by(stride));
                            }
                        }
                        for kx in 0..3 {
                            let (lo, hi) = columns(kx);
                            if lo == hi {
                                continue;
                            }
                            let start = lo * stride + kx - 1;
                            let phase = if stride == 1 {
                                x_row
                            } else {
                                &phases[start % stride]
                            };
                            let taps = &phase[start / stride..start / stride + (hi - lo)];
                            acc[ky * 3 + kx] += dot_f64(&g_row[lo..hi], taps);
                        }
                    }
                }
            }
            for (o, a) in grad_kernel.iter_mut().zip(acc) {
                *o = T::of_f64(a);
            }
        });
    out
}
