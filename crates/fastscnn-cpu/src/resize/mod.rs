//! Bilinear resize of channel planes, and the fused resize + argmax, as two separable passes.
//!
//! Upsampling by 8 reads each input row for eight output rows. Interpolating every input row
//! horizontally once, then blending pairs of those rows vertically, turns the per-pixel gather of
//! four samples into a gather over 1/8 of the rows and a vector blend over the rest. The
//! arithmetic is the one of [`resize_forward`] (horizontal, then
//! vertical, no fused multiply-adds), so labels equal those of resizing then taking the argmax.
//! `generic.rs` is the same resize per output pixel for f32 and f64, with its gradient: what the
//! candle ops run.

mod argmax;
mod cross_entropy;
mod generic;

pub use argmax::{resize_argmax_min_scratch_len, resize_argmax_planes, resize_argmax_scratch_len};
pub use cross_entropy::resize_cross_entropy_planes;
pub use generic::{resize_argmax_forward, resize_forward, resize_grad};

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::buffers::as_uninit;
#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::lane_mask;
#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
use super::simd::{dispatch, MulAdd};
use crate::sampling::{source_index, taps};
use crate::MapView;

/// The horizontal pass's taps, one entry per output column, as separate arrays so that the
/// compiler can vectorise the pass with gathers.
struct Columns {
    x0: Vec<u32>,
    x1: Vec<u32>,
    w0: Vec<f32>,
    w1: Vec<f32>,
    /// The input width every index is below.
    w: usize,
    /// The same taps by windows, where they fit (upsampling) and a kernel reads them (x86-64's).
    #[cfg(target_arch = "x86_64")]
    windows: Option<Windows>,
}

/// The taps by blocks of one vector of output columns, each block's taps relative to its first
/// input column `base`: within a vector or two of it when upsampling, so a block is one or two
/// loads and two in-register permutes, where gathers fetch each tap on its own (the horizontal
/// pass of both resizes: `cargo bench -p fastscnn-benches --bench kernels -- resize`). The weights
/// are padded to whole blocks.
#[cfg(target_arch = "x86_64")]
struct Windows {
    base: Vec<u32>,
    index0: Vec<u32>,
    index1: Vec<u32>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

/// Output columns per window on AVX-512: one vector; the taps may span two.
const WINDOW: usize = 16;
/// Output columns per window on AVX2: one vector, whose taps must lie in one vector too.
#[cfg(target_arch = "x86_64")]
const WINDOW_AVX2: usize = 8;

impl Columns {
    fn new(w: usize, ow: usize, align_corners: bool) -> Self {
        let taps = taps::<f32>(w, ow, align_corners);
        assert!(
            u32::try_from(w).is_ok() && taps.iter().all(|&(x0, x1, _, _)| x0 < w && x1 < w),
            "resize taps out of the input row"
        );
        Self {
            x0: taps.iter().map(|t| t.0 as u32).collect(),
            x1: taps.iter().map(|t| t.1 as u32).collect(),
            w0: taps.iter().map(|t| t.2).collect(),
            w1: taps.iter().map(|t| t.3).collect(),
            w,
            #[cfg(target_arch = "x86_64")]
            windows: match Isa::current() {
                Isa::Avx512 => Windows::new(&taps, WINDOW, 2 * WINDOW),
                Isa::Avx2 => Windows::new(&taps, WINDOW_AVX2, WINDOW_AVX2),
                Isa::Neon | Isa::Portable => None,
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Windows {
    /// Blocks of `width` outputs; `None` when some block's taps spread over `span` input columns
    /// or more (downsampling).
    fn new(taps: &[(usize, usize, f32, f32)], width: usize, span: usize) -> Option<Self> {
        let blocks = taps.len().div_ceil(width);
        let mut windows = Self {
            base: Vec::with_capacity(blocks),
            index0: vec![0; blocks * width],
            index1: vec![0; blocks * width],
            w0: vec![0.0; blocks * width],
            w1: vec![0.0; blocks * width],
        };
        for (b, block) in taps.chunks(width).enumerate() {
            let base = block.iter().map(|t| t.0.min(t.1)).min()?;
            windows.base.push(base as u32);
            for (i, &(x0, x1, w0, w1)) in block.iter().enumerate() {
                let (i0, i1) = (x0 - base, x1 - base);
                if i0.max(i1) >= span {
                    return None;
                }
                let at = b * width + i;
                (windows.index0[at], windows.index1[at]) = (i0 as u32, i1 as u32);
                (windows.w0[at], windows.w1[at]) = (w0, w1);
            }
        }
        Some(windows)
    }
}

/// Every row of `plane` (h, `columns.w`) interpolated horizontally, into `out` (h, ow).
fn horizontal(plane: &[f32], columns: &Columns, out: &mut [MaybeUninit<f32>]) {
    let (w, ow) = (columns.w, columns.x0.len());
    let rows = RowSet {
        count: plane.len() / w,
        input_stride: w,
        output_stride: ow,
    };
    let whole_row = 0..ow;
    horizontal_rows(plane, columns, rows, std::slice::from_ref(&whole_row), out);
}

/// The rows a horizontal pass takes: `count` input rows (`columns.w` floats each)
/// `input_stride` floats apart, into output rows (ow floats each) `output_stride` apart. A
/// plane's rows, or one row of every class plane.
#[derive(Clone, Copy)]
struct RowSet {
    count: usize,
    input_stride: usize,
    output_stride: usize,
}

/// Output columns `spans` of every row of `rows` interpolated horizontally (the rest of the
/// output rows is left as it is), row by row, each row's spans left to right: in one pass
/// along the row, as the hardware prefetches it, not a row's spans a few at a time over all the
/// rows. Each span starts at a multiple of [`WINDOW`].
fn horizontal_rows(
    input: &[f32],
    columns: &Columns,
    rows: RowSet,
    spans: &[Range<usize>],
    out: &mut [MaybeUninit<f32>],
) {
    let (w, ow) = (columns.w, columns.x0.len());
    if rows.count == 0 {
        return;
    }
    assert!(
        input.len() >= (rows.count - 1) * rows.input_stride + w
            && out.len() >= (rows.count - 1) * rows.output_stride + ow
            && spans.iter().all(|s| s.end <= ow),
        "horizontal resize rows"
    );
    assert!(
        spans.iter().all(|s| s.start.is_multiple_of(WINDOW)),
        "horizontal resize span start"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(windows) = &columns.windows {
        match Isa::current() {
            // SAFETY: the processor has AVX-512F, and `windows` were built for it.
            Isa::Avx512 => {
                return unsafe { horizontal_windows(input, columns, windows, rows, spans, out) }
            }
            // SAFETY: the processor has AVX2, and `windows` were built for it.
            Isa::Avx2 => {
                return unsafe {
                    horizontal_windows_avx2(input, columns, windows, rows, spans, out)
                }
            }
            Isa::Neon | Isa::Portable => {}
        }
    }
    horizontal_gather(input, columns, rows, spans, out)
}

/// Input row `r` of `rows` and its output row.
fn row_pair<'a>(
    input: &'a [f32],
    columns: &Columns,
    rows: RowSet,
    r: usize,
    out: &'a mut [MaybeUninit<f32>],
) -> (&'a [f32], &'a mut [MaybeUninit<f32>]) {
    (
        &input[r * rows.input_stride..][..columns.w],
        &mut out[r * rows.output_stride..][..columns.x0.len()],
    )
}

/// [`horizontal_rows`] by [`Windows`].
///
/// # Safety
/// The processor must support AVX-512F; the arguments as `horizontal_rows` checked them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn horizontal_windows(
    input: &[f32],
    columns: &Columns,
    windows: &Windows,
    rows: RowSet,
    spans: &[Range<usize>],
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let w = columns.w;
    let mask = |n: usize| lane_mask(n, 0);
    for r in 0..rows.count {
        let (row, out_row) = row_pair(input, columns, rows, r, out);
        for span in spans {
            for b in span.start / WINDOW..span.end.div_ceil(WINDOW) {
                let base = windows.base[b] as usize;
                let left = w - base;
                let at = b * WINDOW;
                // SAFETY: the masks keep the loads inside the row and the store inside the span;
                // the index and weight arrays hold whole blocks; every index is below 32, so the
                // permutes pick lanes of the two loads, which `Windows::new` checked hold the taps.
                unsafe {
                    let src = row.as_ptr().add(base);
                    let lo = _mm512_maskz_loadu_ps(mask(left), src);
                    let hi = _mm512_maskz_loadu_ps(
                        mask(left.saturating_sub(WINDOW)),
                        src.wrapping_add(WINDOW),
                    );
                    let i0 = _mm512_loadu_si512(windows.index0.as_ptr().add(at).cast());
                    let i1 = _mm512_loadu_si512(windows.index1.as_ptr().add(at).cast());
                    let a = _mm512_permutex2var_ps(lo, i0, hi);
                    let c = _mm512_permutex2var_ps(lo, i1, hi);
                    let w0 = _mm512_loadu_ps(windows.w0.as_ptr().add(at));
                    let w1 = _mm512_loadu_ps(windows.w1.as_ptr().add(at));
                    // w0·a + w1·c with two roundings, as the scalar pass.
                    let v = _mm512_add_ps(_mm512_mul_ps(w0, a), _mm512_mul_ps(w1, c));
                    let dst = out_row.as_mut_ptr().add(at).cast();
                    _mm512_mask_storeu_ps(dst, mask(span.end - at), v);
                }
            }
        }
    }
}

/// [`horizontal_rows`] by [`Windows`] of [`WINDOW_AVX2`] outputs: one load and two permutes a
/// block.
///
/// # Safety
/// The processor must support AVX2; `windows` were built with `WINDOW_AVX2` for both; the
/// arguments as `horizontal_rows` checked them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_windows_avx2(
    input: &[f32],
    columns: &Columns,
    windows: &Windows,
    rows: RowSet,
    spans: &[Range<usize>],
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let w = columns.w;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for r in 0..rows.count {
        let (row, out_row) = row_pair(input, columns, rows, r, out);
        for span in spans {
            for b in span.start / WINDOW_AVX2..span.end.div_ceil(WINDOW_AVX2) {
                let base = windows.base[b] as usize;
                let (left, at) = ((w - base).min(WINDOW_AVX2), b * WINDOW_AVX2);
                // SAFETY: the load keeps to the row (masked at its end); the index and weight
                // arrays hold whole blocks; every index is below 8 and `Windows::new` checked that
                // the lanes it picks hold the taps.
                unsafe {
                    let src = row.as_ptr().add(base);
                    let v = if left == WINDOW_AVX2 {
                        _mm256_loadu_ps(src)
                    } else {
                        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lanes);
                        _mm256_maskload_ps(src, mask)
                    };
                    let i0 = _mm256_loadu_si256(windows.index0.as_ptr().add(at).cast());
                    let i1 = _mm256_loadu_si256(windows.index1.as_ptr().add(at).cast());
                    let a = _mm256_permutevar8x32_ps(v, i0);
                    let c = _mm256_permutevar8x32_ps(v, i1);
                    let w0 = _mm256_loadu_ps(windows.w0.as_ptr().add(at));
                    let w1 = _mm256_loadu_ps(windows.w1.as_ptr().add(at));
                    // w0·a + w1·c with two roundings, as the scalar pass.
                    let v = _mm256_add_ps(_mm256_mul_ps(w0, a), _mm256_mul_ps(w1, c));
                    let n = span.end - at;
                    if n >= WINDOW_AVX2 {
                        _mm256_storeu_ps(out_row.as_mut_ptr().add(at).cast(), v);
                    } else {
                        // The span's tail, without a masked store (slow on AMD's processors).
                        let mut tail = [0f32; WINDOW_AVX2];
                        _mm256_storeu_ps(tail.as_mut_ptr(), v);
                        for (o, &t) in out_row[at..span.end].iter_mut().zip(&tail) {
                            o.write(t);
                        }
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn horizontal_body<M: MulAdd>(
    input: &[f32],
    columns: &Columns,
    rows: RowSet,
    spans: &[Range<usize>],
    out: &mut [MaybeUninit<f32>],
) {
    for r in 0..rows.count {
        let (row, out_row) = row_pair(input, columns, rows, r, out);
        for span in spans {
            let (x0, x1) = (&columns.x0[span.clone()], &columns.x1[span.clone()]);
            let (w0, w1) = (&columns.w0[span.clone()], &columns.w1[span.clone()]);
            let out_row = &mut out_row[span.clone()];
            for x in 0..out_row.len() {
                // SAFETY: `Columns::new` checked every index against the row width `w`.
                let (a, b) = unsafe {
                    (
                        *row.get_unchecked(x0[x] as usize),
                        *row.get_unchecked(x1[x] as usize),
                    )
                };
                out_row[x].write(w0[x] * a + w1[x] * b);
            }
        }
    }
}

dispatch!(
    /// [`horizontal_rows`] tap by tap.
    fn horizontal_gather(
        input: &[f32],
        columns: &Columns,
        rows: RowSet,
        spans: &[Range<usize>],
        out: &mut [MaybeUninit<f32>],
    ) => horizontal_body
);

#[inline(always)]
fn blend_body<M: MulAdd>(
    top: &[f32],
    bottom: &[f32],
    wy0: f32,
    wy1: f32,
    out: &mut [MaybeUninit<f32>],
) {
    for ((o, &t), &b) in out.iter_mut().zip(top).zip(bottom) {
        o.write(wy0 * t + wy1 * b);
    }
}

dispatch!(
    /// `out = wy0·top + wy1·bottom`: the vertical pass, which also fills uninitialised outputs.
    pub(crate) fn blend(
        top: &[f32],
        bottom: &[f32],
        wy0: f32,
        wy1: f32,
        out: &mut [MaybeUninit<f32>],
    ) => blend_body
);

/// The tasks a pass over `rows` output rows (or runs of them) is cut into, at most: a few per
/// thread, each of which interpolates its first two source rows again.
pub(super) fn row_tasks(rows: usize) -> usize {
    (4 * rayon::current_num_threads()).clamp(1, rows.max(1))
}

/// For every output row, its two source rows and their weights.
pub(crate) fn row_taps(h: usize, oh: usize, align_corners: bool) -> Vec<(usize, usize, f32, f32)> {
    (0..oh)
        .map(|oy| {
            let (y0, y1, l) = source_index(oy, h, oh, align_corners);
            (y0, y1, (1.0 - l) as f32, l as f32)
        })
        .collect()
}

/// The horizontal pass alone: `planes` planes of `input` (planes, h, w) to `out` (planes, h, ow).
pub(crate) fn horizontal_planes(
    input: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
    ow: usize,
    align_corners: bool,
) {
    let columns = Columns::new(w, ow, align_corners);
    // SAFETY: `horizontal` only writes values.
    let out = unsafe { as_uninit(out) };
    out.par_chunks_mut(h * ow)
        .zip(input.par_chunks(h * w))
        .for_each(|(out, plane)| horizontal(plane, &columns, out));
}

/// Resizes every plane of `input` to `out` (its planes at `oh`x`ow`).
pub fn resize_planes(
    input: MapView<'_>,
    out: &mut [f32],
    (oh, ow): (usize, usize),
    align_corners: bool,
) {
    // SAFETY: `resize_planes_uninit` only writes values.
    let out = unsafe { as_uninit(out) };
    resize_planes_uninit(input, out, (oh, ow), align_corners, false);
}

/// [`resize_planes`] into memory not written yet (an [`output_vec`](super::output_vec)'s spare
/// capacity), every element of which it initialises. With `streaming`, for an output nothing
/// reads again soon (the logits handed to the caller), its lines go straight to memory rather
/// than through the cache on AVX-512 and AVX2 machines (`fastscnn bench --mode logits`).
pub fn resize_planes_uninit(
    input: MapView<'_>,
    out: &mut [MaybeUninit<f32>],
    (oh, ow): (usize, usize),
    align_corners: bool,
    streaming: bool,
) {
    let (planes, h, w) = (input.channels, input.height, input.width);
    let input = input.data;
    // Every output plane must have its input plane: a short input would leave planes unwritten.
    assert_eq!(input.len(), planes * h * w, "resize input");
    assert_eq!(out.len(), planes * oh * ow, "resize output");
    // The streaming stores are x86-64's; elsewhere every output goes through the cache.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = streaming;
    if (h, w) == (oh, ow) {
        for (o, &v) in out.iter_mut().zip(input) {
            o.write(v);
        }
        return;
    }
    let columns = Columns::new(w, ow, align_corners);
    let rows = row_taps(h, oh, align_corners);
    out.par_chunks_mut(oh * ow)
        .zip(input.par_chunks(h * w))
        .for_each_init(
            || Vec::with_capacity(h * ow),
            |scratch: &mut Vec<f32>, (out, plane)| {
                scratch.clear();
                horizontal(plane, &columns, &mut scratch.spare_capacity_mut()[..h * ow]);
                // SAFETY: `horizontal` wrote all h·ow floats.
                unsafe { scratch.set_len(h * ow) };
                for (out_row, &(y0, y1, wy0, wy1)) in out.chunks_exact_mut(ow).zip(&rows) {
                    let (top, bottom) = (&scratch[y0 * ow..][..ow], &scratch[y1 * ow..][..ow]);
                    #[cfg(target_arch = "x86_64")]
                    if streaming {
                        match Isa::current() {
                            // SAFETY: the processor has AVX-512F.
                            Isa::Avx512 => unsafe {
                                blend_streaming(top, bottom, wy0, wy1, out_row)
                            },
                            // SAFETY: the processor has AVX2.
                            Isa::Avx2 => unsafe {
                                blend_streaming_avx2(top, bottom, wy0, wy1, out_row)
                            },
                            Isa::Neon | Isa::Portable => blend(top, bottom, wy0, wy1, out_row),
                        }
                        continue;
                    }
                    blend(top, bottom, wy0, wy1, out_row);
                }
                // Streaming stores are weakly ordered: make them visible before the task ends.
                #[cfg(target_arch = "x86_64")]
                if streaming {
                    // SAFETY: SSE is part of x86-64.
                    unsafe { std::arch::x86_64::_mm_sfence() };
                }
            },
        );
}

/// [`blend`] with non-temporal stores for the full-resolution output: nothing reads it back
/// before the caller does, so the lines are written straight to memory instead of first being
/// read into the cache (half the memory traffic of the logits, the largest write of a frame).
///
/// # Safety
/// The processor must support AVX-512F. The caller fences (`_mm_sfence`) before the output is
/// read by another thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn blend_streaming(
    top: &[f32],
    bottom: &[f32],
    wy0: f32,
    wy1: f32,
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let n = out.len().min(top.len()).min(bottom.len());
    let (a, b) = (_mm512_set1_ps(wy0), _mm512_set1_ps(wy1));
    let dst = out.as_mut_ptr().cast::<f32>();
    // Up to the first 64-byte boundary (streaming stores need it), then whole vectors, then
    // the rest, the ends with masked ordinary stores.
    let head = (dst.align_offset(64)).min(n);
    let mut x = 0;
    let store = |x: usize, count: usize, stream: bool| {
        let mask = lane_mask(count, 0);
        // SAFETY: lanes x..x + count lie inside the three rows; streaming stores only on
        // whole, aligned vectors.
        unsafe {
            let t = _mm512_maskz_loadu_ps(mask, top.as_ptr().add(x));
            let d = _mm512_maskz_loadu_ps(mask, bottom.as_ptr().add(x));
            // wy0·top + wy1·bottom with two roundings, as `blend`.
            let v = _mm512_add_ps(_mm512_mul_ps(a, t), _mm512_mul_ps(b, d));
            if stream {
                _mm512_stream_ps(dst.add(x), v);
            } else {
                _mm512_mask_storeu_ps(dst.add(x), mask, v);
            }
        }
    };
    if head > 0 {
        store(0, head.min(16), false);
        x = head;
    }
    while x + 16 <= n {
        store(x, 16, true);
        x += 16;
    }
    if x < n {
        store(x, n - x, false);
    }
}

/// [`blend_streaming`] on AVX2: the row's unaligned ends through [`blend`], the 32-byte aligned
/// middle by streaming stores.
///
/// # Safety
/// The processor must support AVX2. The caller fences (`_mm_sfence`) before the output is read
/// by another thread.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blend_streaming_avx2(
    top: &[f32],
    bottom: &[f32],
    wy0: f32,
    wy1: f32,
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let n = out.len().min(top.len()).min(bottom.len());
    let head = out.as_ptr().align_offset(32).min(n);
    let end = head + (n - head) / 8 * 8;
    blend(&top[..head], &bottom[..head], wy0, wy1, &mut out[..head]);
    let (a, b) = (_mm256_set1_ps(wy0), _mm256_set1_ps(wy1));
    let dst = out.as_mut_ptr().cast::<f32>();
    for x in (head..end).step_by(8) {
        // SAFETY: x..x + 8 lies inside the three rows, and `dst + x` is 32-byte aligned.
        let t = _mm256_loadu_ps(top.as_ptr().add(x));
        let d = _mm256_loadu_ps(bottom.as_ptr().add(x));
        // wy0·top + wy1·bottom with two roundings, as `blend`.
        let v = _mm256_add_ps(_mm256_mul_ps(a, t), _mm256_mul_ps(b, d));
        _mm256_stream_ps(dst.add(x), v);
    }
    blend(&top[end..n], &bottom[end..n], wy0, wy1, &mut out[end..n]);
}
