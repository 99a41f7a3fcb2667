//! Softmax cross-entropy over the class axis of (N, C, H, W) logits, fused.
//!
//! Composed from candle's ops (log-softmax, gather, mask) the loss of one 2x19x512x1024 batch
//! costs several full passes and a scatter in the backward pass; fused, the forward is one pass,
//! which in f32 also writes the gradient `(softmax − onehot) / count` of logits that will be
//! differentiated, from the same exponentials, for the backward pass to take: 4% of a step in
//! `fastscnn bench --mode train`, for the gradient's memory held from the forward pass to the
//! backward. f32 runs on the CPU crate's kernel (`fastscnn_cpu::cross_entropy_planes`: a
//! vectorised `exp`, blocks in cache); f64, which the gradient checks and the exact reference
//! step use, on the library's `exp` in f64.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use fastscnn_cpu::cross_entropy_planes;
use rayon::prelude::*;

use super::target_map_cross_entropy::{target_map, target_map_cross_entropy};
use super::{forward_only_op, has_cpu_kernel, has_cuda_kernel, run_kernel, Float, Kernel};

/// Pixels per parallel task: large enough to amortise, small enough to spread over cores.
const BLOCK: usize = 4096;

/// Mean over the pixels where `mask` is set of `−log softmax(logits)[target]`; `targets` and
/// `mask` hold one entry per pixel of the (N, H, W) grid. Zero when no pixel is set. CPU (f32,
/// f64) and CUDA (f32, with the targets copied to the device once) run fused kernels, other
/// devices candle's ops.
pub fn softmax_cross_entropy(logits: &Tensor, targets: &[u32], mask: &[bool]) -> Result<Tensor> {
    check_targets("softmax_cross_entropy", logits.dims4()?, targets, mask)?;
    let count = mask.iter().filter(|m| **m).count();
    if has_cpu_kernel(logits) {
        logits.contiguous()?.apply_op1(SoftmaxCrossEntropy {
            targets: Arc::new(targets.to_vec()),
            mask: Arc::new(mask.to_vec()),
            count,
            gradient: logits.track_op().then(Default::default),
        })
    } else if has_cuda_kernel(logits) {
        let (n, _, h, w) = logits.dims4()?;
        let targets = target_map(targets, mask, (n, h, w), logits.device())?;
        target_map_cross_entropy(logits, &targets, count)
    } else {
        softmax_cross_entropy_composite(logits, targets, mask)
    }
}

/// Refuses `targets` and `mask` unless they hold one entry per pixel of (N, C, H, W) logits'
/// (N, H, W) grid, and every masked target is a class.
pub(super) fn check_targets(
    op: &str,
    (n, c, h, w): (usize, usize, usize, usize),
    targets: &[u32],
    mask: &[bool],
) -> Result<()> {
    if targets.len() != n * h * w || mask.len() != targets.len() {
        bail!(
            "{op}: {} targets and {} mask entries for {n}x{h}x{w} pixels",
            targets.len(),
            mask.len()
        )
    }
    if let Some(t) = targets
        .iter()
        .zip(mask)
        .find_map(|(&t, &m)| (m && t as usize >= c).then_some(t))
    {
        bail!("{op}: target {t} out of range for {c} classes")
    }
    Ok(())
}

/// The same loss from candle's own ops: the fallback on other devices and the reference for the
/// kernel.
pub fn softmax_cross_entropy_composite(
    logits: &Tensor,
    targets: &[u32],
    mask: &[bool],
) -> Result<Tensor> {
    let (n, _, h, w) = logits.dims4()?;
    let device = logits.device();
    let safe: Vec<u32> = targets
        .iter()
        .zip(mask)
        .map(|(&t, &m)| if m { t } else { 0 })
        .collect();
    let targets = Tensor::from_vec(safe, (n, 1, h, w), device)?;
    let weights: Vec<f32> = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let weights = Tensor::from_vec(weights, (n, 1, h, w), device)?.to_dtype(logits.dtype())?;
    let count = mask.iter().filter(|m| **m).count().max(1);
    let picked = candle_nn::ops::log_softmax(logits, 1)?.gather(&targets, 1)?;
    (picked * weights)?
        .sum_all()?
        .affine(-1.0 / count as f64, 0.0)
}

/// The probability softmax gives each pixel's target class, (N·H·W) values; for hard-example
/// mining, no gradient.
pub fn target_probabilities(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    let (n, c, h, w) = logits.dims4()?;
    if targets.len() != n * h * w {
        bail!(
            "target_probabilities: {} targets for {n}x{h}x{w} pixels",
            targets.len()
        )
    }
    let logits: Vec<f32> = logits
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let plane = h * w;
    Ok(targets
        .par_iter()
        .enumerate()
        .map(|(i, &t)| {
            let (b, p) = (i / plane, i % plane);
            let at = |k: usize| logits[(b * c + k) * plane + p];
            let max = (0..c).map(at).fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = (0..c).map(|k| (at(k) - max).exp()).sum();
            ((at((t as usize).min(c - 1)) - max).exp()) / sum
        })
        .collect())
}

struct SoftmaxCrossEntropy {
    targets: Arc<Vec<u32>>,
    mask: Arc<Vec<bool>>,
    count: usize,
    /// For logits that will be differentiated: the f32 forward pass writes the gradient here,
    /// from the same exponentials as the loss, and the backward pass takes it, instead of
    /// computing every exponential again.
    gradient: Option<KeptGradient>,
}

/// Visits every masked pixel of one block as (image, pixel in plane, target).
fn for_block(
    block: usize,
    plane: usize,
    targets: &[u32],
    mask: &[bool],
    mut visit: impl FnMut(usize, usize, usize),
) {
    let start = block * BLOCK;
    let end = (start + BLOCK).min(targets.len());
    for i in start..end {
        if mask[i] {
            visit(i / plane, i % plane, targets[i] as usize);
        }
    }
}

impl Kernel<1> for SoftmaxCrossEntropy {
    const NAME: &'static str = "softmax-cross-entropy";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let blocks = self.targets.len().div_ceil(BLOCK);
        // Per-block sums added in block order: the same bits on every run.
        let partial: Vec<f64> = (0..blocks)
            .into_par_iter()
            .map(|block| {
                let mut sum = 0f64;
                for_block(block, plane, &self.targets, &self.mask, |b, p, t| {
                    let at = |k: usize| x[(b * c + k) * plane + p].to_f64();
                    let max = (0..c).map(at).fold(f64::NEG_INFINITY, f64::max);
                    let log_sum = (0..c).map(|k| (at(k) - max).exp()).sum::<f64>().ln();
                    sum += log_sum + max - at(t);
                });
                sum
            })
            .collect();
        let loss = partial.iter().sum::<f64>() / self.count.max(1) as f64;
        Ok((
            T::to_cpu_storage_owned(vec![T::from_f64(loss)]),
            Shape::from(()),
        ))
    }

    /// On the CPU crate's kernel, which for logits that will be differentiated also writes
    /// the gradient for the backward pass to take.
    fn run_f32(&self, [x]: [&[f32]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let scale = 1.0 / self.count.max(1) as f32;
        let total = match &self.gradient {
            Some(cell) => {
                let mut grad = vec![0f32; x.len()];
                let total =
                    f32_planes(x, shape, &self.targets, &self.mask, scale, Some(&mut grad))?;
                cell.keep(grad);
                total
            }
            None => f32_planes(x, shape, &self.targets, &self.mask, 1.0, None)?,
        };
        let loss = (total / self.count.max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }
}

impl CustomOp1 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        run_kernel(self, [(s, l)])
    }

    /// The gradient the forward pass kept, or else computed now, times the loss's own gradient.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let kept = self.gradient.as_ref().and_then(KeptGradient::take);
        let grad = match kept {
            Some(grad) => Tensor::from_vec(grad, arg.shape(), arg.device())?,
            None => arg.apply_op1_no_bwd(&SoftmaxCrossEntropyGrad {
                targets: self.targets.clone(),
                mask: self.mask.clone(),
                count: self.count,
            })?,
        };
        Ok(Some(times_loss_gradient(grad, grad_res)?))
    }
}

/// A loss's gradient with respect to its argument times the loss's own gradient `grad_res` (1
/// for the main head's loss, the weight of an auxiliary one's).
pub(super) fn times_loss_gradient(grad: Tensor, grad_res: &Tensor) -> Result<Tensor> {
    let factor = grad_res
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    if factor == 1.0 {
        Ok(grad)
    } else {
        grad.affine(factor, 0.0)
    }
}

/// The gradient an f32 loss's forward pass wrote for an argument that will be differentiated,
/// for the backward pass to take instead of computing it again.
#[derive(Default)]
pub(super) struct KeptGradient(Mutex<Option<Vec<f32>>>);

impl KeptGradient {
    pub(super) fn keep(&self, grad: Vec<f32>) {
        *self.lock() = Some(grad);
    }

    /// The gradient, once: a second backward pass computes it again.
    pub(super) fn take(&self) -> Option<Vec<f32>> {
        self.lock().take()
    }

    /// A panic elsewhere while the cell was held leaves the vector whole.
    fn lock(&self) -> MutexGuard<'_, Option<Vec<f32>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `(softmax − onehot(target)) / count` at masked pixels, 0 elsewhere.
struct SoftmaxCrossEntropyGrad {
    targets: Arc<Vec<u32>>,
    mask: Arc<Vec<bool>>,
    count: usize,
}

impl Kernel<1> for SoftmaxCrossEntropyGrad {
    const NAME: &'static str = "softmax-cross-entropy-grad";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let scale = 1.0 / self.count.max(1) as f64;
        // Each image's (C, H·W) block is written by the tasks of its own pixels only.
        let mut out = vec![T::zero(); n * c * plane];
        out.par_chunks_mut(c * plane)
            .enumerate()
            .for_each(|(b, image)| {
                let mut probs = vec![0f64; c];
                for p in 0..plane {
                    let i = b * plane + p;
                    if !self.mask[i] {
                        continue;
                    }
                    let at = |k: usize| x[(b * c + k) * plane + p].to_f64();
                    let max = (0..c).map(at).fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0f64;
                    for (k, prob) in probs.iter_mut().enumerate() {
                        *prob = (at(k) - max).exp();
                        sum += *prob;
                    }
                    let target = self.targets[i] as usize;
                    for (k, prob) in probs.iter().enumerate() {
                        let onehot = if k == target { 1.0 } else { 0.0 };
                        image[k * plane + p] = T::from_f64((prob / sum - onehot) * scale);
                    }
                }
            });
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }

    /// On the CPU crate's kernel.
    fn run_f32(&self, [x]: [&[f32]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let scale = 1.0 / self.count.max(1) as f32;
        let mut grad = vec![0f32; x.len()];
        f32_planes(x, shape, &self.targets, &self.mask, scale, Some(&mut grad))?;
        Ok((CpuStorage::F32(grad), shape.clone()))
    }
}

forward_only_op!(SoftmaxCrossEntropyGrad, 1);

/// The f32 loss summed over the masked pixels of every image of (N, C, H, W) `x`, through the
/// CPU crate's kernel, and with `grad` its gradient times `scale`.
fn f32_planes(
    x: &[f32],
    shape: &Shape,
    targets: &[u32],
    mask: &[bool],
    scale: f32,
    mut grad: Option<&mut [f32]>,
) -> Result<f64> {
    let (n, c, h, w) = shape.dims4()?;
    let (plane, image) = (h * w, c * h * w);
    let mut total = 0f64;
    for b in 0..n {
        let pixels = b * plane..(b + 1) * plane;
        total += cross_entropy_planes(
            &x[b * image..(b + 1) * image],
            c,
            plane,
            &targets[pixels.clone()],
            &mask[pixels],
            scale,
            grad.as_deref_mut()
                .map(|g| &mut g[b * image..(b + 1) * image]),
        );
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    fn case() -> (Tensor, Vec<u32>, Vec<bool>) {
        let logits = random_tensor(&[2, 5, 3, 7], 1)
            .unwrap()
            .affine(3.0, 0.0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let targets: Vec<u32> = (0..42).map(|i| (i * 7 % 5) as u32).collect();
        let mask: Vec<bool> = (0..42).map(|i| i % 4 != 0).collect();
        (logits, targets, mask)
    }

    #[test]
    fn loss_and_gradient_match_the_composite() {
        let (logits, targets, mask) = case();
        let grad_of = |f: &dyn Fn(&Tensor) -> Tensor| {
            let var = Var::from_tensor(&logits).unwrap();
            let loss = f(var.as_tensor());
            let grad = loss.backward().unwrap().get(&var).unwrap().clone();
            (loss.to_scalar::<f64>().unwrap(), grad)
        };
        let (fused, fused_grad) = grad_of(&|x| {
            softmax_cross_entropy(x, &targets, &mask)
                .unwrap()
                .affine(2.0, 0.0)
                .unwrap()
        });
        let (plain, plain_grad) = grad_of(&|x| {
            softmax_cross_entropy_composite(x, &targets, &mask)
                .unwrap()
                .affine(2.0, 0.0)
                .unwrap()
        });
        assert!((fused - plain).abs() < 1e-12, "{fused} vs {plain}");
        assert!(max_abs_diff(&fused_grad, &plain_grad) < 1e-12);
    }

    #[test]
    fn f32_loss_and_gradient_match_the_f64_kernel() {
        let (logits, targets, mask) = case();
        // Weighted as an auxiliary head's, so the loss's own gradient is not 1.
        let grad_of = |x: &Tensor| {
            let var = Var::from_tensor(x).unwrap();
            let loss = softmax_cross_entropy(var.as_tensor(), &targets, &mask).unwrap();
            let loss = loss.affine(0.4, 0.0).unwrap();
            let grad = loss.backward().unwrap().get(&var).unwrap().clone();
            let loss = loss
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            (loss, grad.to_dtype(DType::F64).unwrap())
        };
        let (exact, exact_grad) = grad_of(&logits);
        let (single, single_grad) = grad_of(&logits.to_dtype(DType::F32).unwrap());
        assert!(
            ((single - exact) / exact).abs() < 1e-6,
            "{single} vs {exact}"
        );
        assert!(max_abs_diff(&single_grad, &exact_grad) < 1e-7);
        // A second backward pass recomputes the gradient the first one took.
        let var = Var::from_tensor(&logits.to_dtype(DType::F32).unwrap()).unwrap();
        let loss = softmax_cross_entropy(var.as_tensor(), &targets, &mask).unwrap();
        let first = loss.backward().unwrap().get(&var).unwrap().clone();
        let second = loss.backward().unwrap().get(&var).unwrap().clone();
        assert_eq!(max_abs_diff(&first, &second), 0.0);
        // Logits without gradient give the same loss.
        let plain = logits.to_dtype(DType::F32).unwrap();
        let loss = softmax_cross_entropy(&plain, &targets, &mask).unwrap();
        let loss = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            ((0.4 * loss - single) / single).abs() < 1e-6,
            "{loss} vs {single}"
        );
    }

    #[test]
    fn target_probabilities_are_softmax_entries() {
        let (logits, targets, _) = case();
        let probs = target_probabilities(&logits, &targets).unwrap();
        let softmax: Vec<f64> = candle_nn::ops::softmax(&logits, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Pixel 8 of image 1 (row 1, column 1), and its target.
        let (b, p, plane) = (1, 8, 21);
        let t = targets[b * plane + p] as usize;
        let expected = softmax[(b * 5 + t) * plane + p];
        assert!((probs[b * plane + p] as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn rejects_bad_targets_and_sizes() {
        let (logits, mut targets, mask) = case();
        assert!(softmax_cross_entropy(&logits, &targets[1..], &mask[1..]).is_err());
        targets[1] = 9;
        assert!(softmax_cross_entropy(&logits, &targets, &mask).is_err());
    }
}
