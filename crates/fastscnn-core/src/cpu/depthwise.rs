//! Depthwise 3x3 convolution (padding 1, stride 1 or 2) with bias and ReLU fused, vectorised.
//!
//! Each channel plane is first copied into a zero-bordered scratch plane, so the inner loops have
//! no edge cases: an output row is nine multiply-adds of contiguous, equally long input rows,
//! which the compiler turns into full-width vector FMAs. For stride 2 the scratch rows are stored
//! de-interleaved (even columns, then odd), which makes the strided taps contiguous too.

use rayon::prelude::*;

use super::simd::{dispatch, MulAdd};
use crate::ops::depthwise_output_size;

/// A depthwise 3x3 convolution with its BatchNorm folded in: `weight` is (channels, 9).
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub channels: usize,
    pub stride: usize,
    pub relu: bool,
}

impl DepthwiseConv {
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        channels: usize,
        stride: usize,
        relu: bool,
    ) -> Self {
        assert_eq!(weight.len(), channels * 9, "depthwise weight");
        assert_eq!(bias.len(), channels, "depthwise bias");
        assert!(stride == 1 || stride == 2, "depthwise stride {stride}");
        Self {
            weight,
            bias,
            channels,
            stride,
            relu,
        }
    }

    /// Output height and width for an `h`x`w` input.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            depthwise_output_size(h, self.stride),
            depthwise_output_size(w, self.stride),
        )
    }

    /// One image: `input` is (channels, h, w), `out` (channels, oh, ow).
    pub fn run(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let (oh, ow) = self.output_size(h, w);
        assert_eq!(input.len(), self.channels * h * w, "depthwise input");
        assert_eq!(out.len(), self.channels * oh * ow, "depthwise output");
        // Padded width, rounded up to even so the de-interleaved halves have equal lengths.
        let pw = (w + 2).next_multiple_of(2);
        out.par_chunks_mut(oh * ow)
            .zip(input.par_chunks(h * w))
            .enumerate()
            .for_each_init(
                || vec![0f32; (h + 2) * pw],
                |scratch, (c, (out, plane))| {
                    let taps: &[f32; 9] = self.weight[c * 9..c * 9 + 9].try_into().unwrap();
                    let geometry = Geometry { h, w, pw, ow };
                    if self.stride == 1 {
                        pad_plane(plane, geometry, scratch);
                        stride1(scratch, geometry, taps, self.bias[c], self.relu, out);
                    } else {
                        pad_plane_deinterleaved(plane, geometry, scratch);
                        stride2(scratch, geometry, taps, self.bias[c], self.relu, out);
                    }
                },
            );
    }
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    /// Width of a scratch row.
    pw: usize,
    ow: usize,
}

/// Scratch row `y + 1` holds input row `y` at columns `1..=w`; row 0, the last row and the border
/// columns are zero.
fn pad_plane(plane: &[f32], g: Geometry, scratch: &mut [f32]) {
    scratch[..g.pw].fill(0.0);
    scratch[(g.h + 1) * g.pw..].fill(0.0);
    for (y, row) in plane.chunks_exact(g.w).enumerate() {
        let dst = &mut scratch[(y + 1) * g.pw..(y + 2) * g.pw];
        dst[0] = 0.0;
        dst[1..=g.w].copy_from_slice(row);
        dst[g.w + 1..].fill(0.0);
    }
}

/// As [`pad_plane`], each scratch row then split into its even padded columns (first half) and
/// its odd ones (second half).
fn pad_plane_deinterleaved(plane: &[f32], g: Geometry, scratch: &mut [f32]) {
    let half = g.pw / 2;
    scratch[..g.pw].fill(0.0);
    scratch[(g.h + 1) * g.pw..].fill(0.0);
    for (y, row) in plane.chunks_exact(g.w).enumerate() {
        let dst = &mut scratch[(y + 1) * g.pw..(y + 2) * g.pw];
        let (even, odd) = dst.split_at_mut(half);
        even.fill(0.0);
        odd.fill(0.0);
        // Padded column p = x + 1: even p lands in `even[p / 2]`, odd p in `odd[p / 2]`.
        for (x, &v) in row.iter().enumerate() {
            let p = x + 1;
            if p % 2 == 0 {
                even[p / 2] = v;
            } else {
                odd[p / 2] = v;
            }
        }
    }
}

#[inline(always)]
fn stride1_body<M: MulAdd>(
    scratch: &[f32],
    g: Geometry,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    let ow = g.ow;
    for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
        out_row.fill(bias);
        for ky in 0..3 {
            let row = &scratch[(oy + ky) * g.pw..][..ow + 2];
            let (a, b, c) = (&row[..ow], &row[1..ow + 1], &row[2..ow + 2]);
            let [w0, w1, w2] = [taps[ky * 3], taps[ky * 3 + 1], taps[ky * 3 + 2]];
            for i in 0..ow {
                out_row[i] = M::mul_add(
                    w2,
                    c[i],
                    M::mul_add(w1, b[i], M::mul_add(w0, a[i], out_row[i])),
                );
            }
        }
        if relu {
            for v in out_row.iter_mut() {
                *v = if *v > 0.0 { *v } else { 0.0 };
            }
        }
    }
}

#[inline(always)]
fn stride2_body<M: MulAdd>(
    scratch: &[f32],
    g: Geometry,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    let (ow, half) = (g.ow, g.pw / 2);
    for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
        out_row.fill(bias);
        for ky in 0..3 {
            // Output column x reads padded columns 2x, 2x + 1 and 2x + 2.
            let row = &scratch[(2 * oy + ky) * g.pw..][..g.pw];
            let (even, odd) = row.split_at(half);
            let (a, b, c) = (&even[..ow], &odd[..ow], &even[1..ow + 1]);
            let [w0, w1, w2] = [taps[ky * 3], taps[ky * 3 + 1], taps[ky * 3 + 2]];
            for i in 0..ow {
                out_row[i] = M::mul_add(
                    w2,
                    c[i],
                    M::mul_add(w1, b[i], M::mul_add(w0, a[i], out_row[i])),
                );
            }
        }
        if relu {
            for v in out_row.iter_mut() {
                *v = if *v > 0.0 { *v } else { 0.0 };
            }
        }
    }
}

dispatch!(fn stride1(scratch: &[f32], g: Geometry, taps: &[f32; 9], bias: f32, relu: bool, out: &mut [f32]) => stride1_body);
dispatch!(fn stride2(scratch: &[f32], g: Geometry, taps: &[f32; 9], bias: f32, relu: bool, out: &mut [f32]) => stride2_body);

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(conv: &DepthwiseConv, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (oh, ow) = conv.output_size(h, w);
        let mut out = Vec::new();
        for c in 0..conv.channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = conv.bias[c] as f64;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy * conv.stride + ky) as isize - 1;
                            let ix = (ox * conv.stride + kx) as isize - 1;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                acc += conv.weight[c * 9 + ky * 3 + kx] as f64
                                    * x[c * h * w + iy as usize * w + ix as usize] as f64;
                            }
                        }
                    }
                    out.push(if conv.relu { acc.max(0.0) } else { acc } as f32);
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_convolution_for_both_strides_and_odd_sizes() {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        for (h, w) in [(1, 1), (2, 3), (5, 8), (9, 17), (16, 33)] {
            for stride in [1, 2] {
                for relu in [false, true] {
                    let c = 3;
                    let conv = DepthwiseConv::new(
                        (0..c * 9).map(|i| value(i + 11)).collect(),
                        (0..c).map(|i| value(i + 5)).collect(),
                        c,
                        stride,
                        relu,
                    );
                    let x: Vec<f32> = (0..c * h * w).map(value).collect();
                    let (oh, ow) = conv.output_size(h, w);
                    let mut out = vec![f32::NAN; c * oh * ow];
                    conv.run(&x, h, w, &mut out);
                    let expected = naive(&conv, &x, h, w);
                    for (a, b) in out.iter().zip(&expected) {
                        assert!((a - b).abs() < 1e-5, "{h}x{w} stride {stride}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
