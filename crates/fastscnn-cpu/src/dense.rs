//! Dense KxK convolution (the 3x3/2 stem, OpenMMLab's 3x3 pyramid-pooling output) as a GEMM over
//! bands of output rows (the kernel of the 1x1 convs where the processor has one).
//!
//! A 3x3 stride-2 conv on that kernel (the stem) has no im2col at all: the kernel reads its rows
//! in place from input rows split by column parity. Other shapes, and other instruction sets,
//! build a band's im2col matrix (in·k·k, band pixels), small enough to stay in cache, so the full
//! matrix, 27 floats per output pixel for the stem, is never stored; bands run in parallel, each
//! with its own scratch.

use rayon::prelude::*;

use super::depthwise::Band;
use super::epilogue::finish_row;
use super::packed_gemm::PackedWeights;
use super::packed_gemm::{conv1x1, conv_gathered, Epilogue};
use super::simd::{dispatch, MulAdd};
use super::SendPtr;

/// A dense convolution with its BatchNorm folded in: `weight` is (out, in, k, k) row-major.
/// [`Self::new`] packs a copy of the weights for this crate's 1x1 kernel: for other weights, build
/// a new one.
#[derive(Debug, Clone)]
pub struct DenseConv {
    /// Weights in (out, in, k, k) row-major order.
    pub weight: Vec<f32>,
    /// One value per output channel, added before the ReLU.
    pub bias: Vec<f32>,
    /// Channels of the input map.
    pub in_channels: usize,
    /// Channels of the output map.
    pub out_channels: usize,
    /// Side of the square kernel, in pixels.
    pub kernel: usize,
    /// Step between kernel positions, the same along both axes.
    pub stride: usize,
    /// Zeros added on each side of the input, in pixels.
    pub padding: usize,
    /// Whether a ReLU follows the bias.
    pub relu: bool,
    /// The weights packed for this crate's kernel, when the processor has one.
    packed: Option<PackedWeights>,
}

impl DenseConv {
    /// Checks the shapes and packs a copy of `weight` for this processor's kernel, where it has
    /// one.
    ///
    /// # Panics
    /// If `weight` does not hold `out_channels * in_channels * kernel * kernel` floats, `bias`
    /// `out_channels`, or if `kernel` or `stride` is zero.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> Self {
        let depth = in_channels * kernel * kernel;
        assert_eq!(weight.len(), out_channels * depth, "dense conv weight");
        assert_eq!(bias.len(), out_channels, "dense conv bias");
        assert!(
            kernel > 0 && stride > 0,
            "dense conv kernel {kernel}, stride {stride}"
        );
        let packed = PackedWeights::for_this_processor(&weight, out_channels, depth);
        Self {
            weight,
            bias,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            relu,
            packed,
        }
    }

    /// The same convolution through the `gemm` crate: what runs without AVX-512, AVX2 or NEON,
    /// and the reference this crate's kernel is tested against.
    pub fn without_packed_kernel(mut self) -> Self {
        self.packed = None;
        self
    }

    /// Output height and width for an `h`x`w` input.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let size = |n: usize| (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1;
        (size(h), size(w))
    }

    fn check(&self, input: &[f32], h: usize, w: usize) {
        let k = self.kernel;
        assert!(
            h + 2 * self.padding >= k && w + 2 * self.padding >= k,
            "dense conv input too small"
        );
        assert_eq!(input.len(), self.in_channels * h * w, "dense conv input");
    }

    /// One image: `input` is (in, h, w), `out` (out, oh, ow).
    pub fn run(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let (oh, ow) = self.output_size(h, w);
        self.check(input, h, w);
        assert_eq!(out.len(), self.out_channels * oh * ow, "dense conv output");
        let depth = self.in_channels * self.kernel * self.kernel;
        // About 64 KiB of im2col per band, at least one row, enough bands for every thread.
        let by_cache = (16 * 1024 / (depth * ow)).max(1);
        let by_threads = oh.div_ceil(4 * rayon::current_num_threads()).max(1);
        let band = by_cache.min(by_threads);
        let dst = SendPtr(out.as_mut_ptr());
        (0..oh.div_ceil(band))
            .into_par_iter()
            .for_each_init(Vec::new, |cols, b| {
                let y0 = b * band;
                let rows = band.min(oh - y0);
                // SAFETY: bands write disjoint row ranges of every output plane, in bounds by the
                // size checks above.
                unsafe {
                    self.rows_raw(input, h, w, y0, rows, dst.get().add(y0 * ow), oh * ow, cols)
                }
            });
    }

    /// Output rows `y0..y0 + rows` of every channel into `out`, (out, rows·ow) contiguous, on
    /// the calling thread: the unit a fused block computes the rows it needs with. `cols` is the
    /// im2col scratch, grown as needed.
    #[allow(clippy::too_many_arguments)]
    pub fn run_rows(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        y0: usize,
        rows: usize,
        out: &mut [f32],
        cols: &mut Vec<f32>,
    ) {
        let (_, ow) = self.output_size(h, w);
        assert_eq!(
            out.len(),
            self.out_channels * rows * ow,
            "dense conv rows output"
        );
        // SAFETY: `out` holds exactly (out_channels, rows·ow).
        unsafe { self.rows_into(input, h, w, y0, rows, out.as_mut_ptr(), rows * ow, cols) }
    }

    /// [`Self::run_rows`] into planes `out_stride` floats apart.
    ///
    /// # Safety
    /// `out` must be valid for writes of `out_channels` rows of `rows·ow` floats at stride
    /// `out_stride`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn rows_into(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        y0: usize,
        rows: usize,
        out: *mut f32,
        out_stride: usize,
        cols: &mut Vec<f32>,
    ) {
        let (oh, _) = self.output_size(h, w);
        self.check(input, h, w);
        assert!(
            y0 + rows <= oh,
            "dense conv rows {y0}..{} of {oh}",
            y0 + rows
        );
        self.rows_raw(input, h, w, y0, rows, out, out_stride, cols)
    }

    /// # Safety
    /// `out` must be valid for writes of `out_channels` rows of `rows·ow` floats at stride
    /// `out_stride`, and the input checked by [`Self::check`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_raw(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        y0: usize,
        rows: usize,
        out: *mut f32,
        out_stride: usize,
        cols: &mut Vec<f32>,
    ) {
        if let Some(packed) = &self.packed {
            if (self.kernel, self.stride) == (3, 2) && self.padding <= 1 {
                self.rows_3x3s2(packed, input, h, w, y0, rows, out, out_stride, cols);
                return;
            }
        }
        let (_, ow) = self.output_size(h, w);
        let depth = self.in_channels * self.kernel * self.kernel;
        let n = rows * ow;
        if cols.len() < depth * n {
            cols.resize(depth * n, 0.0);
        }
        self.im2col(input, h, w, y0, rows, ow, &mut cols[..depth * n]);
        if let Some(packed) = &self.packed {
            let epilogue = self.epilogue();
            conv1x1(
                packed,
                0..self.out_channels,
                0..depth,
                cols.as_ptr(),
                n,
                out,
                out_stride,
                0,
                n,
                epilogue,
            );
            return;
        }
        gemm::gemm(
            self.out_channels,
            n,
            depth,
            out,
            1,
            out_stride as isize,
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
        for c in 0..self.out_channels {
            let row = std::slice::from_raw_parts_mut(out.add(c * out_stride), n);
            finish_row(row, self.bias[c], None, self.relu);
        }
    }

    /// The kernel's epilogue: the folded bias, then the ReLU if the layer has one.
    fn epilogue(&self) -> Epilogue<'_> {
        Epilogue {
            bias: &self.bias,
            residual: None,
            accumulate: false,
            relu: self.relu,
        }
    }

    /// [`Self::rows_raw`] for a 3x3 stride-2 conv with padding 0 or 1 (the stem) on the kernel,
    /// without im2col: each input row the band reads is padded and split into even and odd
    /// columns once (`scratch`), where every tap's row is a contiguous run the kernel reads in
    /// place, where im2col would write 27 floats per output pixel and split each input row three
    /// times.
    ///
    /// # Safety
    /// As [`Self::rows_raw`], with `packed` this conv's weights.
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_3x3s2(
        &self,
        packed: &PackedWeights,
        input: &[f32],
        h: usize,
        w: usize,
        y0: usize,
        rows: usize,
        out: *mut f32,
        out_stride: usize,
        scratch: &mut Vec<f32>,
    ) {
        let (_, ow) = self.output_size(h, w);
        // [`deinterleave`]: padded row `p` (image row p - 1, column q image column
        // q - 1) as `half` even columns then `half` odd ones, room for every image column and
        // for the last output column's taps.
        let half = (ow + 1).max(w / 2 + 1);
        let width = 2 * half;
        let per_channel = (2 * rows + 1) * width;
        let cin = self.in_channels;
        if scratch.len() < cin * per_channel {
            scratch.resize(cin * per_channel, 0.0);
        }
        for (ci, split) in scratch.chunks_exact_mut(per_channel).take(cin).enumerate() {
            let plane = &input[ci * h * w..(ci + 1) * h * w];
            let band = Band { plane, r0: 0, h, w };
            deinterleave(band, 2 * y0 + 1 - self.padding, half, split);
        }
        let epilogue = self.epilogue();
        // Tap kx of output column x reads padded column q = 2x + kx + 1 - padding.
        let columns = [0, 1, 2].map(|kx| {
            let q = kx + 1 - self.padding;
            if q.is_multiple_of(2) {
                q / 2
            } else {
                half + q / 2
            }
        });
        let base = scratch.as_ptr();
        let mut taps = Vec::with_capacity(cin * 9);
        for r in 0..rows {
            taps.clear();
            for ci in 0..cin {
                for ky in 0..3 {
                    let row = base.add(ci * per_channel + (2 * r + ky) * width);
                    taps.extend(columns.map(|at| row.add(at)));
                }
            }
            conv_gathered(
                packed,
                0..self.out_channels,
                0..cin * 9,
                &taps,
                out.add(r * ow),
                out_stride,
                0,
                ow,
                epilogue,
            );
        }
    }

    /// Rows `(ci, ky, kx)` of the im2col matrix for output rows `y0..y0 + rows`. Each input row
    /// is zero-padded once and, at stride 2, split into even and odd columns, so every im2col row
    /// is a contiguous copy.
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
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let n = rows * ow;
        // Padded row: p zeros, the row, zeros up to what the last output column reads.
        let padded_len = ((ow - 1) * s + k).max(w + p).next_multiple_of(s);
        let mut padded = vec![0f32; padded_len];
        let mut split = vec![0f32; padded_len];
        let part = padded_len / s;
        for ci in 0..self.in_channels {
            let plane = &input[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for r in 0..rows {
                    let iy = ((y0 + r) * s + ky) as isize - p as isize;
                    let at = |kx: usize| ((ci * k + ky) * k + kx) * n + r * ow;
                    if iy < 0 || iy >= h as isize {
                        for kx in 0..k {
                            cols[at(kx)..at(kx) + ow].fill(0.0);
                        }
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    padded[p..p + w].copy_from_slice(src);
                    // Padded column q feeds output ox at tap kx when q = ox·s + kx.
                    if s == 1 {
                        for kx in 0..k {
                            cols[at(kx)..at(kx) + ow].copy_from_slice(&padded[kx..kx + ow]);
                        }
                    } else {
                        if s == 2 {
                            let (even, odd) = split.split_at_mut(part);
                            for ((pair, e), o) in padded.chunks_exact(2).zip(even).zip(odd) {
                                *e = pair[0];
                                *o = pair[1];
                            }
                        } else {
                            for (q, &v) in padded.iter().enumerate() {
                                split[(q % s) * part + q / s] = v;
                            }
                        }
                        for kx in 0..k {
                            let phase = &split[(kx % s) * part..(kx % s + 1) * part];
                            cols[at(kx)..at(kx) + ow].copy_from_slice(&phase[kx / s..kx / s + ow]);
                        }
                    }
                }
            }
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

dispatch!(
    fn deinterleave(band: Band, p0: usize, half: usize, scratch: &mut [f32]) => deinterleave_body
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_every_isa;

    #[test]
    fn matches_the_naive_convolution_with_and_without_padding() {
        on_every_isa(|_| {
            let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
            for (k, stride, padding, h, w) in [
                (3, 2, 0, 9, 13),
                (3, 2, 0, 8, 12),
                (3, 2, 0, 3, 4),
                (3, 2, 1, 8, 12),
                (3, 2, 1, 9, 13),
                (3, 2, 1, 1, 2),
                (3, 1, 1, 5, 7),
                (1, 1, 0, 3, 4),
            ] {
                let (cin, cout) = (3, 5);
                let fast = DenseConv::new(
                    (0..cout * cin * k * k).map(|i| value(i + 3)).collect(),
                    (0..cout).map(value).collect(),
                    cin,
                    cout,
                    k,
                    stride,
                    padding,
                    true,
                );
                for conv in [fast.clone(), fast.without_packed_kernel()] {
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
                                            if iy >= 0
                                                && ix >= 0
                                                && (iy as usize) < h
                                                && (ix as usize) < w
                                            {
                                                acc += conv.weight
                                                    [((co * cin + ci) * k + ky) * k + kx]
                                                    as f64
                                                    * x[(ci * h + iy as usize) * w + ix as usize]
                                                        as f64;
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
        });
    }
}
