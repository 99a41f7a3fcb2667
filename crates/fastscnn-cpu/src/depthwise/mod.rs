//! Depthwise 3x3 convolution (padding 1, stride 1 or 2): [`DepthwiseConv`], the f32 kernels with
//! bias and ReLU fused, vectorised, which inference and the candle op's f32 forward run; and
//! the kernels written once for f32 and f64 (`generic.rs`): the forward the f64 gradient checks
//! run, and both gradients.
//!
//! An output is nine multiply-adds of inputs at fixed offsets, which the compiler turns into
//! full-width vector FMAs over runs of outputs. At stride 1 the runs are read straight from the
//! input, at stride 2 from a scratch copy split by row and column parity, where the strided taps
//! are contiguous too. Either way a band of rows is one flat run, its border column(s) redone
//! after, so the small maps pay no per-row loop tails. On AVX-512 rows up to [`NARROW`] wide (the
//! bottlenecks' maps), on AVX2 rows up to [`WIDE`] (all of a 1024x2048 frame's) run kernels
//! written with intrinsics instead: masked vectors for the borders and row ends, two output rows
//! at a time for independent sums, stride 2 split into even and odd columns in registers.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod generic;
#[cfg(test)]
mod tests;

pub use generic::{depthwise_forward, depthwise_input_grad, depthwise_weight_grad, turned_kernels};

#[cfg(target_arch = "x86_64")]
use avx2::*;
#[cfg(target_arch = "x86_64")]
use avx512::*;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::lane_mask;
#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
use super::simd::{dispatch, MulAdd};
use crate::sampling::depthwise_output_size;

/// A depthwise 3x3 convolution with its BatchNorm folded in: `weight` is (channels, 9).
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// Each channel's nine taps, row by row: (channels, 3, 3) row-major.
    pub weight: Vec<f32>,
    /// One value per channel, added before the ReLU.
    pub bias: Vec<f32>,
    /// Channels of the input map, and of the output.
    pub channels: usize,
    /// Step between kernel positions along both axes: 1 or 2.
    pub stride: usize,
    /// Whether a ReLU follows the bias.
    pub relu: bool,
}

impl DepthwiseConv {
    /// Checks the shapes.
    ///
    /// # Panics
    /// If `weight` does not hold `channels * 9` floats, `bias` `channels`, or if `stride` is
    /// neither 1 nor 2.
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

    /// [`Self::run_rows`] for consecutive channels from `first`: `out` holds `n` outputs per channel,
    /// `planes` one plane of `plane_len` floats per channel, each holding image rows `r0..`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_band(
        &self,
        first: usize,
        planes: &[f32],
        plane_len: usize,
        r0: usize,
        h: usize,
        w: usize,
        oy0: usize,
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        for (c, rows) in out.chunks_exact_mut(n).enumerate() {
            let plane = &planes[c * plane_len..(c + 1) * plane_len];
            self.run_rows(first + c, plane, r0, h, w, oy0, rows, scratch);
        }
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
            #[cfg(target_arch = "x86_64")]
            if w <= NARROW && Isa::current() == Isa::Avx512 {
                // SAFETY: the processor has AVX-512F.
                unsafe { stride1_avx512(band, oy0, taps, bias, relu, out) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if w <= WIDE && Isa::current() == Isa::Avx2 {
                // SAFETY: the processor has AVX2 and FMA; the row fits the zero row.
                unsafe { stride1_avx2(band, oy0, taps, bias, relu, out) };
                return;
            }
            // The rows above and below the image: zeros, from the scratch.
            if scratch.len() < w {
                scratch.resize(w, 0.0);
            }
            let zeros = &mut scratch[..w];
            zeros.fill(0.0);
            stride1(band, oy0, taps, bias, relu, zeros, out);
        } else {
            // The input rows split by row and column parity into four planes of `rows + 1`
            // rows of `ow`, where every tap of the band is one flat run.
            #[cfg(target_arch = "x86_64")]
            if w <= NARROW && Isa::current() == Isa::Avx512 {
                // SAFETY: the processor has AVX-512F.
                unsafe { stride2_avx512(band, oy0, ow, taps, bias, relu, out) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if w <= WIDE && Isa::current() == Isa::Avx2 {
                // SAFETY: the processor has AVX2 and FMA; the row fits the zero row.
                unsafe { stride2_avx2(band, oy0, ow, taps, bias, relu, out) };
                return;
            }
            let len = 4 * (out.len() / ow + 1) * ow;
            if scratch.len() < len {
                scratch.resize(len, 0.0);
            }
            let planes = &mut scratch[..len];
            parity_planes(band, oy0, ow, planes);
            stride2(planes, ow, taps, bias, relu, out);
        }
    }
}

/// Image rows `r0..r0 + plane.len() / w` of one channel of an `h`x`w` image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Band<'a> {
    pub plane: &'a [f32],
    pub r0: usize,
    pub h: usize,
    pub w: usize,
}

impl Band<'_> {
    /// Image row `y`, when it is inside the image (`None` is zero padding).
    #[inline(always)]
    pub(crate) fn row(&self, y: isize) -> Option<&[f32]> {
        if y < 0 || y as usize >= self.h {
            return None;
        }
        let start = (y as usize - self.r0) * self.w;
        Some(&self.plane[start..start + self.w])
    }
}

#[inline(always)]
fn rectify(row: &mut [f32]) {
    for v in row.iter_mut() {
        *v = rectified(true, *v);
    }
}

/// `v`, through a ReLU when `relu` (NaN becomes 0, as in [`rectify`]).
#[inline(always)]
fn rectified(relu: bool, v: f32) -> f32 {
    match relu {
        true if v > 0.0 => v,
        true => 0.0,
        false => v,
    }
}

/// One output value from its nine inputs: all nine taps in registers, one store. Summed by
/// kernel row, three independent chains of three multiply-adds then two adds, as the AVX-512
/// kernels sum: one chain of nine keeps a vectorised run waiting on each result (on NEON, whose
/// FMA takes four cycles, 36 cycles a vector; `benches/llvm_mca.py`, figures in
/// `docs/platforms.md`).
#[inline(always)]
fn nine<M: MulAdd>(t: &[f32; 9], bias: f32, v: [f32; 9]) -> f32 {
    let row = |r: usize, first: f32| {
        let acc = M::mul_add(t[3 * r + 1], v[3 * r + 1], first);
        M::mul_add(t[3 * r + 2], v[3 * r + 2], acc)
    };
    row(0, M::mul_add(t[0], v[0], bias)) + row(1, t[3] * v[3]) + row(2, t[6] * v[6])
}

/// Stride 1 straight from the input rows; rows above and below the image read `zeros`.
///
/// The output rows whose three input rows all lie inside the image are one flat run: the plane's
/// rows are contiguous, so output pixel `k` of the run reads input pixels `k - w - 1 ..= k + w + 1`
/// whatever its row, and one vector loop (nine loads, nine FMAs and one store per vector) covers
/// them all. Each row's first and last columns, where that run wraps to the neighbouring row,
/// are then redone with their missing taps as zeros. Row by row, maps 24 to 96 pixels wide (the
/// bottlenecks', the classifier's) would spend most of their time in loop tails and per-row
/// set-up.
#[inline(always)]
fn stride1_body<M: MulAdd>(
    band: Band,
    oy0: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    zeros: &[f32],
    out: &mut [f32],
) {
    let (w, h) = (band.w, band.h);
    let rows = out.len() / w;
    // Output rows `first..end` of the band have their rows above and below inside the image.
    let first = usize::from(oy0 == 0).min(rows);
    let end = (h - 1).saturating_sub(oy0).clamp(first, rows);
    if w < 3 || end - first < 2 {
        for i in 0..rows {
            stride1_row::<M>(
                band,
                oy0 + i,
                taps,
                bias,
                relu,
                zeros,
                &mut out[i * w..][..w],
            );
        }
        return;
    }
    for i in (0..first).chain(end..rows) {
        stride1_row::<M>(
            band,
            oy0 + i,
            taps,
            bias,
            relu,
            zeros,
            &mut out[i * w..][..w],
        );
    }
    let len = (end - first) * w - 2;
    // Input index of the run's first output pixel (row oy0 + first, column 1).
    let centre = (oy0 + first - band.r0) * w + 1;
    let p = band.plane;
    let tap = |offset: isize| &p[(centre as isize + offset) as usize..][..len];
    let wi = w as isize;
    let (a0, b0, c0) = (tap(-wi - 1), tap(-wi), tap(-wi + 1));
    let (a1, b1, c1) = (tap(-1), tap(0), tap(1));
    let (a2, b2, c2) = (tap(wi - 1), tap(wi), tap(wi + 1));
    let run = &mut out[first * w + 1..][..len];
    nine_run::<M>([a0, b0, c0, a1, b1, c1, a2, b2, c2], taps, bias, relu, run);
    for i in first..end {
        let row = |dy: usize| {
            let start = (oy0 + i + dy - 1 - band.r0) * w;
            &p[start..start + w]
        };
        let [r0, r1, r2] = [row(0), row(1), row(2)];
        let out_row = &mut out[i * w..][..w];
        let (left, right) = border_columns::<M>(taps, bias, [r0, r1, r2]);
        out_row[0] = rectified(relu, left);
        out_row[w - 1] = rectified(relu, right);
    }
}

/// Output columns 0 and `w - 1` of a row from its three input rows: the taps that fall outside
/// the image read zeros.
#[inline(always)]
fn border_columns<M: MulAdd>(taps: &[f32; 9], bias: f32, rows: [&[f32]; 3]) -> (f32, f32) {
    let [r0, r1, r2] = rows;
    let w = r0.len();
    let left = nine::<M>(
        taps,
        bias,
        [0.0, r0[0], r0[1], 0.0, r1[0], r1[1], 0.0, r2[0], r2[1]],
    );
    let right = nine::<M>(
        taps,
        bias,
        [
            r0[w - 2],
            r0[w - 1],
            0.0,
            r1[w - 2],
            r1[w - 1],
            0.0,
            r2[w - 2],
            r2[w - 1],
            0.0,
        ],
    );
    (left, right)
}

/// Output row `oy` on its own: the rows at the image's top and bottom edges, and maps too
/// narrow or short for the flat run.
#[inline(always)]
fn stride1_row<M: MulAdd>(
    band: Band,
    oy: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    zeros: &[f32],
    out_row: &mut [f32],
) {
    let w = band.w;
    let oy = oy as isize;
    let rows = [
        band.row(oy - 1).unwrap_or(zeros),
        band.row(oy).unwrap_or(zeros),
        band.row(oy + 1).unwrap_or(zeros),
    ];
    if w == 1 {
        out_row[0] = M::mul_add(
            taps[7],
            rows[2][0],
            M::mul_add(taps[4], rows[1][0], M::mul_add(taps[1], rows[0][0], bias)),
        );
    } else {
        let n = w - 2;
        let [r0, r1, r2] = rows;
        let (a0, b0, c0) = (&r0[..n], &r0[1..n + 1], &r0[2..n + 2]);
        let (a1, b1, c1) = (&r1[..n], &r1[1..n + 1], &r1[2..n + 2]);
        let (a2, b2, c2) = (&r2[..n], &r2[1..n + 1], &r2[2..n + 2]);
        let inner = &mut out_row[1..n + 1];
        for x in 0..n {
            inner[x] = nine::<M>(
                taps,
                bias,
                [
                    a0[x], b0[x], c0[x], a1[x], b1[x], c1[x], a2[x], b2[x], c2[x],
                ],
            );
        }
        (out_row[0], out_row[w - 1]) = border_columns::<M>(taps, bias, rows);
    }
    if relu {
        rectify(out_row);
    }
}

/// `out[x] = relu?(bias + Σ taps[t]·inputs[t][x])`: all nine taps in registers, one store per
/// vector.
#[inline(always)]
fn nine_run<M: MulAdd>(
    inputs: [&[f32]; 9],
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    // The ReLU chosen once per run: tested in the loop, it compiles for NEON to eight lane-mask
    // instructions a vector.
    if relu {
        nine_run_with::<M, true>(inputs, taps, bias, out)
    } else {
        nine_run_with::<M, false>(inputs, taps, bias, out)
    }
}

/// [`nine_run`] with the ReLU fixed.
#[inline(always)]
fn nine_run_with<M: MulAdd, const RELU: bool>(
    inputs: [&[f32]; 9],
    taps: &[f32; 9],
    bias: f32,
    out: &mut [f32],
) {
    let n = out.len();
    let [a0, b0, c0, a1, b1, c1, a2, b2, c2] = inputs.map(|row| &row[..n]);
    for x in 0..n {
        let v = nine::<M>(
            taps,
            bias,
            [
                a0[x], b0[x], c0[x], a1[x], b1[x], c1[x], a2[x], b2[x], c2[x],
            ],
        );
        out[x] = rectified(RELU, v);
    }
}

/// The input rows a band of stride-2 output rows `oy0..oy0 + rows` reads, split by parity into
/// four planes `[P00, P01, P10, P11]` of `rows + 1` rows of `ow` (`planes.len() / 4`): row `t`
/// of `Pyx` holds image row `2(oy0 + t - 1) + y`, columns `x, x + 2, ...`, zero outside the
/// image. (Row 0 of `P00` and `P01`, which no tap reads, is left as it is.)
#[inline(always)]
fn parity_planes_body<M: MulAdd>(band: Band, oy0: usize, ow: usize, planes: &mut [f32]) {
    let plane = planes.len() / 4;
    let (w, pairs) = (band.w, band.w / 2);
    for (py, halves) in planes.chunks_exact_mut(2 * plane).enumerate() {
        let (even_plane, odd_plane) = halves.split_at_mut(plane);
        for (t, (even, odd)) in even_plane
            .chunks_exact_mut(ow)
            .zip(odd_plane.chunks_exact_mut(ow))
            .enumerate()
            .skip(1 - py)
        {
            let y = 2 * (oy0 + t) as isize - 2 + py as isize;
            let Some(row) = band.row(y) else {
                even.fill(0.0);
                odd.fill(0.0);
                continue;
            };
            let (even_pairs, odd_pairs) = (&mut even[..pairs], &mut odd[..pairs]);
            for ((e, o), pair) in even_pairs
                .iter_mut()
                .zip(odd_pairs.iter_mut())
                .zip(row.chunks_exact(2))
            {
                *e = pair[0];
                *o = pair[1];
            }
            if w % 2 == 1 {
                even[pairs] = row[w - 1];
            }
            odd[pairs..].fill(0.0);
        }
    }
}

/// Stride 2 from the parity planes of [`parity_planes`]. Output pixel `k` of the band (row-major,
/// rows of `ow`) reads `P11[k - 1]`, `P10[k]`, `P11[k]` (the row above), `P01[k + ow - 1]`,
/// `P00[k + ow]`, `P01[k + ow]` and `P11[k + ow - 1]`, `P10[k + ow]`, `P11[k + ow]`: one flat run
/// over the band. Column 0, whose left taps that run takes from the row before, is redone with
/// them as the zero padding.
#[inline(always)]
fn stride2_body<M: MulAdd>(
    planes: &[f32],
    ow: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    let plane = planes.len() / 4;
    let [p00, p01, p10, p11]: [&[f32]; 4] = [0, 1, 2, 3].map(|i| &planes[i * plane..][..plane]);
    let n = out.len();
    let len = n - 1;
    nine_run::<M>(
        [
            &p11[..len],
            &p10[1..][..len],
            &p11[1..][..len],
            &p01[ow..][..len],
            &p00[ow + 1..][..len],
            &p01[ow + 1..][..len],
            &p11[ow..][..len],
            &p10[ow + 1..][..len],
            &p11[ow + 1..][..len],
        ],
        taps,
        bias,
        relu,
        &mut out[1..],
    );
    for k in (0..n).step_by(ow) {
        let v = nine::<M>(
            taps,
            bias,
            [
                0.0,
                p10[k],
                p11[k],
                0.0,
                p00[k + ow],
                p01[k + ow],
                0.0,
                p10[k + ow],
                p11[k + ow],
            ],
        );
        out[k] = rectified(relu, v);
    }
}

dispatch!(
    fn stride1(
        band: Band,
        oy0: usize,
        taps: &[f32; 9],
        bias: f32,
        relu: bool,
        zeros: &[f32],
        out: &mut [f32],
    ) => stride1_body
);
dispatch!(
    fn parity_planes(band: Band, oy0: usize, ow: usize, planes: &mut [f32]) => parity_planes_body
);
dispatch!(
    fn stride2(
        planes: &[f32],
        ow: usize,
        taps: &[f32; 9],
        bias: f32,
        relu: bool,
        out: &mut [f32],
    ) => stride2_body
);
