//! Bilinear resize of channel planes, and the fused resize + argmax, as two separable passes.
//!
//! Upsampling by 8 reads each input row for eight output rows. Interpolating every input row
//! horizontally once, then blending pairs of those rows vertically, turns the per-pixel gather of
//! four samples into a gather over 1/8 of the rows and a vector blend over the rest. The
//! arithmetic is the one of [`crate::ops::resize_bilinear`]'s kernel (horizontal, then vertical,
//! no fused multiply-adds), so labels equal those of resizing then taking the argmax.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::buffers::as_uninit;
#[cfg(target_arch = "x86_64")]
use super::gemm_avx512::lane_mask;
use super::simd::{dispatch, MulAdd};
use crate::ops::{source_index, taps};

/// The horizontal pass's taps, one entry per output column, as separate arrays so that the
/// compiler can vectorise the pass with gathers.
struct Columns {
    x0: Vec<u32>,
    x1: Vec<u32>,
    w0: Vec<f32>,
    w1: Vec<f32>,
    /// The input width every index is below.
    w: usize,
    /// The same taps by windows, where they fit (upsampling).
    windows: Option<Windows>,
}

/// The taps by blocks of [`WINDOW`] output columns, each block's taps relative to its first
/// input column `base`: all within two vectors of it when upsampling, so on AVX-512 a block is
/// two loads and two in-register permutes, where gathers fetched each tap on its own (a quarter
/// of the logits' resize at 384x768). The weights are padded to whole blocks.
struct Windows {
    base: Vec<u32>,
    index0: Vec<u32>,
    index1: Vec<u32>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

/// Output columns per window: one AVX-512 vector.
const WINDOW: usize = 16;

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
            windows: Windows::new(&taps),
        }
    }
}

impl Windows {
    /// `None` when some block's taps spread over more than two vectors (downsampling).
    fn new(taps: &[(usize, usize, f32, f32)]) -> Option<Self> {
        let blocks = taps.len().div_ceil(WINDOW);
        let mut windows = Self {
            base: Vec::with_capacity(blocks),
            index0: vec![0; blocks * WINDOW],
            index1: vec![0; blocks * WINDOW],
            w0: vec![0.0; blocks * WINDOW],
            w1: vec![0.0; blocks * WINDOW],
        };
        for (b, block) in taps.chunks(WINDOW).enumerate() {
            let base = block.iter().map(|t| t.0.min(t.1)).min()?;
            windows.base.push(base as u32);
            for (i, &(x0, x1, w0, w1)) in block.iter().enumerate() {
                let (i0, i1) = (x0 - base, x1 - base);
                if i0.max(i1) >= 2 * WINDOW {
                    return None;
                }
                let at = b * WINDOW + i;
                (windows.index0[at], windows.index1[at]) = (i0 as u32, i1 as u32);
                (windows.w0[at], windows.w1[at]) = (w0, w1);
            }
        }
        Some(windows)
    }
}

/// Every row of `plane` (h, `columns.w`) interpolated horizontally, into `out` (h, ow).
fn horizontal(plane: &[f32], columns: &Columns, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(windows) = &columns.windows {
        if super::simd::Isa::detected() == super::simd::Isa::Avx512 {
            // SAFETY: the processor has AVX-512F.
            return unsafe { horizontal_windows(plane, columns, windows, out) };
        }
    }
    horizontal_gather(plane, columns, out)
}

/// [`horizontal`] by [`Windows`].
///
/// # Safety
/// The processor must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn horizontal_windows(
    plane: &[f32],
    columns: &Columns,
    windows: &Windows,
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (w, ow) = (columns.w, columns.x0.len());
    let mask = |n: usize| lane_mask(n, 0);
    for (row, out_row) in plane.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
        for (b, &base) in windows.base.iter().enumerate() {
            let base = base as usize;
            let left = w - base;
            let at = b * WINDOW;
            // SAFETY: the masks keep the loads inside the row and the store inside `out_row`;
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
                _mm512_mask_storeu_ps(out_row.as_mut_ptr().add(at).cast(), mask(ow - at), v);
            }
        }
    }
}

#[inline(always)]
fn horizontal_body<M: MulAdd>(plane: &[f32], columns: &Columns, out: &mut [MaybeUninit<f32>]) {
    let (w, ow) = (columns.w, columns.x0.len());
    let (x0, x1) = (&columns.x0[..ow], &columns.x1[..ow]);
    let (w0, w1) = (&columns.w0[..ow], &columns.w1[..ow]);
    for (row, out_row) in plane.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
        for x in 0..ow {
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

dispatch!(
    /// [`horizontal`] tap by tap.
    fn horizontal_gather(plane: &[f32], columns: &Columns, out: &mut [MaybeUninit<f32>]) => horizontal_body
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
/// than through the cache on AVX-512 and AVX2 machines (3% of the frame at 768x1536).
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
                            super::simd::Isa::Portable => blend(top, bottom, wy0, wy1, out_row),
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn argmax_row_body<M: MulAdd>(
    horizontal: &[f32],
    classes: usize,
    plane: usize,
    y0: usize,
    y1: usize,
    wy0: f32,
    wy1: f32,
    best: &mut [f32],
    labels: &mut [u32],
) {
    let ow = labels.len();
    for class in 0..classes {
        let base = &horizontal[class * plane..(class + 1) * plane];
        let (top, bottom) = (&base[y0 * ow..][..ow], &base[y1 * ow..][..ow]);
        if class == 0 {
            for ((b, &t), &d) in best.iter_mut().zip(top).zip(bottom) {
                *b = wy0 * t + wy1 * d;
            }
            labels.fill(0);
            continue;
        }
        let id = class as u32;
        for (((b, l), &t), &d) in best.iter_mut().zip(labels.iter_mut()).zip(top).zip(bottom) {
            let v = wy0 * t + wy1 * d;
            let wins = v > *b;
            *b = if wins { v } else { *b };
            *l = if wins { id } else { *l };
        }
    }
}

dispatch!(
    #[allow(clippy::too_many_arguments)]
    fn argmax_row(
        horizontal: &[f32],
        classes: usize,
        plane: usize,
        y0: usize,
        y1: usize,
        wy0: f32,
        wy1: f32,
        best: &mut [f32],
        labels: &mut [u32],
    ) => argmax_row_body
);

/// [`argmax_row`] on AVX2, written with intrinsics: compiled from the portable body, the running
/// best score's and label's conditional updates became masked stores (`vmaskmovps`), which AMD's
/// processors run at a fraction of the rate of an ordinary store; here the blends are stored
/// whole. The same passes, arithmetic (two products, one sum) and tie rule (a later class must
/// score higher), so the labels are identical.
///
/// # Safety
/// The processor must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn argmax_row_avx2(
    horizontal: &[f32],
    classes: usize,
    plane: usize,
    (y0, y1, wy0, wy1): (usize, usize, f32, f32),
    best: &mut [f32],
    labels: &mut [u32],
) {
    use std::arch::{asm, x86_64::*};
    let ow = labels.len();
    let best = &mut best[..ow];
    let (a, b) = (_mm256_set1_ps(wy0), _mm256_set1_ps(wy1));
    let vectors = ow / 8 * 8;
    for class in 0..classes {
        let base = &horizontal[class * plane..(class + 1) * plane];
        let (top, bottom) = (&base[y0 * ow..][..ow], &base[y1 * ow..][..ow]);
        let id = _mm256_castsi256_ps(_mm256_set1_epi32(class as i32));
        for x in (0..vectors).step_by(8) {
            // SAFETY: x + 8 <= ow, the length of all four rows.
            unsafe {
                let t = _mm256_loadu_ps(top.as_ptr().add(x));
                let d = _mm256_loadu_ps(bottom.as_ptr().add(x));
                let v = _mm256_add_ps(_mm256_mul_ps(a, t), _mm256_mul_ps(b, d));
                let best_at = best.as_mut_ptr().add(x);
                let label_at = labels.as_mut_ptr().add(x).cast::<f32>();
                if class == 0 {
                    _mm256_storeu_ps(best_at, v);
                    _mm256_storeu_ps(label_at, _mm256_setzero_ps());
                    continue;
                }
                let old = _mm256_loadu_ps(best_at);
                let wins = _mm256_cmp_ps::<_CMP_GT_OQ>(v, old);
                // The labels' bits, carried through float blends.
                let label = _mm256_loadu_ps(label_at);
                let mut blended = [
                    _mm256_blendv_ps(old, v, wins),
                    _mm256_blendv_ps(label, id, wins),
                ];
                // Opaque to LLVM, which turns a blend with what was loaded from the same place
                // back into a masked store even when it is written with intrinsics.
                asm!(
                    "/* {0} {1} */",
                    inout(ymm_reg) blended[0],
                    inout(ymm_reg) blended[1],
                    options(pure, nomem, nostack),
                );
                _mm256_storeu_ps(best_at, blended[0]);
                _mm256_storeu_ps(label_at, blended[1]);
            }
        }
        for x in vectors..ow {
            let v = wy0 * top[x] + wy1 * bottom[x];
            if class == 0 || v > best[x] {
                (best[x], labels[x]) = (v, class as u32);
            }
        }
    }
}

/// The argmax over classes of `resize_planes(scores)` at `oh`x`ow`, into `labels` (oh, ow), the
/// first class winning ties; `scratch`, at least `classes * h * ow` long, holds the horizontally
/// interpolated scores (kept by the caller, so repeated frames allocate nothing).
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
    let columns = Columns::new(w, ow, align_corners);
    let plane = h * ow;
    assert!(scratch.len() >= classes * plane, "resize_argmax scratch");
    let horizontal_scores = &mut scratch[..classes * plane];
    // SAFETY: `horizontal` only writes values.
    unsafe { as_uninit(horizontal_scores) }
        .par_chunks_mut(plane)
        .zip(scores.par_chunks(h * w))
        .for_each(|(out, class_plane)| horizontal(class_plane, &columns, out));
    let horizontal_scores = &*horizontal_scores;
    labels.par_chunks_mut(ow).enumerate().for_each_init(
        || vec![0f32; ow],
        |best, (oy, row)| {
            let (y0, y1, l) = source_index(oy, h, oh, align_corners);
            let (wy0, wy1) = ((1.0 - l) as f32, l as f32);
            #[cfg(target_arch = "x86_64")]
            if super::simd::Isa::detected() == super::simd::Isa::Avx2 {
                let rows = (y0, y1, wy0, wy1);
                // SAFETY: the processor has AVX2.
                return unsafe {
                    argmax_row_avx2(horizontal_scores, classes, plane, rows, best, row)
                };
            }
            argmax_row(
                horizontal_scores,
                classes,
                plane,
                y0,
                y1,
                wy0,
                wy1,
                best,
                row,
            );
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{resize_argmax, resize_bilinear};
    use crate::testing::random_tensor;

    #[test]
    fn equal_the_resize_and_argmax_ops_exactly() {
        for align_corners in [true, false] {
            for ((h, w), (oh, ow)) in [
                ((8, 16), (64, 128)),
                ((6, 11), (37, 90)),
                ((3, 40), (5, 41)),
                ((2, 50), (3, 20)),
                ((5, 7), (13, 3)),
                ((4, 4), (4, 4)),
                ((3, 5), (1, 1)),
            ] {
                let c = 19;
                let x = random_tensor(&[1, c, h, w], 7).unwrap();
                let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut out = vec![0f32; c * oh * ow];
                resize_planes(&data, c, h, w, &mut out, oh, ow, align_corners);
                let expected: Vec<f32> = resize_bilinear(&x, oh, ow, align_corners)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(out, expected, "{h}x{w} -> {oh}x{ow}");
                // Into fresh memory, with streaming stores where the processor has them.
                let mut fresh = crate::cpu::output_vec::<f32>(c * oh * ow);
                let spare = &mut fresh.spare_capacity_mut()[..c * oh * ow];
                resize_planes_uninit(&data, c, h, w, spare, oh, ow, align_corners, true);
                // SAFETY: the resize initialised all of it.
                unsafe { fresh.set_len(c * oh * ow) };
                assert_eq!(fresh, expected, "streaming {h}x{w} -> {oh}x{ow}");
                let mut labels = vec![0u32; oh * ow];
                let mut scratch = vec![0f32; c * h * ow];
                resize_argmax_planes(
                    &data,
                    c,
                    h,
                    w,
                    &mut labels,
                    oh,
                    ow,
                    align_corners,
                    &mut scratch,
                );
                let expected: Vec<u32> = resize_argmax(&x, oh, ow, align_corners)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(labels, expected, "{h}x{w} -> {oh}x{ow}");
            }
        }
    }
}
