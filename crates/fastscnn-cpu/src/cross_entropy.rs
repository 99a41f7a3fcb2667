//! Softmax cross-entropy over the class planes of a (C, H, W) map, and its gradient, for the
//! training loss.
//!
//! Per labelled pixel the loss is `ln Σ_k e^(x_k − m) + m − x_t` (m the largest score, t the
//! label), which never takes the logarithm of an underflowed probability, and the gradient
//! `(softmax − onehot(t)) · scale`. Each block of pixels is copied into a buffer that stays in
//! cache for the maximum, the exponentials (the vectorisable `exp` of the softmax) and the
//! results; the per-pixel losses are summed in f64 in block order, so a run gives the same bits
//! whatever the threads.

use rayon::prelude::*;

use super::simd::{dispatch, MulAdd};
use super::softmax::exp;

/// Pixels a task handles at a time: 19 class planes of them are 38 KB, in L2 (in L1 on cores
/// with 48 KB of it).
pub(crate) const BLOCK: usize = 512;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_block_body<M: MulAdd>(
    block: &mut [f32],
    classes: usize,
    len: usize,
    targets: &[u32],
    mask: &[bool],
    max: &mut [f32],
    sum: &mut [f32],
    losses: &mut [f32],
) {
    let (max, sum, losses) = (&mut max[..len], &mut sum[..len], &mut losses[..len]);
    max.copy_from_slice(&block[..len]);
    for c in 1..classes {
        for (m, &v) in max.iter_mut().zip(&block[c * len..(c + 1) * len]) {
            *m = m.max(v);
        }
    }
    // The label's score, read before the exponentials replace the scores.
    for (i, loss) in losses.iter_mut().enumerate() {
        *loss = if mask[i] {
            max[i] - block[targets[i] as usize * len + i]
        } else {
            0.0
        };
    }
    sum.fill(0.0);
    for c in 0..classes {
        let row = &mut block[c * len..(c + 1) * len];
        for ((v, &m), s) in row.iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
            *v = exp::<M>(*v - m);
            *s += *v;
        }
    }
}

dispatch!(
    /// The loss terms of one block of `len` pixels, `block` its (classes, len) scores: `max` the
    /// largest score, `losses` `max − score[target]` (0 where `mask` is unset), and `block`'s
    /// scores replaced by their exponentials `e^(score − max)`, whose sum is `sum`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cross_entropy_block(
        block: &mut [f32],
        classes: usize,
        len: usize,
        targets: &[u32],
        mask: &[bool],
        max: &mut [f32],
        sum: &mut [f32],
        losses: &mut [f32],
    ) => cross_entropy_block_body
);

/// Panics unless every pixel where `mask` is set has a target below `classes`: the kernels
/// index the class planes by it.
pub(crate) fn assert_targets_are_classes(targets: &[u32], mask: &[bool], classes: usize) {
    assert!(
        targets
            .iter()
            .zip(mask)
            .all(|(&t, &m)| !m || (t as usize) < classes),
        "a labelled pixel's target is not a class"
    );
}

/// The cross-entropy of one image's (classes, pixels) `logits` against `targets` (one per
/// pixel, each below `classes` where `mask` is set): the sum over the pixels of `mask` of
/// `−ln softmax(logits)[target]`. With `grad` (classes, pixels), also writes the loss's gradient
/// scaled by `scale`: `(softmax − onehot(target)) · scale` at masked pixels, 0 elsewhere.
///
/// # Panics
/// If the lengths disagree, or a masked pixel's target is not below `classes`.
pub fn cross_entropy_planes(
    logits: &[f32],
    classes: usize,
    pixels: usize,
    targets: &[u32],
    mask: &[bool],
    scale: f32,
    grad: Option<&mut [f32]>,
) -> f64 {
    assert_eq!(logits.len(), classes * pixels, "cross-entropy scores");
    assert_eq!(targets.len(), pixels, "cross-entropy targets");
    assert_eq!(mask.len(), pixels, "cross-entropy mask");
    assert_targets_are_classes(targets, mask, classes);
    if let Some(grad) = &grad {
        assert_eq!(grad.len(), classes * pixels, "cross-entropy gradient");
    }
    if classes == 0 || pixels == 0 {
        return 0.0;
    }
    let grad = grad.map(|g| super::SendPtr(g.as_mut_ptr()));
    let partial: Vec<f64> = (0..pixels.div_ceil(BLOCK))
        .into_par_iter()
        .map_init(
            || {
                (
                    vec![0f32; classes * BLOCK],
                    vec![0f32; BLOCK],
                    vec![0f32; BLOCK],
                    vec![0f32; BLOCK],
                )
            },
            |(block, max, sum, losses), b| {
                let start = b * BLOCK;
                let len = BLOCK.min(pixels - start);
                let block = &mut block[..classes * len];
                for c in 0..classes {
                    block[c * len..(c + 1) * len]
                        .copy_from_slice(&logits[c * pixels + start..c * pixels + start + len]);
                }
                let (targets, mask) = (&targets[start..start + len], &mask[start..start + len]);
                cross_entropy_block(block, classes, len, targets, mask, max, sum, losses);
                let mut total = 0f64;
                for i in 0..len {
                    if mask[i] {
                        total += (losses[i] + sum[i].ln()) as f64;
                    }
                }
                if let Some(base) = &grad {
                    for c in 0..classes {
                        // SAFETY: pixels start..start + len of class plane `c`, in bounds
                        // (c < classes, start + len <= pixels) and written by this block only.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(base.get().add(c * pixels + start), len)
                        };
                        let probs = &block[c * len..(c + 1) * len];
                        for i in 0..len {
                            row[i] = if mask[i] {
                                let onehot = if targets[i] as usize == c { 1.0 } else { 0.0 };
                                (probs[i] / sum[i] - onehot) * scale
                            } else {
                                0.0
                            };
                        }
                    }
                }
                total
            },
        )
        .collect();
    partial.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_every_isa;

    /// The loss and gradient in f64 with the library's `exp` and `ln`.
    fn reference(
        logits: &[f32],
        classes: usize,
        targets: &[u32],
        mask: &[bool],
        scale: f64,
    ) -> (f64, Vec<f64>) {
        let pixels = targets.len();
        let mut grad = vec![0f64; logits.len()];
        let mut loss = 0f64;
        for p in 0..pixels {
            if !mask[p] {
                continue;
            }
            let at = |k: usize| logits[k * pixels + p] as f64;
            let max = (0..classes).map(at).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..classes).map(|k| (at(k) - max).exp()).sum();
            loss += sum.ln() + max - at(targets[p] as usize);
            for k in 0..classes {
                let onehot = if k == targets[p] as usize { 1.0 } else { 0.0 };
                grad[k * pixels + p] = ((at(k) - max).exp() / sum - onehot) * scale;
            }
        }
        (loss, grad)
    }

    #[test]
    fn matches_the_f64_loss_and_gradient_on_every_isa() {
        // 19 classes over 1300 pixels: two whole blocks and a partial one; scores spread to ±40
        // so that some probabilities underflow f32.
        let (classes, pixels) = (19, 1300);
        let logits: Vec<f32> = (0..classes * pixels)
            .map(|i| ((i * 7919 % 1000) as f32 / 12.5 - 40.0) * if i % 3 == 0 { 1.0 } else { 0.1 })
            .collect();
        let targets: Vec<u32> = (0..pixels).map(|p| (p * 5 % classes) as u32).collect();
        let mask: Vec<bool> = (0..pixels).map(|p| p % 7 != 0).collect();
        let scale = 1.0 / 1000.0;
        let (want_loss, want_grad) = reference(&logits, classes, &targets, &mask, scale);
        on_every_isa(|isa| {
            let mut grad = vec![f32::NAN; classes * pixels];
            let loss = cross_entropy_planes(
                &logits,
                classes,
                pixels,
                &targets,
                &mask,
                scale as f32,
                Some(&mut grad),
            );
            assert!(
                ((loss - want_loss) / want_loss).abs() < 1e-6,
                "{isa:?}: loss {loss}, not {want_loss}"
            );
            let worst = grad
                .iter()
                .zip(&want_grad)
                .map(|(&g, &w)| (g as f64 - w).abs())
                .fold(0f64, f64::max);
            assert!(worst < 1e-9, "{isa:?}: gradient off by {worst}");
            let without =
                cross_entropy_planes(&logits, classes, pixels, &targets, &mask, 1.0, None);
            assert_eq!(
                without, loss,
                "{isa:?}: the loss does not depend on the gradient"
            );
        });
    }

    #[test]
    #[should_panic(expected = "not a class")]
    fn a_labelled_pixel_outside_the_classes_is_refused() {
        cross_entropy_planes(&[0.0; 6], 3, 2, &[0, 3], &[true, true], 1.0, None);
    }
}
