//! Dense KxK convolution written once for f32 and f64, with both its gradients: what training runs
//! for the stem and the auxiliary heads' 3x3 convolutions (the f32 forward is [`DenseConv`]'s).
//!
//! Every pass is im2col and a matrix product over bands of output rows, so the im2col matrix of a
//! band (`in·k·k` rows, about a megabyte) stays in cache and the full one is never stored:
//! forward `out = W · cols`, weight gradient `dW = Σ g · colsᵀ`, input gradient
//! `dcols = Wᵀ · g` scattered back onto the input (col2im).
//!
//! [`DenseConv`]: crate::DenseConv

use std::ops::Range;

use rayon::prelude::*;

use crate::{Real, SendPtr};

/// The shape of a dense convolution over one input size: weights (out, in, k, k) row-major,
/// planes of `h`x`w` in, `oh`x`ow` out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseGeometry {
    /// Channels of the input map.
    pub in_channels: usize,
    /// Channels of the output map.
    pub out_channels: usize,
    /// Side of the square kernel.
    pub kernel: usize,
    /// Step between kernel positions along both axes.
    pub stride: usize,
    /// Zeros added on each side of the input.
    pub padding: usize,
    /// Input height and width.
    pub input: (usize, usize),
}

impl DenseGeometry {
    /// Output height and width: `(size + 2·padding − kernel) / stride + 1`, or `None` where the
    /// padded input is smaller than the kernel or the stride is zero.
    pub fn output(&self) -> Option<(usize, usize)> {
        let side = |size: usize| {
            let span = (size + 2 * self.padding).checked_sub(self.kernel)?;
            Some(span.checked_div(self.stride)? + 1)
        };
        Some((side(self.input.0)?, side(self.input.1)?))
    }

    /// Checks the lengths of the inputs `x`, output gradients `g` and weights given, for `batch`
    /// images: the products read them through raw pointers.
    fn check(&self, batch: usize, x: Option<usize>, g: Option<usize>, weight: Option<usize>) {
        let (h, w) = self.input;
        let (oh, ow) = self.output().unwrap_or((0, 0));
        let expected = [
            (x, batch * self.in_channels * h * w, "input"),
            (g, batch * self.out_channels * oh * ow, "output gradient"),
            (weight, self.out_channels * self.depth(), "weight"),
        ];
        for (len, want, what) in expected {
            if let Some(len) = len {
                assert_eq!(len, want, "dense conv {what} of {self:?}");
            }
        }
    }

    /// Rows of the im2col matrix: one per weight of an output channel.
    fn depth(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Output rows per band: a band's im2col matrix about 256 Ki elements.
    fn band_rows(&self, ow: usize) -> usize {
        ((1 << 18) / (self.depth() * ow).max(1)).max(1)
    }

    /// Output rows `[start, end)` of every band, in order.
    fn bands(&self) -> Vec<Range<usize>> {
        let (oh, ow) = self.output().unwrap_or((0, 0));
        let rows = self.band_rows(ow);
        (0..oh)
            .step_by(rows)
            .map(|start| start..(start + rows).min(oh))
            .collect()
    }

    /// The im2col matrix of output rows `rows` of one image: row `(ci·k + ky)·k + kx`, column
    /// `p` holds the input under tap (ky, kx) of channel ci for the band's output pixel p, or zero
    /// in the padding.
    fn im2col<T: Real>(&self, image: &[T], rows: &Range<usize>, cols: &mut Vec<T>) {
        let (h, w) = self.input;
        let (_, ow) = self.output().unwrap_or((0, 0));
        let (k, s, pad) = (self.kernel, self.stride, self.padding);
        cols.clear();
        cols.reserve(self.depth() * rows.len() * ow);
        for ci in 0..self.in_channels {
            let plane = &image[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    for oy in rows.clone() {
                        let row = (oy * s + ky)
                            .checked_sub(pad)
                            .filter(|&iy| iy < h)
                            .map(|iy| &plane[iy * w..(iy + 1) * w]);
                        let Some(row) = row else {
                            cols.extend(std::iter::repeat_n(T::ZERO, ow));
                            continue;
                        };
                        cols.extend((0..ow).map(|ox| {
                            (ox * s + kx)
                                .checked_sub(pad)
                                .and_then(|ix| row.get(ix))
                                .copied()
                                .unwrap_or(T::ZERO)
                        }));
                    }
                }
            }
        }
    }

    /// Adds the im2col-shaped gradient `dcols` of output rows `rows` back onto one image's input
    /// gradient (col2im).
    fn col2im<T: Real>(&self, dcols: &[T], rows: &Range<usize>, image: &mut [T]) {
        let (h, w) = self.input;
        let (_, ow) = self.output().unwrap_or((0, 0));
        let (k, s, pad) = (self.kernel, self.stride, self.padding);
        let pixels = rows.len() * ow;
        for ci in 0..self.in_channels {
            let plane = &mut image[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let tap = &dcols[((ci * k + ky) * k + kx) * pixels..][..pixels];
                    for (band_row, oy) in rows.clone().enumerate() {
                        let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&iy| iy < h) else {
                            continue;
                        };
                        let row = &mut plane[iy * w..(iy + 1) * w];
                        let values = &tap[band_row * ow..(band_row + 1) * ow];
                        for (ox, &v) in values.iter().enumerate() {
                            if let Some(dst) = (ox * s + kx)
                                .checked_sub(pad)
                                .and_then(|ix| row.get_mut(ix))
                            {
                                *dst += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m×n, row stride dst_rs) (+)= lhs (m×k) · rhs (k×n)`, each given by its row and column
/// strides, on the `gemm` crate in this thread.
///
/// # Safety
/// Every pointer must address its whole matrix under its strides, and `dst` no other's memory.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::of_f64(1.0),
            T::of_f64(1.0),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The element-wise sum of equally long `partials`, added in f64 in their order, so that every
/// run gives the same bits whatever the threads that produced them.
pub(crate) fn sum_in_order<T: Real>(partials: &[Vec<T>], len: usize) -> Vec<T> {
    let mut sum = vec![0f64; len];
    for partial in partials {
        for (s, &v) in sum.iter_mut().zip(partial) {
            *s += v.as_f64();
        }
    }
    sum.into_iter().map(T::of_f64).collect()
}

/// The convolution of `x` (`batch` images of (in, h, w)) by `weight` (out, in, k, k), no bias:
/// (batch, out, oh, ow).
///
/// # Panics
/// If `x` or `weight` does not hold what `batch` and `geometry` say.
pub fn dense_forward<T: Real>(
    x: &[T],
    batch: usize,
    geometry: &DenseGeometry,
    weight: &[T],
) -> Vec<T> {
    geometry.check(batch, Some(x.len()), None, Some(weight.len()));
    let Some((oh, ow)) = geometry.output() else {
        return Vec::new();
    };
    let (h, w) = geometry.input;
    let (cin, cout, depth) = (
        geometry.in_channels,
        geometry.out_channels,
        geometry.depth(),
    );
    let plane = oh * ow;
    let mut out = vec![T::ZERO; batch * cout * plane];
    let dst = SendPtr(out.as_mut_ptr());
    let tasks: Vec<(usize, Range<usize>)> = (0..batch)
        .flat_map(|b| geometry.bands().into_iter().map(move |rows| (b, rows)))
        .collect();
    tasks.par_iter().for_each_init(Vec::new, |cols, (b, rows)| {
        geometry.im2col(&x[b * cin * h * w..(b + 1) * cin * h * w], rows, cols);
        let pixels = rows.len() * ow;
        // SAFETY: this task writes columns rows.start·ow .. + pixels of every output channel of
        // image b, which no other task writes; weight is (cout, depth), cols (depth, pixels).
        unsafe {
            product(
                (cout, pixels, depth),
                dst.get().add(b * cout * plane + rows.start * ow),
                plane,
                false,
                weight.as_ptr(),
                (depth, 1),
                cols.as_ptr(),
                (pixels, 1),
            );
        }
    });
    out
}

/// The gradient with respect to the (out, in, k, k) weight from the input `x` and the output
/// gradient `g` (batch, out, oh, ow): each band's product summed in f64 in a fixed order, so every
/// run gives the same bits.
///
/// # Panics
/// If `x` or `g` does not hold what `batch` and `geometry` say.
pub fn dense_weight_grad<T: Real>(
    x: &[T],
    g: &[T],
    batch: usize,
    geometry: &DenseGeometry,
) -> Vec<T> {
    geometry.check(batch, Some(x.len()), Some(g.len()), None);
    let (cout, depth) = (geometry.out_channels, geometry.depth());
    let Some((oh, ow)) = geometry.output() else {
        return vec![T::ZERO; cout * depth];
    };
    let (h, w) = geometry.input;
    let cin = geometry.in_channels;
    let plane = oh * ow;
    let tasks: Vec<(usize, Range<usize>)> = (0..batch)
        .flat_map(|b| geometry.bands().into_iter().map(move |rows| (b, rows)))
        .collect();
    let partials: Vec<Vec<T>> = tasks
        .par_iter()
        .map_init(Vec::new, |cols, (b, rows)| {
            geometry.im2col(&x[b * cin * h * w..(b + 1) * cin * h * w], rows, cols);
            let pixels = rows.len() * ow;
            let mut partial = vec![T::ZERO; cout * depth];
            // SAFETY: g's band is (cout, pixels) with row stride plane inside image b; colsᵀ is
            // (pixels, depth) read with strides (1, pixels); partial is (cout, depth).
            unsafe {
                product(
                    (cout, depth, pixels),
                    partial.as_mut_ptr(),
                    depth,
                    false,
                    g.as_ptr().add(b * cout * plane + rows.start * ow),
                    (plane, 1),
                    cols.as_ptr(),
                    (1, pixels),
                );
            }
            partial
        })
        .collect();
    sum_in_order(&partials, cout * depth)
}

/// The gradient with respect to the input (batch, in, h, w) from the output gradient `g` and the
/// weight: one image per task, its bands in order.
///
/// # Panics
/// If `g` or `weight` does not hold what `batch` and `geometry` say.
pub fn dense_input_grad<T: Real>(
    g: &[T],
    batch: usize,
    geometry: &DenseGeometry,
    weight: &[T],
) -> Vec<T> {
    geometry.check(batch, None, Some(g.len()), Some(weight.len()));
    let (h, w) = geometry.input;
    let (cin, cout, depth) = (
        geometry.in_channels,
        geometry.out_channels,
        geometry.depth(),
    );
    let mut out = vec![T::ZERO; batch * cin * h * w];
    let Some((oh, ow)) = geometry.output() else {
        return out;
    };
    let plane = oh * ow;
    if cin * h * w == 0 {
        return out;
    }
    out.par_chunks_mut(cin * h * w)
        .enumerate()
        .for_each(|(b, image)| {
            let mut dcols = Vec::new();
            for rows in geometry.bands() {
                let pixels = rows.len() * ow;
                dcols.clear();
                dcols.resize(depth * pixels, T::ZERO);
                // SAFETY: Wᵀ is (depth, cout) read from the (cout, depth) weight with strides
                // (1, depth); g's band is (cout, pixels) with row stride plane; dcols is
                // (depth, pixels).
                unsafe {
                    product(
                        (depth, pixels, cout),
                        dcols.as_mut_ptr(),
                        pixels,
                        false,
                        weight.as_ptr(),
                        (1, depth),
                        g.as_ptr().add(b * cout * plane + rows.start * ow),
                        (plane, 1),
                    );
                }
                geometry.col2im(&dcols, &rows, image);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution and its gradients by their definitions, in f64.
    struct Naive<'a> {
        geometry: DenseGeometry,
        batch: usize,
        x: &'a [f64],
        weight: &'a [f64],
    }

    impl Naive<'_> {
        /// (x index, weight index, output index) of every product of the convolution.
        fn taps(&self) -> Vec<(usize, usize, usize)> {
            let g = &self.geometry;
            let (h, w) = g.input;
            let (oh, ow) = g.output().unwrap();
            let (k, s, p) = (g.kernel, g.stride, g.padding);
            let mut taps = Vec::new();
            for b in 0..self.batch {
                for co in 0..g.out_channels {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            for ci in 0..g.in_channels {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (iy, ix) = (oy * s + ky, ox * s + kx);
                                        if iy < p || ix < p || iy - p >= h || ix - p >= w {
                                            continue;
                                        }
                                        taps.push((
                                            ((b * g.in_channels + ci) * h + iy - p) * w + ix - p,
                                            ((co * g.in_channels + ci) * k + ky) * k + kx,
                                            ((b * g.out_channels + co) * oh + oy) * ow + ox,
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            taps
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1009) as f64 / 504.5 - 1.0)
            .collect()
    }

    #[test]
    fn forward_and_gradients_match_their_definitions() {
        for (cin, cout, k, s, p, (h, w)) in [
            (3, 4, 3, 2, 0, (9, 13)),
            (3, 4, 3, 2, 1, (8, 7)),
            (5, 2, 3, 1, 1, (6, 11)),
            (2, 3, 1, 1, 0, (4, 5)),
            (2, 2, 3, 1, 1, (1, 1)),
            (4, 3, 3, 1, 0, (3, 3)),
        ] {
            let geometry = DenseGeometry {
                in_channels: cin,
                out_channels: cout,
                kernel: k,
                stride: s,
                padding: p,
                input: (h, w),
            };
            let batch = 2;
            let (oh, ow) = geometry.output().unwrap();
            let x = values(batch * cin * h * w, 1);
            let weight = values(cout * cin * k * k, 2);
            let g = values(batch * cout * oh * ow, 3);
            let naive = Naive {
                geometry,
                batch,
                x: &x,
                weight: &weight,
            };
            let (mut y, mut dw, mut dx) = (
                vec![0.0; g.len()],
                vec![0.0; weight.len()],
                vec![0.0; x.len()],
            );
            for (xi, wi, yi) in naive.taps() {
                y[yi] += naive.x[xi] * naive.weight[wi];
                dw[wi] += naive.x[xi] * g[yi];
                dx[xi] += naive.weight[wi] * g[yi];
            }
            let close = |a: &[f64], b: &[f64], what: &str| {
                assert_eq!(a.len(), b.len(), "{what} {geometry:?}");
                for (u, v) in a.iter().zip(b) {
                    assert!((u - v).abs() < 1e-12, "{what} {geometry:?}: {u} vs {v}");
                }
            };
            close(&dense_forward(&x, batch, &geometry, &weight), &y, "forward");
            close(
                &dense_weight_grad(&x, &g, batch, &geometry),
                &dw,
                "weight gradient",
            );
            close(
                &dense_input_grad(&g, batch, &geometry, &weight),
                &dx,
                "input gradient",
            );
        }
    }

    #[test]
    fn bands_cover_every_output_row_once() {
        let geometry = DenseGeometry {
            in_channels: 64,
            out_channels: 32,
            kernel: 3,
            stride: 1,
            padding: 1,
            input: (61, 128),
        };
        let bands = geometry.bands();
        assert!(bands.len() > 1);
        let rows: Vec<usize> = bands.into_iter().flatten().collect();
        assert_eq!(rows, (0..61).collect::<Vec<_>>());
    }

    #[test]
    fn an_input_smaller_than_the_kernel_has_no_output() {
        let geometry = DenseGeometry {
            in_channels: 1,
            out_channels: 1,
            kernel: 3,
            stride: 1,
            padding: 0,
            input: (2, 5),
        };
        assert_eq!(geometry.output(), None);
    }
}
