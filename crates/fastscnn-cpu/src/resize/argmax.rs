//! The label map straight from the 1/8-resolution scores: resize and argmax in one pass that
//! never stores full-resolution scores, skipping the blocks whose source pixels share a label.

use super::*;

/// Output pixels of one argmax block: their running best scores and labels stay in registers
/// (four AVX2 vectors each) while the block reads every class; only the labels are stored.
pub(super) const ARGMAX_BLOCK: usize = 32;

/// Labels of `ARGMAX_BLOCK` pixels from `x` on (fewer at the row's end), `top` and `bottom` the
/// horizontally interpolated source rows of every class, `stride` floats apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn argmax_block_body<M: MulAdd>(
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
pub(super) unsafe fn argmax_block_avx2(
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
pub(super) fn horizontal_row(
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

/// The scratch [`resize_argmax_planes`] runs fastest with, from `h`x`w` scores to `oh`x`ow`
/// labels: the source map's labels, and two horizontally interpolated rows of every class for
/// each of its tasks.
pub fn resize_argmax_scratch_len(
    classes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> usize {
    h * w + row_tasks(oh) * 2 * classes * class_stride(ow)
}

/// The least scratch [`resize_argmax_planes`] runs with: the source map's labels and one task's
/// two rows of every class, all tasks taking turns with it.
pub fn resize_argmax_min_scratch_len(classes: usize, (h, w): (usize, usize), ow: usize) -> usize {
    h * w + 2 * classes * class_stride(ow)
}

/// Floats from one class's interpolated row to the next's: a 64-byte line more than a whole
/// number of lines, so that the 38 rows an argmax block reads do not fall in the same few L1
/// sets, as rows a multiple of 4 KiB apart would (8 KiB at 2048 wide).
pub(super) fn class_stride(ow: usize) -> usize {
    ow.next_multiple_of(16) + 16
}

/// The argmax over classes of `resize_planes(scores)` at `oh`x`ow`, into `labels` (oh, ow), the
/// first class winning ties.
///
/// Inside a region of one label, an output pixel lies between four source pixels of that label
/// and needs no scores at all: a bilinear blend is a weighted sum with non-negative weights, and
/// rounding is monotonic, so a class that scores at least as high as every other at all four
/// corners does so in the blend too. Such a block of `ARGMAX_BLOCK` (32) pixels takes the label
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
pub fn resize_argmax_planes(
    scores: MapView<'_>,
    labels: &mut [u32],
    (oh, ow): (usize, usize),
    align_corners: bool,
    scratch: &mut [f32],
) {
    let (classes, h, w) = (scores.channels, scores.height, scores.width);
    let scores = scores.data;
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
    let tasks = row_tasks(oh).min(scratch.len() / pair);
    assert!(tasks > 0, "resize_argmax scratch");
    let rows_per_task = oh.div_ceil(tasks);
    // Every output row's source rows and weights.
    let rows = row_taps(h, oh, align_corners);
    let chunks = ow.div_ceil(ARGMAX_COLUMNS);
    #[cfg(target_arch = "x86_64")]
    let avx2 = Isa::current() == Isa::Avx2;
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
pub(super) struct ArgmaxBlocks<'a> {
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
pub(super) const ARGMAX_COLUMNS: usize = 4 * ARGMAX_BLOCK;

/// The label the source pixels in columns `lo..=hi` of two source rows' labels share, if they
/// all have one.
pub(super) fn shared_label(top: &[f32], bottom: &[f32], (lo, hi): (usize, usize)) -> Option<u32> {
    let first = top[lo];
    let same = top[lo..=hi]
        .iter()
        .chain(&bottom[lo..=hi])
        .all(|&l| l == first);
    same.then_some(first as u32)
}

/// Every source pixel's label (the first class winning ties, as the argmax of the blend), as
/// a float, into `labels` (one plane of `scores`, which holds `classes` planes).
pub(super) fn source_labels(scores: &[f32], classes: usize, labels: &mut [f32]) {
    let plane = labels.len();
    labels
        .par_chunks_mut(SOURCE_LABELS_TASK)
        .enumerate()
        .for_each(|(task, labels)| {
            for (b, labels) in labels.chunks_mut(ARGMAX_BLOCK).enumerate() {
                let p = task * SOURCE_LABELS_TASK + b * ARGMAX_BLOCK;
                #[cfg(target_arch = "x86_64")]
                if labels.len() == ARGMAX_BLOCK && Isa::current() == Isa::Avx2 {
                    // SAFETY: the processor has AVX2; every class plane holds p..p + the block.
                    unsafe { source_block_avx2(scores, classes, plane, p, labels) };
                    continue;
                }
                source_block(scores, classes, plane, p, labels);
            }
        });
}

/// Source pixels a task of [`source_labels`] takes.
pub(super) const SOURCE_LABELS_TASK: usize = 64 * ARGMAX_BLOCK;

#[inline(always)]
pub(super) fn source_block_body<M: MulAdd>(
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
pub(super) unsafe fn source_block_avx2(
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
