//! The segmentation loss: per-pixel cross-entropy over the labelled pixels, optionally only the
//! hardest ones (OHEM), plus the auxiliary heads' losses at a fixed weight.

use candle_core::{DType, Result, Tensor};
use fastscnn_core::ops::{
    resize_bilinear, resize_cross_entropy, softmax_cross_entropy, target_probabilities,
};
use fastscnn_model::TrainingScores;

/// Online hard example mining: keep the pixels whose probability of the true class is at most
/// `threshold`, but never fewer than `min_kept` (the least confident ones), as the reference
/// implementation's `MixSoftmaxCrossEntropyOHEMLoss` and OpenMMLab's `OHEMPixelSampler` do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ohem {
    /// A pixel is kept when its probability of the true class is at most this (default 0.7).
    pub threshold: f32,
    /// The fewest labelled pixels one loss keeps over the batch, the least confident ones
    /// (default 100 000).
    pub min_kept: usize,
}

impl Default for Ohem {
    fn default() -> Self {
        Self {
            threshold: 0.7,
            min_kept: 100_000,
        }
    }
}

/// Cross-entropy averaged over the pixels whose label is not `ignore`: `logits` (N, C, H, W),
/// `labels` (N, H, W) integer class ids. NaN-free when every pixel is ignored (the loss is 0).
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    ignore: u32,
    ohem: Option<Ohem>,
) -> Result<Tensor> {
    let (n, c, h, w) = logits.dims4()?;
    let (labels, mut valid) = targets(labels, (n, c, h, w), ignore)?;
    if let Some(ohem) = ohem {
        let probs = target_probabilities(logits, &labels)?;
        keep_hardest(&mut valid, &probs, ohem);
    }
    softmax_cross_entropy(logits, &labels, &valid)
}

/// [`cross_entropy`] of `scores` (N, C, h, w) upsampled to `size` by bilinear resize
/// (`align_corners` as the network's), against `labels` (N, size): on the CPU in f32 without
/// storing the upsampled scores ([`resize_cross_entropy`]). OHEM ranks the pixels by the
/// upsampled scores, computed for that without a gradient.
pub fn resize_then_cross_entropy(
    scores: &Tensor,
    size: (usize, usize),
    align_corners: bool,
    labels: &Tensor,
    ignore: u32,
    ohem: Option<Ohem>,
) -> Result<Tensor> {
    let (n, c, _, _) = scores.dims4()?;
    let (labels, valid) = targets(labels, (n, c, size.0, size.1), ignore)?;
    upsampled_loss(scores, (size, align_corners), &labels, valid, ohem)
}

/// [`resize_then_cross_entropy`] with the labels already checked and turned into targets.
fn upsampled_loss(
    scores: &Tensor,
    ((h, w), align_corners): ((usize, usize), bool),
    labels: &[u32],
    mut valid: Vec<bool>,
    ohem: Option<Ohem>,
) -> Result<Tensor> {
    if let Some(ohem) = ohem {
        let logits = resize_bilinear(&scores.detach(), h, w, align_corners)?;
        let probs = target_probabilities(&logits, labels)?;
        keep_hardest(&mut valid, &probs, ohem);
    }
    resize_cross_entropy(scores, (h, w), align_corners, labels, &valid)
}

/// `labels` as the loss's targets, and which of them count (those not `ignore`), for logits of
/// `dims`; an error for a count that does not match or a counted label that is not a class.
fn targets(
    labels: &Tensor,
    (n, c, h, w): (usize, usize, usize, usize),
    ignore: u32,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    if labels.len() != n * h * w {
        candle_core::bail!(
            "cross_entropy: {} labels for logits of {n}x{c}x{h}x{w}",
            labels.len()
        );
    }
    let valid: Vec<bool> = labels.iter().map(|&l| l != ignore).collect();
    if let Some(&bad) = labels
        .iter()
        .zip(&valid)
        .find_map(|(l, v)| (*v && *l as usize >= c).then_some(l))
    {
        candle_core::bail!("cross_entropy: label {bad} out of range for {c} classes");
    }
    Ok((labels, valid))
}

/// Narrows `valid` to the OHEM selection, given each pixel's probability of its true class.
fn keep_hardest(valid: &mut [bool], probs: &[f32], ohem: Ohem) {
    let mut candidates: Vec<f32> = probs
        .iter()
        .zip(valid.iter())
        .filter_map(|(&p, &v)| v.then_some(p))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let k = ohem.min_kept.min(candidates.len());
    let threshold = if k == 0 {
        ohem.threshold
    } else {
        let (_, kth, _) = candidates.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
        ohem.threshold.max(*kth)
    };
    for (v, &p) in valid.iter_mut().zip(probs) {
        *v = *v && p <= threshold;
    }
}

/// The paper's objective: the main loss plus `aux_weight` times each auxiliary head's loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentationLoss {
    /// The label value of pixels left out of the loss (default 255, Cityscapes' ignore train id).
    pub ignore: u32,
    /// The weight of each auxiliary head's loss (default 0.4, the paper's).
    pub aux_weight: f64,
    /// Hard-pixel mining applied to every head's loss; `None` (the default) averages over all
    /// labelled pixels.
    pub ohem: Option<Ohem>,
}

impl Default for SegmentationLoss {
    fn default() -> Self {
        Self {
            ignore: 255,
            aux_weight: 0.4,
            ohem: None,
        }
    }
}

impl SegmentationLoss {
    /// The loss of one batch: `logits` of the main head and `aux_logits` of the auxiliary heads,
    /// each (N, C, H, W) at the labels' resolution, against `labels` (N, H, W).
    pub fn compute(
        &self,
        logits: &Tensor,
        aux_logits: &[Tensor],
        labels: &Tensor,
    ) -> Result<Tensor> {
        let mut loss = cross_entropy(logits, labels, self.ignore, self.ohem)?;
        for aux in aux_logits {
            let aux_loss = cross_entropy(aux, labels, self.ignore, self.ohem)?;
            loss = (loss + aux_loss.affine(self.aux_weight, 0.0)?)?;
        }
        Ok(loss)
    }

    /// The loss of one batch from a training forward pass's scores, each head's upsampled to the
    /// labels' size inside its loss ([`resize_then_cross_entropy`]); `labels` (N, H, W) at
    /// `scores.size`. [`SegmentationLoss::compute`] of the upsampled logits, up to the order of
    /// the sums where the width is not a multiple of 512.
    pub fn compute_scores(&self, scores: &TrainingScores, labels: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = scores.scores.dims4()?;
        let (h, w) = scores.size;
        let (labels, valid) = targets(labels, (n, c, h, w), self.ignore)?;
        let upsampling = (scores.size, scores.align_corners);
        let head = |s: &Tensor| upsampled_loss(s, upsampling, &labels, valid.clone(), self.ohem);
        let mut loss = head(&scores.scores)?;
        for aux in &scores.aux_scores {
            loss = (loss + head(aux)?.affine(self.aux_weight, 0.0)?)?;
        }
        Ok(loss)
    }
}

/// The softmax probabilities' argmax agrees with `labels` on this fraction of labelled pixels.
pub fn pixel_accuracy(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<f64> {
    let predictions: Vec<u32> = logits.argmax(1)?.flatten_all()?.to_vec1()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    let (mut right, mut total) = (0usize, 0usize);
    for (p, l) in predictions.iter().zip(&labels) {
        if *l != ignore {
            total += 1;
            right += (p == l) as usize;
        }
    }
    Ok(right as f64 / total.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn logits_2x1x2() -> Tensor {
        // Two classes, one image of 1x2 pixels.
        Tensor::new(&[[[[2.0f64, 0.0]], [[0.0, 1.0]]]], &Device::Cpu).unwrap()
    }

    #[test]
    fn hand_checked_cross_entropy_with_ignored_pixels() {
        let labels = Tensor::new(&[[[0u8, 255]]], &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits_2x1x2(), &labels, 255, None).unwrap();
        let expected = -(2f64.exp() / (2f64.exp() + 1.0)).ln();
        assert!((loss.to_scalar::<f64>().unwrap() - expected).abs() < 1e-12);

        let both = Tensor::new(&[[[0u8, 1]]], &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits_2x1x2(), &both, 255, None).unwrap();
        let second = -(1f64.exp() / (1f64.exp() + 1.0)).ln();
        assert!((loss.to_scalar::<f64>().unwrap() - (expected + second) / 2.0).abs() < 1e-12);

        let none = Tensor::new(&[[[255u8, 255]]], &Device::Cpu).unwrap();
        assert_eq!(
            cross_entropy(&logits_2x1x2(), &none, 255, None)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
        let bad = Tensor::new(&[[[0u8, 7]]], &Device::Cpu).unwrap();
        assert!(cross_entropy(&logits_2x1x2(), &bad, 255, None).is_err());
    }

    #[test]
    fn gradient_is_softmax_minus_one_hot_over_the_count() {
        let var = Var::from_tensor(&logits_2x1x2()).unwrap();
        let labels = Tensor::new(&[[[0u8, 1]]], &Device::Cpu).unwrap();
        let loss = cross_entropy(var.as_tensor(), &labels, 255, None).unwrap();
        let grad = loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let p0 = 2f64.exp() / (2f64.exp() + 1.0);
        // d/dz of class 0 at pixel 0: (p - 1) / 2.
        assert!((grad[0] - (p0 - 1.0) / 2.0).abs() < 1e-12, "{grad:?}");
    }

    #[test]
    fn ohem_keeps_the_hardest_pixels() {
        let mut valid = vec![true, true, true, false];
        keep_hardest(
            &mut valid,
            &[0.9, 0.2, 0.6, 0.1],
            Ohem {
                threshold: 0.7,
                min_kept: 1,
            },
        );
        assert_eq!(valid, [false, true, true, false]);
        // min_kept raises the threshold to the k-th smallest probability.
        let mut valid = vec![true; 3];
        keep_hardest(
            &mut valid,
            &[0.95, 0.8, 0.9],
            Ohem {
                threshold: 0.7,
                min_kept: 2,
            },
        );
        assert_eq!(valid, [false, true, true]);
    }

    #[test]
    fn the_loss_of_scores_is_the_loss_of_their_logits() {
        // Two images, 4 classes of 3x5 scores for 12x20 labels, a main and an auxiliary head.
        let scores = |seed| fastscnn_core::testing::random_tensor(&[2, 4, 3, 5], seed).unwrap();
        let labels: Vec<u8> = (0..2 * 12 * 20)
            .map(|i| if i % 9 == 4 { 255 } else { (i * 7 % 4) as u8 })
            .collect();
        let labels = Tensor::from_vec(labels, (2, 12, 20), &Device::Cpu).unwrap();
        for align_corners in [false, true] {
            let out = TrainingScores {
                scores: scores(1),
                aux_scores: vec![scores(2)],
                size: (12, 20),
                align_corners,
            };
            let logits = out.logits().unwrap();
            let ohem = Ohem {
                threshold: 0.3,
                min_kept: 150,
            };
            for ohem in [None, Some(ohem)] {
                let loss = SegmentationLoss {
                    ohem,
                    ..SegmentationLoss::default()
                };
                let value = |t: Tensor| t.to_scalar::<f32>().unwrap();
                let fused = value(loss.compute_scores(&out, &labels).unwrap());
                let plain = value(loss.compute(&logits[0], &logits[1..], &labels).unwrap());
                assert!(
                    ((fused - plain) / plain).abs() < 1e-6,
                    "{ohem:?}: {fused} vs {plain}"
                );
            }
        }
        let wrong = Tensor::zeros((2, 12, 19), DType::U8, &Device::Cpu).unwrap();
        let out = TrainingScores {
            scores: scores(1),
            aux_scores: Vec::new(),
            size: (12, 20),
            align_corners: false,
        };
        assert!(SegmentationLoss::default()
            .compute_scores(&out, &wrong)
            .is_err());
    }

    #[test]
    fn auxiliary_losses_are_weighted() {
        let labels = Tensor::new(&[[[0u8, 1]]], &Device::Cpu).unwrap();
        let main = cross_entropy(&logits_2x1x2(), &labels, 255, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let total = SegmentationLoss::default()
            .compute(&logits_2x1x2(), &[logits_2x1x2(), logits_2x1x2()], &labels)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((total - main * 1.8).abs() < 1e-12);
    }
}
