//! The training loss straight from low-resolution class scores: bilinear upsampling to the
//! labels' size and softmax cross-entropy in one pass, so neither the full-resolution logits nor
//! their gradient is stored. A 2x19x512x1024 batch's logits are 80 MB: resizing then taking the
//! loss makes four passes over such a tensor per head, and candle's gradient store two more (a
//! zeroed tensor and a sum into it); `fastscnn bench --mode train` measures the step.
//!
//! f32 on the CPU runs `fastscnn_cpu::resize_cross_entropy_planes`, whose forward pass also
//! writes the gradient with respect to the low-resolution scores when they will be
//! differentiated, for the backward pass to take. Elsewhere the loss is the composition it
//! equals, [`resize_bilinear`] then [`softmax_cross_entropy`], which is also its reference.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use fastscnn_cpu::{resize_cross_entropy_planes, MapView};

use super::cross_entropy::{check_targets, times_loss_gradient, KeptGradient};
use super::{contiguous_slice, resize_bilinear, softmax_cross_entropy};

/// `softmax_cross_entropy(resize_bilinear(scores, out_h, out_w, align_corners), targets,
/// mask)`: the mean over the pixels where `mask` is set of `−log softmax[target]` of `scores`
/// (N, C, h, w) upsampled to (out_h, out_w); `targets` and `mask` hold one entry per pixel of the
/// (N, out_h, out_w) grid. Zero when no pixel is set.
pub fn resize_cross_entropy(
    scores: &Tensor,
    (out_h, out_w): (usize, usize),
    align_corners: bool,
    targets: &[u32],
    mask: &[bool],
) -> Result<Tensor> {
    let (n, c, h, w) = scores.dims4()?;
    if c == 0 || h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        bail!("resize_cross_entropy: cannot take {c} classes of {h}x{w} to {out_h}x{out_w}")
    }
    check_targets("resize_cross_entropy", (n, c, out_h, out_w), targets, mask)?;
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        scores.contiguous()?.apply_op1(ResizeCrossEntropy {
            out: (out_h, out_w),
            align_corners,
            targets: Arc::new(targets.to_vec()),
            mask: Arc::new(mask.to_vec()),
            gradient: scores.track_op().then(Default::default),
        })
    } else {
        let logits = resize_bilinear(scores, out_h, out_w, align_corners)?;
        softmax_cross_entropy(&logits, targets, mask)
    }
}

struct ResizeCrossEntropy {
    out: (usize, usize),
    align_corners: bool,
    targets: Arc<Vec<u32>>,
    mask: Arc<Vec<bool>>,
    /// For scores that will be differentiated: the forward pass writes the loss's gradient
    /// with respect to them here, and the backward pass takes it.
    gradient: Option<KeptGradient>,
}

impl ResizeCrossEntropy {
    const NAME: &'static str = "resize-cross-entropy";

    /// The loss of f32 `scores` (N, C, h, w), and with `grad` its gradient with respect to them.
    fn run(&self, scores: &[f32], shape: &Shape, mut grad: Option<&mut [f32]>) -> Result<f32> {
        let (n, c, h, w) = shape.dims4()?;
        let (oh, ow) = self.out;
        let count = self.mask.iter().filter(|m| **m).count().max(1);
        let (image, plane) = (c * h * w, oh * ow);
        let mut total = 0f64;
        for b in 0..n {
            let pixels = b * plane..(b + 1) * plane;
            total += resize_cross_entropy_planes(
                MapView::new(&scores[b * image..(b + 1) * image], c, h, w),
                self.out,
                self.align_corners,
                &self.targets[pixels.clone()],
                &self.mask[pixels],
                1.0 / count as f32,
                grad.as_deref_mut()
                    .map(|g| &mut g[b * image..(b + 1) * image]),
            );
        }
        Ok((total / count as f64) as f32)
    }
}

impl CustomOp1 for ResizeCrossEntropy {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_slice::<f32>(s, l, Self::NAME)?;
        let loss = match &self.gradient {
            Some(cell) => {
                let mut grad = vec![0f32; scores.len()];
                let loss = self.run(scores, l.shape(), Some(&mut grad))?;
                cell.keep(grad);
                loss
            }
            None => self.run(scores, l.shape(), None)?,
        };
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    /// The gradient the forward pass kept, or else computed now, times the loss's own gradient.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = match self.gradient.as_ref().and_then(KeptGradient::take) {
            Some(grad) => grad,
            None => {
                let scores: Vec<f32> = arg.flatten_all()?.to_vec1()?;
                let mut grad = vec![0f32; scores.len()];
                self.run(&scores, arg.shape(), Some(&mut grad))?;
                grad
            }
        };
        let grad = Tensor::from_vec(grad, arg.shape(), arg.device())?;
        Ok(Some(times_loss_gradient(grad, grad_res)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::Var;

    /// Scores of 2 images, 5 classes, 3x7, upsampled to 20x33, with targets and a mask.
    fn case() -> (Tensor, Vec<u32>, Vec<bool>) {
        let scores = random_tensor(&[2, 5, 3, 7], 4)
            .unwrap()
            .affine(3.0, 0.0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let pixels = 2 * 20 * 33;
        let targets = (0..pixels).map(|i| (i * 7 % 5) as u32).collect();
        let mask = (0..pixels).map(|i| i % 6 != 1).collect();
        (scores, targets, mask)
    }

    /// The loss (weighted as an auxiliary head's) and the gradient with respect to `scores`.
    fn loss_and_grad(scores: &Tensor, loss: impl Fn(&Tensor) -> Result<Tensor>) -> (f64, Tensor) {
        let var = Var::from_tensor(scores).unwrap();
        let loss = loss(var.as_tensor()).unwrap().affine(0.4, 0.0).unwrap();
        let grad = loss.backward().unwrap().get(&var).unwrap().clone();
        let loss = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        (loss, grad.to_dtype(DType::F64).unwrap())
    }

    #[test]
    fn equals_resize_then_loss() {
        let (scores, targets, mask) = case();
        for align_corners in [false, true] {
            let composed = |x: &Tensor| {
                let logits = resize_bilinear(x, 20, 33, align_corners)?;
                softmax_cross_entropy(&logits, &targets, &mask)
            };
            let fused =
                |x: &Tensor| resize_cross_entropy(x, (20, 33), align_corners, &targets, &mask);
            // The f64 reference: the composition's own kernels in f64.
            let (exact, exact_grad) = loss_and_grad(&scores, composed);
            let single = scores.to_dtype(DType::F32).unwrap();
            let (loss, grad) = loss_and_grad(&single, fused);
            assert!(((loss - exact) / exact).abs() < 1e-6, "{loss} vs {exact}");
            let peak = exact_grad
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap() as f32;
            assert!(max_abs_diff(&grad, &exact_grad) < 1e-5 * peak);
            // Other dtypes take the composition itself.
            let (fallback, _) = loss_and_grad(&scores, fused);
            assert_eq!(fallback, exact);
        }
    }

    #[test]
    fn a_second_backward_and_untracked_scores_agree() {
        let (scores, targets, mask) = case();
        let scores = scores.to_dtype(DType::F32).unwrap();
        let var = Var::from_tensor(&scores).unwrap();
        let loss = resize_cross_entropy(var.as_tensor(), (20, 33), false, &targets, &mask).unwrap();
        let first = loss.backward().unwrap().get(&var).unwrap().clone();
        let second = loss.backward().unwrap().get(&var).unwrap().clone();
        assert_eq!(max_abs_diff(&first, &second), 0.0);
        let plain = resize_cross_entropy(&scores, (20, 33), false, &targets, &mask).unwrap();
        assert_eq!(
            plain.to_scalar::<f32>().unwrap(),
            loss.to_scalar::<f32>().unwrap()
        );
    }

    #[test]
    fn no_labelled_pixel_gives_zero_and_no_gradient() {
        let (scores, targets, _) = case();
        let var = Var::from_tensor(&scores.to_dtype(DType::F32).unwrap()).unwrap();
        let none = vec![false; targets.len()];
        let loss = resize_cross_entropy(var.as_tensor(), (20, 33), true, &targets, &none).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
        let grad = loss.backward().unwrap().get(&var).unwrap().clone();
        assert_eq!(
            grad.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }

    #[test]
    fn rejects_bad_targets_and_sizes() {
        let (scores, mut targets, mask) = case();
        let loss = |targets: &[u32], mask: &[bool], out| {
            resize_cross_entropy(&scores, out, false, targets, mask)
        };
        assert!(loss(&targets[1..], &mask[1..], (20, 33)).is_err());
        assert!(loss(&targets, &mask, (0, 33)).is_err());
        // A labelled pixel (the mask leaves out every sixth from the second).
        targets[2] = 9;
        assert!(loss(&targets, &mask, (20, 33)).is_err());
    }
}
