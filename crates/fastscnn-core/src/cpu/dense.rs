//! Dense KxK convolution (the 3x3/2 stem, OpenMMLab's 3x3 pyramid-pooling output) as im2col + GEMM
//! over bands of output rows.
//!
//! A band's im2col matrix (in·k·k, band pixels) is small enough to stay in cache, so the full
//! im2col matrix, 27 floats per output pixel for the stem, is never stored; bands run in parallel,
//! each with its own scratch.

use rayon::prelude::*;

use super::epilogue::finish_row;
use super::SendPtr;

/// A dense convolution with its BatchNorm folded in: `weight` is (out, in, k, k) row-major.
#[derive(Debug, Clone)]
pub struct DenseConv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub relu: bool,
}

impl DenseConv {
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let size = |n: usize| (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1;
        (size(h), size(w))
    }

    /// One image: `input` is (in, h, w), `out` (out, oh, ow).
    pub fn run(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let (oh, ow) = self.output_size(h, w);
        let (cin, cout, k) = (self.in_channels, self.out_channels, self.kernel);
        assert!(
            h + 2 * self.padding >= k && w + 2 * self.padding >= k,
            "dense conv input too small"
        );
        assert_eq!(input.len(), cin * h * w, "dense conv input");
        assert_eq!(out.len(), cout * oh * ow, "dense conv output");
        assert_eq!(self.weight.len(), cout * cin * k * k, "dense conv weight");
        let depth = cin * k * k;
        // About 64 KiB of im2col per band, at least one row, enough bands for every thread.
        let by_cache = (16 * 1024 / (depth * ow)).max(1);
        let by_threads = oh.div_ceil(4 * rayon::current_num_threads()).max(1);
        let band = by_cache.min(by_threads);
        let pixels = oh * ow;
        let dst = SendPtr(out.as_mut_ptr());
        (0..oh.div_ceil(band)).into_par_iter().for_each_init(
            || vec![0f32; depth * band * ow],
            |cols, b| {
                let y0 = b * band;
                let rows = band.min(oh - y0);
                let n = rows * ow;
                self.im2col(input, h, w, y0, rows, ow, &mut cols[..depth * n]);
                // SAFETY: bands write disjoint row ranges of every output plane, in bounds by the
                // size checks above.
                unsafe {
                    let dst = dst.get().add(y0 * ow);
                    gemm::gemm(
                        cout,
                        n,
                        depth,
                        dst,
                        1,
                        pixels as isize,
                        false,
                        self.weight.as_ptr(),
                        1,
                        depth as isize,
                        cols.as_ptr(),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    for c in 0..cout {
                        let row = std::slice::from_raw_parts_mut(dst.add(c * pixels), n);
                        finish_row(row, self.bias[c], None, self.relu);
                    }
                }
            },
        );
    }

    /// Rows `(ci, ky, kx)` of the im2col matrix for output rows `y0..y0 + rows`.
    #[allow(clippy::too_many_arguments)]
    fn im2col(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        y0: usize,
        rows: usize,
        ow: usize,
        cols: &mut [f32],
    ) {
        let (k, s, p) = (self.kernel, self.stride, self.padding as isize);
        let n = rows * ow;
        for ci in 0..self.in_channels {
            let plane = &input[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let dst = &mut cols[((ci * k + ky) * k + kx) * n..][..n];
                    for (r, dst_row) in dst.chunks_exact_mut(ow).enumerate() {
                        let iy = ((y0 + r) * s + ky) as isize - p;
                        if iy < 0 || iy >= h as isize {
                            dst_row.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        for (ox, d) in dst_row.iter_mut().enumerate() {
                            let ix = (ox * s + kx) as isize - p;
                            *d = if ix >= 0 && ix < w as isize {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_naive_convolution_with_and_without_padding() {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        for (k, stride, padding, h, w) in [
            (3, 2, 0, 9, 13),
            (3, 2, 1, 8, 12),
            (3, 1, 1, 5, 7),
            (1, 1, 0, 3, 4),
        ] {
            let (cin, cout) = (3, 5);
            let conv = DenseConv {
                weight: (0..cout * cin * k * k).map(|i| value(i + 3)).collect(),
                bias: (0..cout).map(value).collect(),
                in_channels: cin,
                out_channels: cout,
                kernel: k,
                stride,
                padding,
                relu: true,
            };
            let x: Vec<f32> = (0..cin * h * w).map(|i| value(i + 100)).collect();
            let (oh, ow) = conv.output_size(h, w);
            let mut out = vec![f32::NAN; cout * oh * ow];
            conv.run(&x, h, w, &mut out);
            for co in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = conv.bias[co] as f64;
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * stride + ky) as isize - padding as isize;
                                    let ix = (ox * stride + kx) as isize - padding as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        acc += conv.weight[((co * cin + ci) * k + ky) * k + kx]
                                            as f64
                                            * x[(ci * h + iy as usize) * w + ix as usize] as f64;
                                    }
                                }
                            }
                        }
                        let got = out[(co * oh + oy) * ow + ox];
                        assert!(
                            (got as f64 - acc.max(0.0)).abs() < 1e-4,
                            "k{k} s{stride} p{padding}"
                        );
                    }
                }
            }
        }
    }
}
