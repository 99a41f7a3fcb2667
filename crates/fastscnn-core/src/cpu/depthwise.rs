//! Depthwise 3x3 convolution (padding 1, stride 1 or 2) with bias and ReLU fused, vectorised.
//!
//! An output row is nine multiply-adds of contiguous, equally long input rows, which the compiler
//! turns into full-width vector FMAs; at stride 1 they are read straight from the input (the two
//! border columns apart), at stride 2 from a scratch copy of the plane whose rows are
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
        out.par_chunks_mut(oh * ow)
            .zip(input.par_chunks(h * w))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (c, (out, plane))| {
                self.run_rows(c, plane, 0, h, w, 0, out, scratch)
            });
    }

    /// Output rows `oy0..oy0 + out.len() / ow` of channel `c` of an `h`x`w` image, from `plane`,
    /// which holds image rows `r0..` (at least the ones those output rows read): the unit the
    /// fused blocks run on a band of rows whose input they computed themselves. `scratch` is
    /// grown as needed and can be reused across calls.
    #[allow(clippy::too_many_arguments)]
    pub fn run_rows(
        &self,
        c: usize,
        plane: &[f32],
        r0: usize,
        h: usize,
        w: usize,
        oy0: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (_, ow) = self.output_size(h, w);
        let taps: &[f32; 9] = self.weight[c * 9..c * 9 + 9].try_into().unwrap();
        let (bias, relu) = (self.bias[c], self.relu);
        let band = Band { plane, r0, h, w };
        if self.stride == 1 {
            stride1(band, oy0, taps, bias, relu, out);
        } else {
            // Padded rows 2·oy0 ..= 2·oy1 (padded row p is image row p - 1), de-interleaved: the
            // padded row's even columns, then its odd ones, `half` each (the last tap reads
            // `even[ow]`).
            let half = ow + 1;
            let rows = 2 * (out.len() / ow) + 1;
            if scratch.len() < rows * 2 * half {
                scratch.resize(rows * 2 * half, 0.0);
            }
            let scratch = &mut scratch[..rows * 2 * half];
            deinterleave(band, 2 * oy0, half, scratch);
            stride2(scratch, half, ow, taps, bias, relu, out);
        }
    }
}

/// Image rows `r0..r0 + plane.len() / w` of one channel of an `h`x`w` image.
#[derive(Debug, Clone, Copy)]
struct Band<'a> {
    plane: &'a [f32],
    r0: usize,
    h: usize,
    w: usize,
}

impl Band<'_> {
    /// Image row `y`, when it is inside the image (`None` is zero padding).
    #[inline(always)]
    fn row(&self, y: isize) -> Option<&[f32]> {
        if y < 0 || y as usize >= self.h {
            return None;
        }
        let start = (y as usize - self.r0) * self.w;
        Some(&self.plane[start..start + self.w])
    }
}

/// `out += t0·row[x-1] + t1·row[x] + t2·row[x+1]` over one output row at stride 1, zero outside.
#[inline(always)]
fn taps_row<M: MulAdd>(row: &[f32], t: [f32; 3], out: &mut [f32]) {
    let w = row.len();
    if w == 1 {
        out[0] = M::mul_add(t[1], row[0], out[0]);
        return;
    }
    out[0] = M::mul_add(t[2], row[1], M::mul_add(t[1], row[0], out[0]));
    out[w - 1] = M::mul_add(t[1], row[w - 1], M::mul_add(t[0], row[w - 2], out[w - 1]));
    let inner = &mut out[1..w - 1];
    let (a, b, c) = (&row[..w - 2], &row[1..w - 1], &row[2..]);
    for i in 0..inner.len() {
        inner[i] = M::mul_add(
            t[2],
            c[i],
            M::mul_add(t[1], b[i], M::mul_add(t[0], a[i], inner[i])),
        );
    }
}

#[inline(always)]
fn rectify(row: &mut [f32]) {
    for v in row.iter_mut() {
        *v = if *v > 0.0 { *v } else { 0.0 };
    }
}

/// Stride 1 straight from the input rows: rows above and below the image contribute nothing.
#[inline(always)]
fn stride1_body<M: MulAdd>(
    band: Band,
    oy0: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    for (i, out_row) in out.chunks_exact_mut(band.w).enumerate() {
        out_row.fill(bias);
        let oy = (oy0 + i) as isize;
        for ky in 0..3 {
            if let Some(row) = band.row(oy + ky as isize - 1) {
                let t = [taps[ky * 3], taps[ky * 3 + 1], taps[ky * 3 + 2]];
                taps_row::<M>(row, t, out_row);
            }
        }
        if relu {
            rectify(out_row);
        }
    }
}

/// Scratch row `j` holds padded row `p0 + j`, i.e. image row `p0 + j - 1` padded by one zero on
/// each side (all zero outside the image), split by column parity: padded column `2k` at `k`,
/// `2k + 1` at `half + k`. Padded column `q` is input column `q - 1`.
#[inline(always)]
fn deinterleave_body<M: MulAdd>(band: Band, p0: usize, half: usize, scratch: &mut [f32]) {
    let w = band.w;
    for (j, dst) in scratch.chunks_exact_mut(2 * half).enumerate() {
        let Some(row) = band.row((p0 + j) as isize - 1) else {
            dst.fill(0.0);
            continue;
        };
        let (even, odd) = dst.split_at_mut(half);
        even[0] = 0.0;
        for (k, pair) in row.chunks_exact(2).enumerate() {
            odd[k] = pair[0];
            even[k + 1] = pair[1];
        }
        let pairs = w / 2;
        if w % 2 == 1 {
            odd[pairs] = row[w - 1];
            even[pairs + 1..].fill(0.0);
            odd[pairs + 1..].fill(0.0);
        } else {
            even[pairs + 1..].fill(0.0);
            odd[pairs..].fill(0.0);
        }
    }
}

/// Output column `x` reads padded columns `2x`, `2x + 1`, `2x + 2`: `even[x]`, `odd[x]`,
/// `even[x + 1]`, all contiguous; output row `i` reads scratch rows `2i ..= 2i + 2`.
#[inline(always)]
fn stride2_body<M: MulAdd>(
    scratch: &[f32],
    half: usize,
    ow: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    let width = 2 * half;
    for (i, out_row) in out.chunks_exact_mut(ow).enumerate() {
        out_row.fill(bias);
        for ky in 0..3 {
            let row = &scratch[(2 * i + ky) * width..][..width];
            let (even, odd) = row.split_at(half);
            let (a, b, c) = (&even[..ow], &odd[..ow], &even[1..ow + 1]);
            let [w0, w1, w2] = [taps[ky * 3], taps[ky * 3 + 1], taps[ky * 3 + 2]];
            for x in 0..ow {
                out_row[x] = M::mul_add(
                    w2,
                    c[x],
                    M::mul_add(w1, b[x], M::mul_add(w0, a[x], out_row[x])),
                );
            }
        }
        if relu {
            rectify(out_row);
        }
    }
}

dispatch!(fn stride1(band: Band, oy0: usize, taps: &[f32; 9], bias: f32, relu: bool, out: &mut [f32]) => stride1_body);
dispatch!(fn deinterleave(band: Band, p0: usize, half: usize, scratch: &mut [f32]) => deinterleave_body);
dispatch!(fn stride2(scratch: &[f32], half: usize, ow: usize, taps: &[f32; 9], bias: f32, relu: bool, out: &mut [f32]) => stride2_body);

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
    fn a_band_of_rows_from_a_partial_plane_equals_those_rows_of_the_whole() {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        let (h, w) = (11, 13);
        for stride in [1, 2] {
            let conv = DepthwiseConv::new((0..9).map(value).collect(), vec![0.25], 1, stride, true);
            let x: Vec<f32> = (0..h * w).map(|i| value(i + 40)).collect();
            let (oh, ow) = conv.output_size(h, w);
            let mut whole = vec![0f32; oh * ow];
            conv.run(&x, h, w, &mut whole);
            let mut scratch = Vec::new();
            for (oy0, oy1) in [(0, 2), (2, 5), (oh - 1, oh)] {
                // Only the input rows the band reads, with the first one's image row.
                let r0 = (oy0 * stride).saturating_sub(1);
                let r1 = ((oy1 - 1) * stride + 2).min(h);
                let mut band = vec![0f32; (oy1 - oy0) * ow];
                conv.run_rows(
                    0,
                    &x[r0 * w..r1 * w],
                    r0,
                    h,
                    w,
                    oy0,
                    &mut band,
                    &mut scratch,
                );
                assert_eq!(
                    band,
                    whole[oy0 * ow..oy1 * ow],
                    "stride {stride} rows {oy0}..{oy1}"
                );
            }
        }
    }

    #[test]
    fn matches_the_naive_convolution_for_both_strides_and_odd_sizes() {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        for (h, w) in [(1, 1), (2, 3), (5, 8), (9, 17), (16, 33), (7, 64), (6, 95)] {
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
