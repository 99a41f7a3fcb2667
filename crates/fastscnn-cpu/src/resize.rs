//! Bilinear resize of channel planes, and the fused resize + argmax, as two separable passes.
//!
//! Upsampling by 8 reads each input row for eight output rows. Interpolating every input row
//! horizontally once, then blending pairs of those rows vertically, turns the per-pixel gather of
//! four samples into a gather over 1/8 of the rows and a vector blend over the rest. The
//! arithmetic is the one of [`crate::ops::resize_bilinear`]'s kernel (horizontal, then vertical,
//! no fused multiply-adds), so labels equal those of resizing then taking the argmax.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::buffers::as_uninit;
#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::lane_mask;
use super::simd::{dispatch, MulAdd};
use crate::sampling::{source_index, taps};

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
            windows: match super::simd::Isa::detected() {
                super::simd::Isa::Avx512 => Windows::new(&taps, WINDOW, 2 * WINDOW),
                super::simd::Isa::Avx2 => Windows::new(&taps, WINDOW_AVX2, WINDOW_AVX2),
                super::simd::Isa::Neon | super::simd::Isa::Portable => None,
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
        match super::simd::Isa::detected() {
            // SAFETY: the processor has AVX-512F, and `windows` were built for it.
            super::simd::Isa::Avx512 => {
                return unsafe { horizontal_windows(input, columns, windows, rows, spans, out) }
            }
            // SAFETY: the processor has AVX2, and `windows` were built for it.
            super::simd::Isa::Avx2 => {
                return unsafe {
                    horizontal_windows_avx2(input, columns, windows, rows, spans, out)
                }
            }
            super::simd::Isa::Neon | super::simd::Isa::Portable => {}
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

/// Resizes `planes` planes of `input` (planes, h, w) to `out` (planes, oh, ow).
#[allow(clippy::too_many_arguments)]
pub fn resize_planes(
    input: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    out: &mut [f32],
    oh: usize,
    ow: usize,
    align_corners: bool,
) {
    // SAFETY: `resize_planes_uninit` only writes values.
    let out = unsafe { as_uninit(out) };
    resize_planes_uninit(input, planes, h, w, out, oh, ow, align_corners, false);
}

/// [`resize_planes`] into memory not written yet (an [`output_vec`](super::output_vec)'s spare
/// capacity), every element of which it initialises. With `streaming`, for an output nothing
/// reads again soon (the logits handed to the caller), its lines go straight to memory rather
/// than through the cache on AVX-512 and AVX2 machines (`fastscnn bench --mode logits`).
#[allow(clippy::too_many_arguments)]
pub fn resize_planes_uninit(
    input: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    out: &mut [MaybeUninit<f32>],
    oh: usize,
    ow: usize,
    align_corners: bool,
    streaming: bool,
) {
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
                        match super::simd::Isa::detected() {
                            // SAFETY: the processor has AVX-512F.
                            super::simd::Isa::Avx512 => unsafe {
                                blend_streaming(top, bottom, wy0, wy1, out_row)
                            },
                            // SAFETY: the processor has AVX2.
                            super::simd::Isa::Avx2 => unsafe {
                                blend_streaming_avx2(top, bottom, wy0, wy1, out_row)
                            },
                            super::simd::Isa::Neon | super::simd::Isa::Portable => {
                                blend(top, bottom, wy0, wy1, out_row)
                            }
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

/// Output pixels of one argmax block: their running best scores and labels stay in registers
/// (four AVX2 vectors each) while the block reads every class; only the labels are stored.
const ARGMAX_BLOCK: usize = 32;

/// Labels of `ARGMAX_BLOCK` pixels from `x` on (fewer at the row's end), `top` and `bottom` the
/// horizontally interpolated source rows of every class, `stride` floats apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn argmax_block_body<M: MulAdd>(
    top: &[f32],
    bottom: &[f32],
    classes: usize,
    stride: usize,
    x: usize,
    wy0: f32,
    wy1: f32,
    labels: &mut [u32],
) {
    let n = ARGMAX_BLOCK.min(labels.len() - x);
    let mut best = [0f32; ARGMAX_BLOCK];
    let mut label = [0u32; ARGMAX_BLOCK];
    if n == ARGMAX_BLOCK {
        // Whole blocks with fixed bounds: the compiler keeps `best` and `label` in registers.
        let (t, d) = (&top[x..][..ARGMAX_BLOCK], &bottom[x..][..ARGMAX_BLOCK]);
        for j in 0..ARGMAX_BLOCK {
            best[j] = wy0 * t[j] + wy1 * d[j];
        }
        for class in 1..classes {
            let (t, d) = (
                &top[class * stride + x..][..ARGMAX_BLOCK],
                &bottom[class * stride + x..][..ARGMAX_BLOCK],
            );
            for j in 0..ARGMAX_BLOCK {
                let v = wy0 * t[j] + wy1 * d[j];
                let wins = v > best[j];
                best[j] = if wins { v } else { best[j] };
                label[j] = if wins { class as u32 } else { label[j] };
            }
        }
        labels[x..x + ARGMAX_BLOCK].copy_from_slice(&label);
        return;
    }
    for class in 0..classes {
        let (t, d) = (
            &top[class * stride + x..][..n],
            &bottom[class * stride + x..][..n],
        );
        for j in 0..n {
            let v = wy0 * t[j] + wy1 * d[j];
            if class == 0 || v > best[j] {
                (best[j], label[j]) = (v, class as u32);
            }
        }
    }
    labels[x..x + n].copy_from_slice(&label[..n]);
}

dispatch!(
    #[allow(clippy::too_many_arguments)]
    fn argmax_block(
        top: &[f32],
        bottom: &[f32],
        classes: usize,
        stride: usize,
        x: usize,
        wy0: f32,
        wy1: f32,
        labels: &mut [u32],
    ) => argmax_block_body
);

/// [`argmax_block`] on AVX2, with intrinsics: compiled from the portable body, the running best
/// lives on the stack and is updated by masked stores (`vmaskmovps`), which AMD's processors run
/// at a fraction of the rate of an ordinary store. The same arithmetic (two products, one sum)
/// and tie rule (a later class must score higher), so the same labels.
///
/// # Safety
/// The processor must support AVX2; `top` and `bottom` hold `classes` rows `stride` floats
/// apart, each at least `x + ARGMAX_BLOCK` long, and `x + ARGMAX_BLOCK <= labels.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn argmax_block_avx2(
    top: &[f32],
    bottom: &[f32],
    (classes, stride, x): (usize, usize, usize),
    (wy0, wy1): (f32, f32),
    labels: &mut [u32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = ARGMAX_BLOCK / 8;
    let (a, b) = (_mm256_set1_ps(wy0), _mm256_set1_ps(wy1));
    // SAFETY (all loads and the store): every class row holds x..x + ARGMAX_BLOCK.
    let score = |class: usize, j: usize| unsafe {
        let at = class * stride + x + 8 * j;
        let t = _mm256_loadu_ps(top.as_ptr().add(at));
        let d = _mm256_loadu_ps(bottom.as_ptr().add(at));
        _mm256_add_ps(_mm256_mul_ps(a, t), _mm256_mul_ps(b, d))
    };
    let mut best: [__m256; VECTORS] = std::array::from_fn(|j| score(0, j));
    // The labels' bits, carried through float blends.
    let mut label = [_mm256_setzero_ps(); VECTORS];
    for class in 1..classes {
        let id = _mm256_castsi256_ps(_mm256_set1_epi32(class as i32));
        for j in 0..VECTORS {
            let v = score(class, j);
            let wins = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best[j]);
            // `v > best ? v : best`, NaNs included, as the blend with `wins` would be.
            best[j] = _mm256_max_ps(v, best[j]);
            label[j] = _mm256_blendv_ps(label[j], id, wins);
        }
    }
    for (j, label) in label.into_iter().enumerate() {
        _mm256_storeu_ps(labels.as_mut_ptr().add(x + 8 * j).cast(), label);
    }
}

/// Output columns `spans` of source row `y` of every class plane of `scores` (classes, h,
/// `columns.w`), interpolated horizontally into `out`'s rows of [`class_stride`] floats.
fn horizontal_row(
    scores: &[f32],
    (classes, h, y): (usize, usize, usize),
    columns: &Columns,
    spans: &[Range<usize>],
    out: &mut [f32],
) {
    let w = columns.w;
    let rows = RowSet {
        count: classes,
        input_stride: h * w,
        output_stride: class_stride(columns.x0.len()),
    };
    // SAFETY: `horizontal_rows` only writes values.
    let out = unsafe { as_uninit(out) };
    horizontal_rows(&scores[y * w..], columns, rows, spans, out);
}

/// Output rows a label map's argmax is cut into, at most: a few per thread, each of which
/// interpolates its first two source rows again.
fn argmax_tasks(oh: usize) -> usize {
    (4 * rayon::current_num_threads()).clamp(1, oh.max(1))
}

/// The scratch [`resize_argmax_planes`] runs fastest with, from `h`x`w` scores to `oh`x`ow`
/// labels: the source map's labels, and two horizontally interpolated rows of every class for
/// each of its tasks.
pub fn resize_argmax_scratch_len(
    classes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> usize {
    h * w + argmax_tasks(oh) * 2 * classes * class_stride(ow)
}

/// The least scratch [`resize_argmax_planes`] runs with: the source map's labels and one task's
/// two rows of every class, all tasks taking turns with it.
pub fn resize_argmax_min_scratch_len(classes: usize, (h, w): (usize, usize), ow: usize) -> usize {
    h * w + 2 * classes * class_stride(ow)
}

/// Floats from one class's interpolated row to the next's: a 64-byte line more than a whole
/// number of lines, so that the 38 rows an argmax block reads do not fall in the same few L1
/// sets, as rows a multiple of 4 KiB apart would (8 KiB at 2048 wide).
fn class_stride(ow: usize) -> usize {
    ow.next_multiple_of(16) + 16
}

/// The argmax over classes of `resize_planes(scores)` at `oh`x`ow`, into `labels` (oh, ow), the
/// first class winning ties.
///
/// Inside a region of one label, an output pixel lies between four source pixels of that label
/// and needs no scores at all: a bilinear blend is a weighted sum with non-negative weights, and
/// rounding is monotonic, so a class that scores at least as high as every other at all four
/// corners does so in the blend too. Such a block of [`ARGMAX_BLOCK`] pixels takes the label
/// its source pixels share. (The labels equal those of resizing then taking the argmax, but
/// where rounding makes a lower class's blended score exactly equal the shared label's: the
/// reference gives the lower class, this the shared one.) The time therefore depends on the
/// scene: `cargo bench -p fastscnn-benches --bench kernels -- resize_argmax` times random scores,
/// where no block is skipped (`separable`), and a scene's regions (`separable_regions`);
/// `fastscnn bench --image` times a real frame.
///
/// Each task walks its output rows keeping the two source rows they blend, interpolated
/// horizontally for every class in the columns some block of them needs (the eight output rows
/// between two source rows share them), and takes the argmax of the other blocks with the
/// running best in registers: no full-resolution score is stored, nor the horizontal pass of
/// the whole map. `scratch` (kept by the caller, so repeated frames allocate nothing) holds at
/// least the source labels and one task's two rows of every class;
/// [`resize_argmax_scratch_len`] floats give every task its own.
#[allow(clippy::too_many_arguments)]
pub fn resize_argmax_planes(
    scores: &[f32],
    classes: usize,
    h: usize,
    w: usize,
    labels: &mut [u32],
    oh: usize,
    ow: usize,
    align_corners: bool,
    scratch: &mut [f32],
) {
    assert!(classes > 0, "resize_argmax: no classes");
    assert_eq!(scores.len(), classes * h * w, "resize_argmax scores");
    assert_eq!(labels.len(), oh * ow, "resize_argmax labels");
    if oh * ow == 0 {
        return;
    }
    assert!(scratch.len() >= h * w, "resize_argmax scratch");
    let (source, scratch) = scratch.split_at_mut(h * w);
    source_labels(scores, classes, source);
    let source = &*source;
    let columns = Columns::new(w, ow, align_corners);
    // The source columns each block reads, first to last.
    let spans: Vec<(usize, usize)> = (0..ow)
        .step_by(ARGMAX_BLOCK)
        .map(|x| {
            let block = x..(x + ARGMAX_BLOCK).min(ow);
            let (x0, x1) = (&columns.x0[block.clone()], &columns.x1[block]);
            let lo = x0.iter().chain(x1).min().copied().unwrap_or(0) as usize;
            let hi = x0.iter().chain(x1).max().copied().unwrap_or(0) as usize;
            (lo, hi)
        })
        .collect();
    let stride = class_stride(ow);
    let pair = 2 * classes * stride;
    let tasks = argmax_tasks(oh).min(scratch.len() / pair);
    assert!(tasks > 0, "resize_argmax scratch");
    let rows_per_task = oh.div_ceil(tasks);
    // Every output row's source rows and weights.
    let rows = row_taps(h, oh, align_corners);
    let chunks = ow.div_ceil(ARGMAX_COLUMNS);
    #[cfg(target_arch = "x86_64")]
    let avx2 = super::simd::Isa::detected() == super::simd::Isa::Avx2;
    labels
        .par_chunks_mut(rows_per_task * ow)
        .zip(scratch.par_chunks_mut(pair))
        .enumerate()
        .for_each(|(task, (labels, pair))| {
            let (mut top, mut bottom) = pair.split_at_mut(classes * stride);
            // The source rows `top` and `bottom` hold, and which blocks' columns of them.
            let mut held = [usize::MAX; 2];
            let mut ready = [vec![false; spans.len()], vec![false; spans.len()]];
            // A run's label for each block its source pixels agree on, and the output columns
            // whose scores it needs.
            let mut shared = vec![None; spans.len()];
            let mut needed: Vec<Range<usize>> = Vec::new();
            let first = task * rows_per_task;
            let taps = &rows[first..first + labels.len() / ow];
            let mut i = 0;
            while i < taps.len() {
                // The run of output rows that blend the same two source rows.
                let (y0, y1, _, _) = taps[i];
                let end = (i + 1..taps.len())
                    .find(|&r| (taps[r].0, taps[r].1) != (y0, y1))
                    .unwrap_or(taps.len());
                if held[0] != y0 {
                    if held[1] == y0 {
                        std::mem::swap(&mut top, &mut bottom);
                        held.swap(0, 1);
                        ready.swap(0, 1);
                    } else {
                        held[0] = y0;
                        ready[0].fill(false);
                    }
                }
                if held[1] != y1 {
                    held[1] = y1;
                    ready[1].fill(false);
                }
                let (labels0, labels1) = (&source[y0 * w..][..w], &source[y1 * w..][..w]);
                for (shared, &span) in shared.iter_mut().zip(&spans) {
                    *shared = shared_label(labels0, labels1, span);
                }
                for (slot, y) in [(0, y0), (1, y1)] {
                    needed.clear();
                    for (b, ready) in ready[slot].iter_mut().enumerate() {
                        if shared[b].is_some() || *ready {
                            continue;
                        }
                        *ready = true;
                        let x = b * ARGMAX_BLOCK..((b + 1) * ARGMAX_BLOCK).min(ow);
                        match needed.last_mut() {
                            Some(last) if last.end == x.start => last.end = x.end,
                            _ => needed.push(x),
                        }
                    }
                    if !needed.is_empty() {
                        let row = if slot == 0 { &mut *top } else { &mut *bottom };
                        horizontal_row(scores, (classes, h, y), &columns, &needed, row);
                    }
                }
                // Column chunk by column chunk of the run, so the rows' columns stay in L1 for
                // all of it.
                for chunk in 0..chunks {
                    let x0 = chunk * ARGMAX_COLUMNS;
                    let x1 = (x0 + ARGMAX_COLUMNS).min(ow);
                    let shared = &shared[x0 / ARGMAX_BLOCK..x1.div_ceil(ARGMAX_BLOCK)];
                    let blocks = ArgmaxBlocks {
                        top,
                        bottom,
                        classes,
                        stride,
                    };
                    let run = &taps[i..end];
                    let labels = &mut labels[i * ow..end * ow];
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the processor has AVX2; `top` and `bottom` hold `classes`
                        // rows `stride` apart, of `ow` floats each, as `labels`' rows are.
                        unsafe { blocks.run_avx2(run, x0..x1, shared, labels) };
                        continue;
                    }
                    blocks.run(run, x0..x1, shared, labels);
                }
                i = end;
            }
        });
}

/// The argmax of a run's blocks: `top` and `bottom` are the horizontally interpolated source
/// rows of every class, `stride` floats apart.
struct ArgmaxBlocks<'a> {
    top: &'a [f32],
    bottom: &'a [f32],
    classes: usize,
    stride: usize,
}

impl ArgmaxBlocks<'_> {
    /// The labels of `columns` (from a multiple of [`ARGMAX_BLOCK`]; `shared` has one entry per
    /// block) of the output rows `labels` holds, which blend `top` and `bottom` by the weights
    /// of `run`: each block's shared label where it has one, else the argmax of its blended
    /// scores.
    fn run(
        &self,
        run: &[(usize, usize, f32, f32)],
        columns: Range<usize>,
        shared: &[Option<u32>],
        labels: &mut [u32],
    ) {
        let ow = labels.len() / run.len();
        for (&(_, _, wy0, wy1), row) in run.iter().zip(labels.chunks_exact_mut(ow)) {
            for (b, shared) in shared.iter().enumerate() {
                let x = columns.start + b * ARGMAX_BLOCK;
                match *shared {
                    Some(label) => row[x..(x + ARGMAX_BLOCK).min(columns.end)].fill(label),
                    None => {
                        let (top, bottom) = (self.top, self.bottom);
                        argmax_block(top, bottom, self.classes, self.stride, x, wy0, wy1, row)
                    }
                }
            }
        }
    }

    /// [`Self::run`] with [`argmax_block_avx2`] for whole blocks, its loops compiled for AVX2
    /// too: a call per block from the task's loop (compiled for SSE2) would add the calls and
    /// that loop to every block
    /// (`cargo bench -p fastscnn-benches --bench kernels -- resize_argmax`, `separable`). Blocks
    /// are counted, not stepped over: `step_by` divides on every call.
    ///
    /// # Safety
    /// The processor must support AVX2; `top` and `bottom` hold `classes` rows `stride` apart,
    /// each as long as the rows of `labels`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(
        &self,
        run: &[(usize, usize, f32, f32)],
        columns: Range<usize>,
        shared: &[Option<u32>],
        labels: &mut [u32],
    ) {
        let (top, bottom, classes, stride) = (self.top, self.bottom, self.classes, self.stride);
        let ow = labels.len() / run.len();
        for (&(_, _, wy0, wy1), row) in run.iter().zip(labels.chunks_exact_mut(ow)) {
            for (b, shared) in shared.iter().enumerate() {
                let x = columns.start + b * ARGMAX_BLOCK;
                match *shared {
                    Some(label) => row[x..(x + ARGMAX_BLOCK).min(columns.end)].fill(label),
                    None if x + ARGMAX_BLOCK <= ow => {
                        // SAFETY: the caller's contract, and the block lies inside the rows.
                        unsafe {
                            argmax_block_avx2(top, bottom, (classes, stride, x), (wy0, wy1), row)
                        }
                    }
                    None => argmax_block(top, bottom, classes, stride, x, wy0, wy1, row),
                }
            }
        }
    }
}

/// Output columns an argmax run takes at a time: 2 x 19 class rows of them, 19 KiB, stay in L1
/// for all its output rows, where whole rows (300 KiB at 2048 wide) would come from L2 for each.
const ARGMAX_COLUMNS: usize = 4 * ARGMAX_BLOCK;

/// The label the source pixels in columns `lo..=hi` of two source rows' labels share, if they
/// all have one.
fn shared_label(top: &[f32], bottom: &[f32], (lo, hi): (usize, usize)) -> Option<u32> {
    let first = top[lo];
    let same = top[lo..=hi]
        .iter()
        .chain(&bottom[lo..=hi])
        .all(|&l| l == first);
    same.then_some(first as u32)
}

/// Every source pixel's label (the first class winning ties, as the argmax of the blend), as
/// a float, into `labels` (one plane of `scores`, which holds `classes` planes).
fn source_labels(scores: &[f32], classes: usize, labels: &mut [f32]) {
    let plane = labels.len();
    labels
        .par_chunks_mut(SOURCE_LABELS_TASK)
        .enumerate()
        .for_each(|(task, labels)| {
            for (b, labels) in labels.chunks_mut(ARGMAX_BLOCK).enumerate() {
                let p = task * SOURCE_LABELS_TASK + b * ARGMAX_BLOCK;
                #[cfg(target_arch = "x86_64")]
                if labels.len() == ARGMAX_BLOCK
                    && super::simd::Isa::detected() == super::simd::Isa::Avx2
                {
                    // SAFETY: the processor has AVX2; every class plane holds p..p + the block.
                    unsafe { source_block_avx2(scores, classes, plane, p, labels) };
                    continue;
                }
                source_block(scores, classes, plane, p, labels);
            }
        });
}

/// Source pixels a task of [`source_labels`] takes.
const SOURCE_LABELS_TASK: usize = 64 * ARGMAX_BLOCK;

#[inline(always)]
fn source_block_body<M: MulAdd>(
    scores: &[f32],
    classes: usize,
    plane: usize,
    p: usize,
    labels: &mut [f32],
) {
    let n = labels.len().min(ARGMAX_BLOCK);
    let mut best = [0f32; ARGMAX_BLOCK];
    let mut label = [0f32; ARGMAX_BLOCK];
    best[..n].copy_from_slice(&scores[p..p + n]);
    for class in 1..classes {
        let s = &scores[class * plane + p..][..n];
        for j in 0..n {
            let wins = s[j] > best[j];
            best[j] = if wins { s[j] } else { best[j] };
            label[j] = if wins { class as f32 } else { label[j] };
        }
    }
    labels[..n].copy_from_slice(&label[..n]);
}

dispatch!(
    /// The labels of source pixels `p..p + labels.len()` (at most [`ARGMAX_BLOCK`]).
    fn source_block(scores: &[f32], classes: usize, plane: usize, p: usize, labels: &mut [f32]) => source_block_body
);

/// [`source_block`] of a whole block on AVX2, with intrinsics, for the reason of
/// [`argmax_block_avx2`]: the same comparisons (a later class must score higher), so the same
/// labels. The loop is written out in both, not shared as a function taking the scores and the
/// label ids as closures, which compiles to a slower loop
/// (`cargo bench -p fastscnn-benches --bench kernels -- resize_argmax`, `separable`).
///
/// # Safety
/// The processor must support AVX2; `scores` holds `classes` planes of `plane` floats, each
/// with `p..p + ARGMAX_BLOCK`, and `labels` is `ARGMAX_BLOCK` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn source_block_avx2(
    scores: &[f32],
    classes: usize,
    plane: usize,
    p: usize,
    labels: &mut [f32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = ARGMAX_BLOCK / 8;
    assert!(
        labels.len() == ARGMAX_BLOCK && scores.len() >= (classes - 1) * plane + p + ARGMAX_BLOCK
    );
    // SAFETY (all loads and the stores): checked just above.
    let score = |class: usize, j: usize| unsafe {
        _mm256_loadu_ps(scores.as_ptr().add(class * plane + p + 8 * j))
    };
    let mut best: [__m256; VECTORS] = std::array::from_fn(|j| score(0, j));
    let mut label = [_mm256_setzero_ps(); VECTORS];
    for class in 1..classes {
        let id = _mm256_set1_ps(class as f32);
        for j in 0..VECTORS {
            let v = score(class, j);
            let wins = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best[j]);
            best[j] = _mm256_max_ps(v, best[j]);
            label[j] = _mm256_blendv_ps(label[j], id, wins);
        }
    }
    for (j, label) in label.into_iter().enumerate() {
        _mm256_storeu_ps(labels.as_mut_ptr().add(8 * j), label);
    }
}
