//! Depthwise 3x3 convolution (padding 1, stride 1 or 2) with bias and ReLU fused, vectorised.
//!
//! An output is nine multiply-adds of inputs at fixed offsets, which the compiler turns into
//! full-width vector FMAs over runs of outputs. At stride 1 the runs are read straight from the
//! input, at stride 2 from a scratch copy split by row and column parity, where the strided taps
//! are contiguous too. Either way a band of rows is one flat run, its border column(s) redone
//! after, so the small maps pay no per-row loop tails. On AVX-512 rows up to [`NARROW`] wide (the
//! bottlenecks' maps), on AVX2 rows up to [`WIDE`] (all of a 1024x2048 frame's) run kernels
//! written with intrinsics instead: masked vectors for the borders and row ends, two output rows
//! at a time for independent sums, stride 2 split into even and odd columns in registers.

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
            if w <= NARROW && Isa::detected() == Isa::Avx512 {
                // SAFETY: the processor has AVX-512F.
                unsafe { stride1_avx512(band, oy0, taps, bias, relu, out) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if w <= WIDE && Isa::detected() == Isa::Avx2 {
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
            if w <= NARROW && Isa::detected() == Isa::Avx512 {
                // SAFETY: the processor has AVX-512F.
                unsafe { stride2_avx512(band, oy0, ow, taps, bias, relu, out) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if w <= WIDE && Isa::detected() == Isa::Avx2 {
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

/// Input widths up to which the AVX-512 kernels run: on rows of 12 to 96 (the bottlenecks' maps
/// and, at 384x768, the classifier's) they beat the flat runs; on rows of 192 and more, mostly
/// read from memory rather than cache, the flat runs' long streams are faster
/// (`cargo bench -p fastscnn-benches --bench kernels -- depthwise3x3`: rows of 24 to 192).
#[cfg(target_arch = "x86_64")]
const NARROW: usize = 128;

/// [`stride1_body`] on AVX-512, row by row with masked vectors: the loads at columns `x - 1` and
/// `x + 1` leave out the lanes beyond the row's ends (the zero padding) and the last vector of a
/// row is masked, so no output is computed one at a time; rows outside the image are skipped.
/// The nine products are summed by kernel row (three chains, then two adds), as [`nine`] sums
/// them.
///
/// # Safety
/// The processor must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stride1_avx512(
    band: Band,
    oy0: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    let rows = out.len() / w;
    let tap = taps.map(|t| _mm512_set1_ps(t));
    let bias = _mm512_set1_ps(bias);
    let mask = |n: usize| lane_mask(n, 0);
    let out = out.as_mut_ptr();
    // Two output rows at a time: they share two of their four input rows, and their six
    // kernel-row sums are independent chains of three multiply-adds, which keeps the FMA units
    // busy where one chain of nine would wait on each result.
    let mut i = 0;
    while i < rows {
        let pair = i + 1 < rows;
        let oy = (oy0 + i) as isize;
        let input = [
            band.row(oy - 1),
            band.row(oy),
            band.row(oy + 1),
            if pair { band.row(oy + 2) } else { None },
        ];
        let mut x = 0;
        while x < w {
            let valid = mask(w - x);
            // Lanes whose left neighbour is inside the row; right neighbour likewise.
            let left = if x == 0 { valid & !1 } else { valid };
            let right = mask(w - x - 1);
            // The three taps' inputs of each input row (zeros outside the image).
            let loaded = input.map(|row| {
                row.map(|row| {
                    let at = row.as_ptr().add(x);
                    // SAFETY: the masks keep every accessed lane inside the row; the pointers
                    // of masked-out lanes are never dereferenced.
                    unsafe {
                        [
                            _mm512_maskz_loadu_ps(left, at.wrapping_sub(1)),
                            _mm512_maskz_loadu_ps(valid, at),
                            _mm512_maskz_loadu_ps(right, at.wrapping_add(1)),
                        ]
                    }
                })
            });
            // Output row `i + d` takes kernel row `r` from input row `d + r`.
            for d in 0..1 + usize::from(pair) {
                let acc = kernel_rows([loaded[d], loaded[d + 1], loaded[d + 2]], &tap, bias, relu);
                // SAFETY: `valid` keeps the store inside output row i + d.
                unsafe { _mm512_mask_storeu_ps(out.add((i + d) * w + x), valid, acc) };
            }
            x += 16;
        }
        i += 2;
    }
}

/// Stride 2 on AVX-512 straight from the input rows: sixteen outputs read two vectors of each
/// input row, split in registers into its even columns (the centre taps), its odd ones (the
/// right taps) and the odd ones shifted by a lane (the left taps, the lane before carried over
/// from the previous vector, zero at the row's start). Two output rows at a time, as
/// [`stride1_avx512`]; masks handle the ends.
///
/// # Safety
/// The processor must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stride2_avx512(
    band: Band,
    oy0: usize,
    ow: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    let rows = out.len() / ow;
    let tap = taps.map(|t| _mm512_set1_ps(t));
    let (bias, zero) = (_mm512_set1_ps(bias), _mm512_setzero_ps());
    let mask = |n: usize| lane_mask(n, 0);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let out = out.as_mut_ptr();
    let mut i = 0;
    while i < rows {
        let pair = i + 1 < rows;
        let y = 2 * (oy0 + i) as isize - 1;
        // Input rows y ..= y + 2 feed output row i, y + 2 ..= y + 4 row i + 1.
        let input: [Option<&[f32]>; 5] = std::array::from_fn(|r| {
            if r < 3 || pair {
                band.row(y + r as isize)
            } else {
                None
            }
        });
        let mut carry = [zero; 5];
        let mut x = 0;
        while x < ow {
            let (lo, hi) = (mask(w - 2 * x), mask((w - 2 * x).saturating_sub(16)));
            let mut loaded = [None; 5];
            for ((row, slot), carry) in input.iter().zip(&mut loaded).zip(&mut carry) {
                let Some(row) = row else { continue };
                let at = row.as_ptr().add(2 * x);
                // SAFETY: the masks keep every accessed lane inside the row; the pointers of
                // masked-out lanes are never dereferenced.
                let (a, b) = unsafe {
                    (
                        _mm512_maskz_loadu_ps(lo, at),
                        _mm512_maskz_loadu_ps(hi, at.wrapping_add(16)),
                    )
                };
                let centre = _mm512_permutex2var_ps(a, even, b);
                let right = _mm512_permutex2var_ps(a, odd, b);
                let left = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(
                    _mm512_castps_si512(right),
                    _mm512_castps_si512(*carry),
                ));
                *carry = right;
                *slot = Some([left, centre, right]);
            }
            let valid = mask(ow - x);
            for d in 0..1 + usize::from(pair) {
                let rows = [loaded[2 * d], loaded[2 * d + 1], loaded[2 * d + 2]];
                let acc = kernel_rows(rows, &tap, bias, relu);
                // SAFETY: `valid` keeps the store inside output row i + d.
                unsafe { _mm512_mask_storeu_ps(out.add((i + d) * ow + x), valid, acc) };
            }
            x += 16;
        }
        i += 2;
    }
}

/// One output vector of the intrinsic kernels: `bias` plus each kernel row's three taps times its
/// input row's left, centre and right vectors (`None`: a row outside the image), summed as three
/// independent chains, then the ReLU.
///
/// # Safety
/// The processor must have `V`'s instructions; inlined into a kernel compiled for them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel_rows<V: Lanes>(rows: [Option<[V; 3]>; 3], tap: &[V; 9], bias: V, relu: bool) -> V {
    let zero = V::zero();
    let mut sums = [bias, zero, zero];
    for (r, (sum, row)) in sums.iter_mut().zip(rows).enumerate() {
        if let Some([a, b, c]) = row {
            *sum = tap[3 * r].mul_add(a, *sum);
            *sum = tap[3 * r + 1].mul_add(b, *sum);
            *sum = tap[3 * r + 2].mul_add(c, *sum);
        }
    }
    let acc = sums[0].add(sums[1]).add(sums[2]);
    if relu {
        acc.max(zero)
    } else {
        acc
    }
}

/// The vector arithmetic of [`kernel_rows`], for AVX-512's and AVX2's registers.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    unsafe fn zero() -> Self;
    /// `self * a + b`, fused.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn max(self, other: Self) -> Self;
}

/// [`Lanes`] for a vector type from its four intrinsics.
macro_rules! lanes {
    ($vector:ident: $zero:ident, $fmadd:ident, $add:ident, $max:ident) => {
        #[cfg(target_arch = "x86_64")]
        impl Lanes for std::arch::x86_64::$vector {
            #[inline(always)]
            unsafe fn zero() -> Self {
                std::arch::x86_64::$zero()
            }
            #[inline(always)]
            unsafe fn mul_add(self, a: Self, b: Self) -> Self {
                std::arch::x86_64::$fmadd(self, a, b)
            }
            #[inline(always)]
            unsafe fn add(self, other: Self) -> Self {
                std::arch::x86_64::$add(self, other)
            }
            #[inline(always)]
            unsafe fn max(self, other: Self) -> Self {
                std::arch::x86_64::$max(self, other)
            }
        }
    };
}

lanes!(__m512: _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_max_ps);
lanes!(__m256: _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_max_ps);

/// Input widths up to which the AVX2 kernels run: [`ZERO_ROW`]'s, the widest map of a 1024x2048
/// frame they see. Unlike AVX-512's, the stride-1 kernel is no slower than the flat runs on wide
/// rows (`cargo bench -p fastscnn-benches --bench kernels -- depthwise3x3`: rows of 24 to 192).
#[cfg(target_arch = "x86_64")]
const WIDE: usize = 1024;

/// Rows above and below the image, as the AVX2 kernels read them: zeros, with a vector's margin
/// either side of the widest row they take.
#[cfg(target_arch = "x86_64")]
static ZERO_ROW: [f32; WIDE + 32] = [0.0; WIDE + 32];

/// Output rows [`stride1_avx2`] computes at a time, from `STRIDE1_ROWS + 2` input rows: each
/// input row's three loads serve every output row it is a kernel row of. Three rather than two,
/// whose loads serve fewer rows, or four, whose sums with the taps are 16 live vectors, all of
/// AVX2's registers (`cargo bench -p fastscnn-benches --bench kernels -- stride1`).
#[cfg(target_arch = "x86_64")]
const STRIDE1_ROWS: usize = 3;

/// [`stride1_avx512`] on AVX2: eight lanes, [`STRIDE1_ROWS`] output rows at a time. Rows outside
/// the image read [`ZERO_ROW`], so every column vector runs the same straight-line code; only a
/// row's first and last vectors use masked loads, and only a tail narrower than a vector a masked
/// store (AVX2's masked stores are slow on AMD). Not written with the image rows as `Option`s and
/// every load masked, as the AVX-512 kernel is: LLVM branches on such rows in every vector and
/// spills around the branches (`cargo bench -p fastscnn-benches --bench kernels -- stride1`).
///
/// # Safety
/// The processor must support AVX2 and FMA, and the rows be at most [`WIDE`] wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn stride1_avx2(
    band: Band,
    oy0: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    assert!(w <= WIDE, "row wider than the zero row");
    let rows = out.len() / w;
    let kernel = Stride1Avx2 {
        tap: taps.map(|t| _mm256_set1_ps(t)),
        bias: _mm256_set1_ps(bias),
        relu,
        first: edge_masks(w, 0),
        inner_end: if w > 9 { 8 + (w - 9) / 8 * 8 } else { 8 },
    };
    let out = out.as_mut_ptr();
    let mut i = 0;
    while i < rows {
        // The last step takes the one or two rows left, not three with some thrown away (a
        // band of ten rows would compute twelve).
        let at = out.add(i * w);
        match rows - i {
            1 => short_step::<1>(&kernel, band, oy0 + i, at),
            2 => short_step::<2>(&kernel, band, oy0 + i, at),
            _ => kernel.rows::<STRIDE1_ROWS>(band, oy0 + i, at),
        }
        i += STRIDE1_ROWS;
    }
}

/// A step of one or two rows of [`stride1_avx2`], compiled apart from the three-row step. Inlined
/// beside it, the short steps would get the registers it leaves them: the taps it keeps on the
/// stack would be reloaded in every column of theirs (nine loads beside eighteen FMAs for two
/// rows), where alone they hold the taps in registers. The feature fusion's and the classifier's
/// bands are two rows at 768x1536 and 1024x2048
/// (`cargo bench -p fastscnn-benches --bench kernels -- two_row_bands`).
///
/// # Safety
/// As [`stride1_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn short_step<const N: usize>(kernel: &Stride1Avx2, band: Band, oy: usize, at: *mut f32) {
    kernel.rows::<N>(band, oy, at)
}

/// [`stride1_avx2`]'s taps, bias and ReLU, and what the row width decides.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Stride1Avx2 {
    tap: [std::arch::x86_64::__m256; 9],
    bias: std::arch::x86_64::__m256,
    relu: bool,
    /// The first vector's [`edge_masks`].
    first: [std::arch::x86_64::__m256i; 3],
    /// Columns `8..inner_end`: the vectors whose taps `x - 1 ..= x + 8` all lie inside the row.
    inner_end: usize,
}

#[cfg(target_arch = "x86_64")]
impl Stride1Avx2 {
    /// Output rows `oy..oy + N` (`N` at most [`STRIDE1_ROWS`]) into `at` and the rows below it.
    #[inline(always)]
    unsafe fn rows<const N: usize>(self, band: Band, oy: usize, at: *mut f32) {
        let w = band.w;
        let zero_row = ZERO_ROW.as_ptr().add(16);
        let mut input = [zero_row; STRIDE1_ROWS + 2];
        for (j, row) in input.iter_mut().enumerate().take(N + 2) {
            if let Some(r) = band.row(oy as isize - 1 + j as isize) {
                *row = r.as_ptr();
            }
        }
        let first = &self.first;
        // Only the loads that would leave the row are masked: the first vector's left taps,
        // the last one's right taps (both, and the centre too, when the row is not a multiple
        // of eight wide).
        let sums = if w > 8 {
            self.column::<N, true, false, false>(&input, 0, first)
        } else {
            self.column::<N, true, true, true>(&input, 0, first)
        };
        self.store::<N>(sums, at, w, w);
        let mut x = 8;
        while x < self.inner_end.min(w) {
            let sums = self.column::<N, false, false, false>(&input, x, first);
            self.store::<N>(sums, at.add(x), w, 8);
            x += 8;
        }
        while x < w {
            let masks = edge_masks(w, x);
            let sums = if x + 8 == w {
                self.column::<N, false, false, true>(&input, x, &masks)
            } else {
                self.column::<N, true, true, true>(&input, x, &masks)
            };
            self.store::<N>(sums, at.add(x), w, w - x);
            x += 8;
        }
    }

    /// The output vectors at column `x` of the `N` rows whose input rows are `input[d..d + 3]`;
    /// a `LEFT`, `CENTRE` or `RIGHT` tap's loads take only the lanes of its mask in `masks`.
    /// Each output is one chain from the bias through its nine taps: the taps, three loaded
    /// vectors and three sums fill the sixteen registers.
    #[inline(always)]
    unsafe fn column<const N: usize, const LEFT: bool, const CENTRE: bool, const RIGHT: bool>(
        self,
        input: &[*const f32; STRIDE1_ROWS + 2],
        x: usize,
        masks: &[std::arch::x86_64::__m256i; 3],
    ) -> [std::arch::x86_64::__m256; STRIDE1_ROWS] {
        use std::arch::x86_64::*;
        // No closures and no `array::map` here: they do not inherit the caller's target
        // features, and every intrinsic in them becomes a call.
        let mut sums = [self.bias; STRIDE1_ROWS];
        for (j, row) in input.iter().enumerate().take(N + 2) {
            let at = row.wrapping_add(x);
            // SAFETY: plain loads lie inside the row or the zero row; masked ones touch only
            // the lanes inside it.
            let left = load::<LEFT>(at.wrapping_sub(1), masks[0]);
            let centre = load::<CENTRE>(at, masks[1]);
            let right = load::<RIGHT>(at.wrapping_add(1), masks[2]);
            // Input row j is kernel row j - d of output row d.
            for (d, sum) in sums.iter_mut().enumerate().take(N) {
                if let Some(r) = j.checked_sub(d).filter(|&r| r < 3) {
                    *sum = _mm256_fmadd_ps(self.tap[3 * r], left, *sum);
                    *sum = _mm256_fmadd_ps(self.tap[3 * r + 1], centre, *sum);
                    *sum = _mm256_fmadd_ps(self.tap[3 * r + 2], right, *sum);
                }
            }
        }
        if self.relu {
            let zero = _mm256_setzero_ps();
            for sum in sums.iter_mut().take(N) {
                *sum = _mm256_max_ps(*sum, zero);
            }
        }
        sums
    }

    /// The first `n` lanes of the first `N` of `sums` at `at` and the rows below it.
    #[inline(always)]
    unsafe fn store<const N: usize>(
        self,
        sums: [std::arch::x86_64::__m256; STRIDE1_ROWS],
        at: *mut f32,
        w: usize,
        n: usize,
    ) {
        use std::arch::x86_64::*;
        for (d, sum) in sums.into_iter().enumerate().take(N) {
            let at = at.add(d * w);
            if n >= 8 {
                _mm256_storeu_ps(at, sum);
            } else {
                _mm256_maskstore_ps(at, lanes_below(n), sum);
            }
        }
    }
}

/// Stride 2 on AVX2 straight from the input rows, one output row at a time. A vector of eight
/// outputs at column `x` reads input columns `2x - 1 ..= 2x + 15` of each of its three input rows
/// as four loads, at `2x - 1`, `2x + 7`, `2x` and `2x + 8`: the even lanes of the first pair are
/// the left taps, the even lanes of the second pair the centre taps and its odd lanes the right
/// taps, each picked by one in-lane shuffle. The shuffles leave the outputs in the order
/// 0 1 4 5 2 3 6 7, put right by one permute before the store. No input row is copied first, as
/// the [`parity_planes`] of the portable path copy every one; and one output row at a time, as
/// two sharing an input row are no faster
/// (`cargo bench -p fastscnn-benches --bench kernels -- stride2`).
///
/// # Safety
/// The processor must support AVX2 and FMA, and the rows be at most [`WIDE`] wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn stride2_avx2(
    band: Band,
    oy0: usize,
    ow: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    assert!(w <= WIDE, "row wider than the zero row");
    let rows = out.len() / ow;
    let kernel = Stride2Avx2 {
        tap: taps.map(|t| _mm256_set1_ps(t)),
        bias: _mm256_set1_ps(bias),
        relu,
        w,
    };
    let zero_row = ZERO_ROW.as_ptr().add(16);
    let out = out.as_mut_ptr();
    for i in 0..rows {
        let y = 2 * (oy0 + i) as isize - 1;
        let row = |y: isize| band.row(y).map_or(zero_row, |r| r.as_ptr());
        let input = [row(y), row(y + 1), row(y + 2)];
        let at = out.add(i * ow);
        let mut x = 0;
        while x < ow {
            // Columns 2x - 1 ..= 2x + 15 all inside the row; at the row's start all but
            // column -1, which only the first load reads.
            let sum = if x > 0 && 2 * x + 16 <= w {
                kernel.column::<false, false>(input, x)
            } else if x == 0 && 16 <= w {
                kernel.column::<true, false>(input, x)
            } else {
                kernel.column::<false, true>(input, x)
            };
            if ow - x >= 8 {
                _mm256_storeu_ps(at.add(x), sum);
            } else {
                _mm256_maskstore_ps(at.add(x), lanes_below(ow - x), sum);
            }
            x += 8;
        }
    }
}

/// [`stride2_avx2`]'s taps, bias, ReLU and input width.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Stride2Avx2 {
    tap: [std::arch::x86_64::__m256; 9],
    bias: std::arch::x86_64::__m256,
    relu: bool,
    w: usize,
}

#[cfg(target_arch = "x86_64")]
impl Stride2Avx2 {
    /// The output vector at column `x` from input rows `input`, in order; `MASKED` loads only
    /// the lanes inside the row, `LEFT` (at column 0) only the first load's, the one that
    /// reads column -1.
    #[inline(always)]
    unsafe fn column<const LEFT: bool, const MASKED: bool>(
        self,
        input: [*const f32; 3],
        x: usize,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let start = 2 * x as isize - 1;
        let mut loaded = [None; 3];
        let inside = _mm256_cmpgt_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_setzero_si256(),
        );
        // No closures: they would not inherit the target features.
        for r in 0..3 {
            let a = if LEFT {
                _mm256_maskload_ps(input[r].wrapping_offset(start), inside)
            } else {
                self.load::<MASKED>(input[r], start)
            };
            let b = self.load::<MASKED>(input[r], start + 8);
            let c = self.load::<MASKED>(input[r], start + 1);
            let d = self.load::<MASKED>(input[r], start + 9);
            loaded[r] = Some([
                _mm256_shuffle_ps::<0x88>(a, b),
                _mm256_shuffle_ps::<0x88>(c, d),
                _mm256_shuffle_ps::<0xDD>(c, d),
            ]);
        }
        let sum = kernel_rows(loaded, &self.tap, self.bias, self.relu);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(sum)))
    }

    /// Columns `start .. start + 8` of the row at `row`; when `MASKED`, the lanes outside the
    /// row are zeros and never read.
    #[inline(always)]
    unsafe fn load<const MASKED: bool>(
        self,
        row: *const f32,
        start: isize,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let at = row.wrapping_offset(start);
        if !MASKED {
            return _mm256_loadu_ps(at);
        }
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let from = _mm256_cmpgt_epi32(lanes, _mm256_set1_epi32((-start - 1) as i32));
        let to = _mm256_cmpgt_epi32(_mm256_set1_epi32((self.w as isize - start) as i32), lanes);
        _mm256_maskload_ps(at, _mm256_and_si256(from, to))
    }
}

/// Lanes below `n` (at most 8), as AVX2's masked moves take them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lanes_below(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
}

/// The masks of [`stride1_avx2`]'s vector at column `x` of a `w`-wide row: the lanes of its left
/// taps inside the row (not column -1 at the row's start), of its centre ones, of its right
/// ones (not column `w`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn edge_masks(w: usize, x: usize) -> [std::arch::x86_64::__m256i; 3] {
    use std::arch::x86_64::*;
    let valid = lanes_below(w - x);
    let left = if x == 0 {
        _mm256_and_si256(
            valid,
            _mm256_cmpgt_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_setzero_si256(),
            ),
        )
    } else {
        valid
    };
    [left, valid, lanes_below(w - x - 1)]
}

/// Eight floats at `at`, or when `MASKED` the lanes of `mask` (the others zero).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load<const MASKED: bool>(
    at: *const f32,
    mask: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    if MASKED {
        _mm256_maskload_ps(at, mask)
    } else {
        _mm256_loadu_ps(at)
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
        // Both sides of the AVX-512 kernels' width limit and of the AVX2 stride-2 kernel's.
        for ((h, w), stride) in [(11, 13), (11, 157), (11, 1030)]
            .into_iter()
            .flat_map(|s| [(s, 1), (s, 2)])
        {
            let conv = DepthwiseConv::new((0..9).map(value).collect(), vec![0.25], 1, stride, true);
            let x: Vec<f32> = (0..h * w).map(|i| value(i + 40)).collect();
            let (oh, ow) = conv.output_size(h, w);
            let mut whole = vec![0f32; oh * ow];
            conv.run(&x, h, w, &mut whole);
            let mut scratch = Vec::new();
            for (oy0, oy1) in [(0, 2), (2, 5), (0, 4), (3, oh), (oh - 1, oh)] {
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
        for (h, w) in [
            (1, 1),
            (2, 3),
            (5, 8),
            (3, 9),
            (4, 16),
            (9, 17),
            (3, 24),
            (16, 33),
            (7, 64),
            (6, 95),
            (3, 128),
            (5, 150),
            (4, 261),
            // Past the AVX2 stride-2 kernel's widest row.
            (3, 1030),
        ] {
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
