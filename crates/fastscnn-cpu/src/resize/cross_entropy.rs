//! The training loss straight from low-resolution class scores: the cross-entropy of their
//! bilinear upsampling, and its gradient with respect to the scores, without ever storing the
//! full-resolution scores or their gradient.
//!
//! Resizing then taking the loss costs, for each of Fast-SCNN's three heads at 512x1024, four
//! passes over 40 MB per image (the 19-class scores upsampled by 8 or 32, their gradient, and
//! each of them read back). Here each output row is blended from two horizontally interpolated
//! source rows into a block that stays in cache, its loss and gradient are taken there, and the
//! gradient is added at once to the two source rows' accumulators, which the horizontal pass's
//! transpose brings to the input width once per run of output rows that share their source
//! rows.

use super::argmax::{class_stride, horizontal_row};
use super::*;
use crate::cross_entropy::{assert_targets_are_classes, cross_entropy_block, BLOCK};

/// The cross-entropy of `resize_planes(scores)` at `oh`x`ow` against `targets` (one per output
/// pixel, each below the class count where `mask` is set): the sum over the pixels of `mask` of
/// `−ln softmax[target]`, the same value [`crate::cross_entropy_planes`] gives for the resized
/// scores (the same blended scores, the same blocks where `ow` is a multiple of 512). With `grad`
/// (the shape of `scores`), also writes the gradient of the loss times `scale` with respect to
/// `scores`: the resize's transpose of `(softmax − onehot(target)) · scale`.
///
/// The sum is taken in f64 in a fixed order of blocks, and the gradient is gathered per run of
/// output rows and added in run order, so the results do not depend on the threads.
///
/// # Panics
/// If the lengths disagree, a size is zero, or a masked pixel's target is not a class.
#[allow(clippy::too_many_arguments)]
pub fn resize_cross_entropy_planes(
    scores: MapView<'_>,
    (oh, ow): (usize, usize),
    align_corners: bool,
    targets: &[u32],
    mask: &[bool],
    scale: f32,
    grad: Option<&mut [f32]>,
) -> f64 {
    let (classes, h, w) = (scores.channels, scores.height, scores.width);
    let scores = scores.data;
    assert!(
        classes > 0 && h * w > 0 && oh * ow > 0,
        "resize_cross_entropy: an empty map"
    );
    assert_eq!(scores.len(), classes * h * w, "resize_cross_entropy scores");
    assert_eq!(targets.len(), oh * ow, "resize_cross_entropy targets");
    assert_eq!(mask.len(), oh * ow, "resize_cross_entropy mask");
    assert_targets_are_classes(targets, mask, classes);
    if let Some(grad) = &grad {
        assert_eq!(grad.len(), scores.len(), "resize_cross_entropy gradient");
    }
    let columns = Columns::new(w, ow, align_corners);
    let rows = row_taps(h, oh, align_corners);
    // Runs of output rows that blend the same two source rows.
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (oy, taps) in rows.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if (rows[run.start].0, rows[run.start].1) == (taps.0, taps.1) => {
                run.end = oy + 1
            }
            _ => runs.push(oy..oy + 1),
        }
    }
    let per_task = runs.len().div_ceil(row_tasks(runs.len()));
    let pass = Pass {
        scores,
        classes,
        h,
        columns: &columns,
        rows: &rows,
        targets,
        mask,
        scale,
        with_grad: grad.is_some(),
    };
    let results: Vec<TaskResult> = runs
        .par_chunks(per_task)
        .map(|runs| pass.task(runs))
        .collect();
    let loss = results.iter().flat_map(|r| &r.partials).sum();
    if let Some(grad) = grad {
        // Each class plane from its runs' rows, in run order.
        let run_grads: Vec<(&Range<usize>, &[f32])> = runs
            .chunks(per_task)
            .zip(&results)
            .flat_map(|(runs, result)| runs.iter().zip(result.grads.chunks_exact(2 * classes * w)))
            .collect();
        grad.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(class, plane)| {
                plane.fill(0.0);
                for (run, pair) in &run_grads {
                    let (y0, y1, _, _) = rows[run.start];
                    let (top, bottom) = pair.split_at(classes * w);
                    for (y, source) in [(y0, top), (y1, bottom)] {
                        let row = &mut plane[y * w..(y + 1) * w];
                        for (g, &s) in row.iter_mut().zip(&source[class * w..(class + 1) * w]) {
                            *g += s;
                        }
                    }
                }
            });
    }
    loss
}

/// What one task of the loss found: each block's loss in order, and for each of its runs the
/// gradient of the run's top and bottom source rows, (2, classes, w).
struct TaskResult {
    partials: Vec<f64>,
    grads: Vec<f32>,
}

/// The inputs every task of one image's loss shares.
struct Pass<'a> {
    scores: &'a [f32],
    classes: usize,
    h: usize,
    columns: &'a Columns,
    rows: &'a [(usize, usize, f32, f32)],
    targets: &'a [u32],
    mask: &'a [bool],
    scale: f32,
    with_grad: bool,
}

impl Pass<'_> {
    /// The loss of `runs`' output rows, and their gradients.
    fn task(&self, runs: &[Range<usize>]) -> TaskResult {
        let (classes, columns) = (self.classes, self.columns);
        let (w, ow) = (columns.w, columns.x0.len());
        let stride = class_stride(ow);
        let whole_row = 0..ow;
        let whole_row = std::slice::from_ref(&whole_row);
        // The two source rows of every class, interpolated horizontally, and which rows they are.
        let mut top = vec![0f32; classes * stride];
        let mut bottom = vec![0f32; classes * stride];
        let mut held = [usize::MAX; 2];
        // The gradient of the run's two source rows at the output width, before the transpose.
        let mut wide = if self.with_grad {
            vec![0f32; 2 * classes * ow]
        } else {
            Vec::new()
        };
        let mut block = vec![0f32; classes * BLOCK];
        let (mut max, mut sum, mut losses) =
            (vec![0f32; BLOCK], vec![0f32; BLOCK], vec![0f32; BLOCK]);
        let mut result = TaskResult {
            partials: Vec::with_capacity(
                runs.iter().map(|r| r.len()).sum::<usize>() * ow.div_ceil(BLOCK),
            ),
            grads: vec![
                0f32;
                if self.with_grad {
                    runs.len() * 2 * classes * w
                } else {
                    0
                }
            ],
        };
        for (r, run) in runs.iter().enumerate() {
            let (y0, y1, _, _) = self.rows[run.start];
            if held[0] != y0 {
                if held[1] == y0 {
                    std::mem::swap(&mut top, &mut bottom);
                    held.swap(0, 1);
                } else {
                    horizontal_row(
                        self.scores,
                        (classes, self.h, y0),
                        columns,
                        whole_row,
                        &mut top,
                    );
                    held[0] = y0;
                }
            }
            if held[1] != y1 {
                horizontal_row(
                    self.scores,
                    (classes, self.h, y1),
                    columns,
                    whole_row,
                    &mut bottom,
                );
                held[1] = y1;
            }
            wide.fill(0.0);
            for oy in run.clone() {
                let (_, _, wy0, wy1) = self.rows[oy];
                for x in (0..ow).step_by(BLOCK) {
                    let len = BLOCK.min(ow - x);
                    let block = &mut block[..classes * len];
                    for (c, out) in block.chunks_exact_mut(len).enumerate() {
                        let at = c * stride + x;
                        // SAFETY: `blend` only writes values.
                        let out = unsafe { as_uninit(out) };
                        blend(&top[at..at + len], &bottom[at..at + len], wy0, wy1, out);
                    }
                    let pixels = oy * ow + x..oy * ow + x + len;
                    let (targets, mask) = (&self.targets[pixels.clone()], &self.mask[pixels]);
                    cross_entropy_block(
                        block,
                        classes,
                        len,
                        targets,
                        mask,
                        &mut max,
                        &mut sum,
                        &mut losses,
                    );
                    let mut total = 0f64;
                    for i in 0..len {
                        if mask[i] {
                            total += (losses[i] + sum[i].ln()) as f64;
                        }
                    }
                    result.partials.push(total);
                    if !self.with_grad {
                        continue;
                    }
                    let (wide_top, wide_bottom) = wide.split_at_mut(classes * ow);
                    for c in 0..classes {
                        let probs = &block[c * len..(c + 1) * len];
                        let span = c * ow + x..c * ow + x + len;
                        gradient_rows(
                            probs,
                            &sum[..len],
                            targets,
                            mask,
                            (c as u32, self.scale),
                            (wy0, wy1),
                            &mut wide_top[span.clone()],
                            &mut wide_bottom[span],
                        );
                    }
                }
            }
            if self.with_grad {
                let out = &mut result.grads[r * 2 * classes * w..(r + 1) * 2 * classes * w];
                for (wide, out) in wide.chunks_exact(ow).zip(out.chunks_exact_mut(w)) {
                    columns.transpose(wide, out);
                }
            }
        }
        result
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gradient_rows_body<M: MulAdd>(
    probs: &[f32],
    sum: &[f32],
    targets: &[u32],
    mask: &[bool],
    (class, scale): (u32, f32),
    (wy0, wy1): (f32, f32),
    top: &mut [f32],
    bottom: &mut [f32],
) {
    let n = probs.len();
    let (sum, targets, mask) = (&sum[..n], &targets[..n], &mask[..n]);
    let (top, bottom) = (&mut top[..n], &mut bottom[..n]);
    for i in 0..n {
        let onehot = if targets[i] == class { 1.0 } else { 0.0 };
        let g = if mask[i] {
            (probs[i] / sum[i] - onehot) * scale
        } else {
            0.0
        };
        top[i] += wy0 * g;
        bottom[i] += wy1 * g;
    }
}

dispatch!(
    /// One class's gradient `(softmax − onehot) · scale` over a block (`probs` the exponentials,
    /// `sum` their sums over the classes; 0 where `mask` is unset), added to the output row's two
    /// source rows with its row weights.
    #[allow(clippy::too_many_arguments)]
    fn gradient_rows(
        probs: &[f32],
        sum: &[f32],
        targets: &[u32],
        mask: &[bool],
        class_scale: (u32, f32),
        row_weights: (f32, f32),
        top: &mut [f32],
        bottom: &mut [f32],
    ) => gradient_rows_body
);

impl Columns {
    /// The horizontal pass's transpose: each output column's `g` sent back to its two input
    /// columns with its weights, into `out` (one input row). Gathered per input column over the
    /// outputs that read it (a run of outputs for each tap, as the taps never decrease), so the
    /// sums of different columns are independent chains, not one chain of scattered adds.
    fn transpose(&self, g: &[f32], out: &mut [f32]) {
        let ow = self.x0.len();
        assert!(
            g.len() == ow && out.len() == self.w,
            "resize transpose rows"
        );
        let (mut a0, mut a1) = (0, 0);
        for (x, out) in out.iter_mut().enumerate() {
            let mut s0 = 0f32;
            while a0 < ow && self.x0[a0] as usize == x {
                s0 += self.w0[a0] * g[a0];
                a0 += 1;
            }
            let mut s1 = 0f32;
            while a1 < ow && self.x1[a1] as usize == x {
                s1 += self.w1[a1] * g[a1];
                a1 += 1;
            }
            *out = s0 + s1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cross_entropy_planes, on_every_isa, resize_grad};

    /// Scores, targets and a mask of `classes` planes of h x w for an output of oh x ow.
    fn case(
        classes: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> (Vec<f32>, Vec<u32>, Vec<bool>) {
        let scores = (0..classes * h * w)
            .map(|i| ((i * 7919 % 1009) as f32 / 40.0 - 12.0) * if i % 3 == 0 { 1.0 } else { 0.3 })
            .collect();
        let targets = (0..oh * ow).map(|p| (p * 5 % classes) as u32).collect();
        let mask = (0..oh * ow).map(|p| p % 11 != 3).collect();
        (scores, targets, mask)
    }

    /// The loss and gradient through the stored resize: resize, loss and gradient at full
    /// resolution, then the resize's gradient.
    fn stored(
        scores: &[f32],
        classes: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        align_corners: bool,
        (targets, mask): (&[u32], &[bool]),
        scale: f32,
    ) -> (f64, Vec<f32>) {
        let mut logits = vec![0f32; classes * oh * ow];
        resize_planes(
            MapView::new(scores, classes, h, w),
            &mut logits,
            (oh, ow),
            align_corners,
        );
        let mut g = vec![0f32; logits.len()];
        let loss = cross_entropy_planes(
            &logits,
            classes,
            oh * ow,
            targets,
            mask,
            scale,
            Some(&mut g),
        );
        (loss, resize_grad(&g, (oh, ow), (h, w), align_corners))
    }

    #[test]
    fn equals_the_loss_of_the_stored_resize_on_every_isa() {
        // Upsampling by 8 (the main head) at a width that is a multiple of 512, by 4 to an odd
        // size, and a downsampling, in both corner modes.
        let shapes = [
            ((6, 128), (48, 1024)),
            ((5, 9), (20, 36)),
            ((12, 40), (7, 23)),
            // The same size; a single source row; a single output row.
            ((4, 6), (4, 6)),
            ((1, 5), (8, 30)),
            ((6, 5), (1, 17)),
        ];
        for ((h, w), (oh, ow)) in shapes {
            for align_corners in [false, true] {
                let classes = 19;
                let (scores, targets, mask) = case(classes, (h, w), (oh, ow));
                let scale = 1.0 / 997.0;
                on_every_isa(|isa| {
                    // On the same instruction set: the exponentials' rounding depends on it.
                    let (want_loss, want_grad) = stored(
                        &scores,
                        classes,
                        (h, w),
                        (oh, ow),
                        align_corners,
                        (&targets, &mask),
                        scale,
                    );
                    let mut grad = vec![f32::NAN; scores.len()];
                    let view = MapView::new(&scores, classes, h, w);
                    let loss = resize_cross_entropy_planes(
                        view,
                        (oh, ow),
                        align_corners,
                        &targets,
                        &mask,
                        scale,
                        Some(&mut grad),
                    );
                    let what = format!("{isa:?} {h}x{w} to {oh}x{ow}, corners {align_corners}");
                    if ow % BLOCK == 0 {
                        assert_eq!(loss, want_loss, "{what}: the stored resize's blocks");
                    } else {
                        let error = ((loss - want_loss) / want_loss).abs();
                        assert!(error < 1e-12, "{what}: loss {loss}, not {want_loss}");
                    }
                    // Each source pixel sums many outputs' gradients of both signs: the error is
                    // measured against the largest.
                    let worst = grad
                        .iter()
                        .zip(&want_grad)
                        .map(|(&g, &w)| (g - w).abs())
                        .fold(0f32, f32::max);
                    let peak = want_grad.iter().fold(0f32, |m, w| m.max(w.abs()));
                    assert!(
                        worst <= 1e-5 * peak,
                        "{what}: gradient off by {worst} of {peak}"
                    );
                    let without = resize_cross_entropy_planes(
                        view,
                        (oh, ow),
                        align_corners,
                        &targets,
                        &mask,
                        scale,
                        None,
                    );
                    assert_eq!(
                        without, loss,
                        "{what}: the loss does not depend on the gradient"
                    );
                });
            }
        }
    }

    #[test]
    fn the_results_do_not_depend_on_the_threads() {
        let (classes, (h, w), (oh, ow)) = (7, (16, 24), (128, 192));
        let (scores, targets, mask) = case(classes, (h, w), (oh, ow));
        let run = |threads: usize, align_corners: bool| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut grad = vec![0f32; scores.len()];
                let view = MapView::new(&scores, classes, h, w);
                let loss = resize_cross_entropy_planes(
                    view,
                    (oh, ow),
                    align_corners,
                    &targets,
                    &mask,
                    0.5,
                    Some(&mut grad),
                );
                (
                    loss.to_bits(),
                    grad.iter().map(|g| g.to_bits()).collect::<Vec<_>>(),
                )
            })
        };
        for align_corners in [false, true] {
            assert_eq!(run(1, align_corners), run(3, align_corners));
        }
    }

    #[test]
    fn the_transpose_is_the_adjoint_of_the_horizontal_pass() {
        for (w, ow, align_corners) in [
            (16, 128, false),
            (16, 128, true),
            (9, 36, false),
            (40, 23, true),
        ] {
            let columns = Columns::new(w, ow, align_corners);
            let g: Vec<f32> = (0..ow).map(|i| (i * 37 % 17) as f32 - 8.0).collect();
            let mut out = vec![0f32; w];
            columns.transpose(&g, &mut out);
            let mut want = vec![0f64; w];
            for (o, &g) in g.iter().enumerate() {
                want[columns.x0[o] as usize] += columns.w0[o] as f64 * g as f64;
                want[columns.x1[o] as usize] += columns.w1[o] as f64 * g as f64;
            }
            for (x, (&o, &want)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (o as f64 - want).abs() < 1e-4,
                    "{w} to {ow}: column {x}: {o}, not {want}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "not a class")]
    fn a_labelled_pixel_outside_the_classes_is_refused() {
        let scores = [0f32; 2 * 4];
        resize_cross_entropy_planes(
            MapView::new(&scores, 2, 2, 2),
            (4, 4),
            false,
            &[5; 16],
            &[true; 16],
            1.0,
            None,
        );
    }
}
