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

/// The taps by blocks of one vector of output columns, each block's taps relative to its first
/// input column `base`: within a vector or two of it when upsampling, so a block is one or two
/// loads and two in-register permutes, where gathers fetched each tap on its own (on AVX-512 a
/// quarter of the logits' resize at 384x768; on AVX2 a third of the label map's resize + argmax).
/// The weights are padded to whole blocks.
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
            windows: match super::simd::Isa::detected() {
                super::simd::Isa::Avx512 => Windows::new(&taps, WINDOW, 2 * WINDOW),
                super::simd::Isa::Avx2 => Windows::new(&taps, WINDOW_AVX2, WINDOW_AVX2),
                super::simd::Isa::Portable => None,
            },
        }
    }
}

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
    #[cfg(target_arch = "x86_64")]
    if let Some(windows) = &columns.windows {
        match super::simd::Isa::detected() {
            // SAFETY: the processor has AVX-512F, and `windows` were built for it.
            super::simd::Isa::Avx512 => {
                return unsafe { horizontal_windows(plane, columns, windows, out) }
            }
            // SAFETY: the processor has AVX2, and `windows` were built for it.
            super::simd::Isa::Avx2 => {
                return unsafe { horizontal_windows_avx2(plane, columns, windows, out) }
            }
            super::simd::Isa::Portable => {}
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

/// [`horizontal`] by [`Windows`] of [`WINDOW_AVX2`] outputs: one load and two permutes a block.
///
/// # Safety
/// The processor must support AVX2; `windows` were built with `WINDOW_AVX2` for both.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_windows_avx2(
    plane: &[f32],
    columns: &Columns,
    windows: &Windows,
    out: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    let (w, ow) = (columns.w, columns.x0.len());
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (row, out_row) in plane.chunks_exact(w).zip(out.chunks_exact_mut(ow)) {
        for (b, &base) in windows.base.iter().enumerate() {
            let base = base as usize;
            let (left, at) = ((w - base).min(WINDOW_AVX2), b * WINDOW_AVX2);
            // SAFETY: the load keeps to the row (masked at its end); the index and weight arrays
            // hold whole blocks; every index is below 8 and `Windows::new` checked that the
            // lanes it picks hold the taps.
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
                let r = _mm256_add_ps(_mm256_mul_ps(w0, a), _mm256_mul_ps(w1, c));
                let n = ow - at;
                if n >= WINDOW_AVX2 {
                    _mm256_storeu_ps(out_row.as_mut_ptr().add(at).cast(), r);
                } else {
                    // The row's tail, without a masked store (slow on AMD's processors).
                    let mut tail = [0f32; WINDOW_AVX2];
                    _mm256_storeu_ps(tail.as_mut_ptr(), r);
                    for (o, &t) in out_row[at..].iter_mut().zip(&tail) {
                        o.write(t);
                    }
                }
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
/// lived on the stack and was updated by masked stores (`vmaskmovps`), which AMD's processors run
/// at a fraction of the rate of an ordinary store (2-3x slower in all). The same arithmetic (two
/// products, one sum) and tie rule (a later class must score higher), so the same labels.
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

/// Source rows `y` of every class plane of `scores` (classes, h, `columns.w`), interpolated
/// horizontally into the first `ow` floats of `out`'s rows of [`class_stride`] floats.
fn horizontal_row(scores: &[f32], h: usize, y: usize, columns: &Columns, out: &mut [f32]) {
    let (w, ow) = (columns.w, columns.x0.len());
    // SAFETY: `horizontal` only writes values.
    let out = unsafe { as_uninit(out) };
    for (plane, out) in scores
        .chunks_exact(h * w)
        .zip(out.chunks_mut(class_stride(ow)))
    {
        horizontal(&plane[y * w..][..w], columns, &mut out[..ow]);
    }
}

/// Output rows a label map's argmax is cut into, at most: a few per thread, each of which
/// interpolates its first two source rows again.
fn argmax_tasks(oh: usize) -> usize {
    (4 * rayon::current_num_threads()).clamp(1, oh.max(1))
}

/// The scratch [`resize_argmax_planes`] runs fastest with: two horizontally interpolated rows of
/// every class for each of its tasks.
pub fn resize_argmax_scratch_len(classes: usize, oh: usize, ow: usize) -> usize {
    argmax_tasks(oh) * 2 * classes * class_stride(ow)
}

/// Floats from one class's interpolated row to the next's: a 64-byte line more than a whole
/// number of lines, so that the 38 rows an argmax block reads do not fall in the same few L1
/// sets, as rows a multiple of 4 KiB apart did (8 KiB at 2048 wide: 1.5x slower there).
fn class_stride(ow: usize) -> usize {
    ow.next_multiple_of(16) + 16
}

/// The argmax over classes of `resize_planes(scores)` at `oh`x`ow`, into `labels` (oh, ow), the
/// first class winning ties. Each task walks its output rows keeping the two source rows they
/// blend, interpolated horizontally for every class (the eight output rows between two source
/// rows share them), and takes the argmax a block of pixels at a time with the running best in
/// registers: no full-resolution score is stored, nor the horizontal pass of the whole map.
/// `scratch` (kept by the caller, so repeated frames allocate nothing) holds at least one task's
/// two rows of every class; [`resize_argmax_scratch_len`] floats give every task its own.
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
    let columns = Columns::new(w, ow, align_corners);
    let stride = class_stride(ow);
    let pair = 2 * classes * stride;
    let tasks = argmax_tasks(oh).min(scratch.len() / pair);
    assert!(tasks > 0, "resize_argmax scratch");
    let rows_per_task = oh.div_ceil(tasks);
    // Every output row's source rows and weights.
    let rows = row_taps(h, oh, align_corners);
    labels
        .par_chunks_mut(rows_per_task * ow)
        .zip(scratch.par_chunks_mut(pair))
        .enumerate()
        .for_each(|(task, (labels, pair))| {
            let (mut top, mut bottom) = pair.split_at_mut(classes * stride);
            // The source rows `top` and `bottom` hold.
            let mut held = [usize::MAX; 2];
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
                    } else {
                        horizontal_row(scores, h, y0, &columns, top);
                        held[0] = y0;
                    }
                }
                if held[1] != y1 {
                    horizontal_row(scores, h, y1, &columns, bottom);
                    held[1] = y1;
                }
                // Column by column of the run, so the rows' columns stay in L1 for all of it.
                for x0 in (0..ow).step_by(ARGMAX_COLUMNS) {
                    let x1 = (x0 + ARGMAX_COLUMNS).min(ow);
                    for (r, &(_, _, wy0, wy1)) in taps.iter().enumerate().take(end).skip(i) {
                        let row = &mut labels[r * ow..][..ow];
                        argmax_columns(top, bottom, classes, stride, x0..x1, (wy0, wy1), row);
                    }
                }
                i = end;
            }
        });
}

/// Output columns an argmax run takes at a time: 2 x 19 class rows of them, 19 KiB, stay in L1
/// for all its output rows, where whole rows (300 KiB at 2048 wide) came from L2 for each.
const ARGMAX_COLUMNS: usize = 4 * ARGMAX_BLOCK;

/// The labels of `columns` (starting at a multiple of [`ARGMAX_BLOCK`]) of one output row.
fn argmax_columns(
    top: &[f32],
    bottom: &[f32],
    classes: usize,
    stride: usize,
    columns: std::ops::Range<usize>,
    (wy0, wy1): (f32, f32),
    row: &mut [u32],
) {
    let mut x = columns.start;
    #[cfg(target_arch = "x86_64")]
    if super::simd::Isa::detected() == super::simd::Isa::Avx2 {
        while x + ARGMAX_BLOCK <= columns.end {
            // SAFETY: the processor has AVX2; `top` and `bottom` hold `classes` rows `stride`
            // apart, of `row.len()` floats each.
            unsafe { argmax_block_avx2(top, bottom, (classes, stride, x), (wy0, wy1), row) };
            x += ARGMAX_BLOCK;
        }
    }
    while x < columns.end {
        argmax_block(top, bottom, classes, stride, x, wy0, wy1, row);
        x += ARGMAX_BLOCK;
    }
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
                ((5, 30), (40, 301)),
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
                let mut scratch = vec![0f32; resize_argmax_scratch_len(c, oh, ow)];
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
                // One task's scratch: all rows on one walk.
                let mut one = vec![0f32; 2 * c * class_stride(ow)];
                labels.fill(u32::MAX);
                resize_argmax_planes(&data, c, h, w, &mut labels, oh, ow, align_corners, &mut one);
                assert_eq!(labels, expected, "one task, {h}x{w} -> {oh}x{ow}");
            }
        }
    }
}
