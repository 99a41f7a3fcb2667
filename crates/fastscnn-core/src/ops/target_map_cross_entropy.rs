//! Softmax cross-entropy against targets held as a tensor on the logits' device: the form of
//! [`super::softmax_cross_entropy`] that CUDA runs, so that neither the loss nor its gradient
//! crosses to the host (the CPU form takes the targets as slices and keeps its gradient in host
//! memory). The targets are an (N, H, W) map in the logits' float type, each a class index or
//! −1 where the pixel takes no part; f32 holds every class index exactly.
//!
//! CUDA runs the kernels of `target_map_cross_entropy.cu`; the CPU runs the same arithmetic in
//! f64, the reference the CUDA kernels and the rest of this form are tested against.

use candle_core::{bail, CpuStorage, Device, Result, Shape, Tensor};

use super::{forward_only_op, kernel_forwards, Float, Kernel};

/// The target map of `targets` where `mask` is set and −1 elsewhere, (N, H, W) f32 on `device`.
pub(super) fn target_map(
    targets: &[u32],
    mask: &[bool],
    (n, h, w): (usize, usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let map: Vec<f32> = targets
        .iter()
        .zip(mask)
        .map(|(&t, &m)| if m { t as f32 } else { -1.0 })
        .collect();
    Tensor::from_vec(map, (n, h, w), device)
}

/// The mean over the `count` pixels with a target of `−log softmax(logits)[target]` (0 when
/// `count` is 0): `logits` (N, C, H, W), `targets` from [`target_map`] on the same device.
/// Differentiable in the logits.
pub(super) fn target_map_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    count: usize,
) -> Result<Tensor> {
    let (n, _, h, w) = logits.dims4()?;
    if targets.dims() != [n, h, w] || targets.dtype() != logits.dtype() {
        bail!(
            "target_map_cross_entropy: targets {:?} {:?} for logits {:?} {:?}",
            targets.dims(),
            targets.dtype(),
            logits.dims(),
            logits.dtype()
        )
    }
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, TargetMapCrossEntropy { count })
}

/// 1/count, the weight of each pixel in the mean.
fn pixel_weight(count: usize) -> f64 {
    1.0 / count.max(1) as f64
}

/// The class a target map entry names, if any.
fn target_class<T: Float>(target: T) -> Option<usize> {
    let t = target.to_f64();
    (t >= 0.0).then_some(t as usize)
}

/// Pixel `i`'s class scores in (N, C, plane) logits, in f64: its scores' maximum and
/// `Σ exp(score − maximum)`, and its index of class k.
struct PixelScores<'a, T> {
    x: &'a [T],
    first: usize,
    plane: usize,
    max: f64,
    sum: f64,
}

impl<'a, T: Float> PixelScores<'a, T> {
    fn new(x: &'a [T], i: usize, c: usize, plane: usize) -> Self {
        let first = (i / plane) * c * plane + i % plane;
        let at = |k: usize| x[first + k * plane].to_f64();
        let max = (0..c).map(at).fold(f64::NEG_INFINITY, f64::max);
        let sum = (0..c).map(|k| (at(k) - max).exp()).sum();
        Self {
            x,
            first,
            plane,
            max,
            sum,
        }
    }

    fn index(&self, k: usize) -> usize {
        self.first + k * self.plane
    }

    fn score(&self, k: usize) -> f64 {
        self.x[self.index(k)].to_f64()
    }
}

/// The loss. Arguments: (logits, targets).
struct TargetMapCrossEntropy {
    count: usize,
}

impl Kernel<2> for TargetMapCrossEntropy {
    const NAME: &'static str = "target-map-cross-entropy";

    fn run<T: Float>(
        &self,
        [x, targets]: [&[T]; 2],
        [shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let mut sum = 0f64;
        for (i, &target) in targets.iter().enumerate() {
            let Some(t) = target_class(target) else {
                continue;
            };
            if t >= c {
                bail!("{}: target {t} out of range for {c} classes", Self::NAME)
            }
            let pixel = PixelScores::new(x, i, c, plane);
            sum += pixel.sum.ln() + pixel.max - pixel.score(t);
        }
        let loss = sum * pixel_weight(self.count);
        Ok((
            T::to_cpu_storage_owned(vec![T::from_f64(loss)]),
            Shape::from(()),
        ))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [logits, targets]: [(&candle_core::CudaStorage, &candle_core::Layout); 2],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let loss = cuda::loss(logits, targets, pixel_weight(self.count))?;
        Ok((loss, Shape::from(())))
    }
}

impl candle_core::CustomOp2 for TargetMapCrossEntropy {
    kernel_forwards!(2);

    /// `(softmax − onehot) / count` at the pixels with a target, times the loss's own gradient,
    /// which stays on the device (a scalar tensor).
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad =
            logits.apply_op2_no_bwd(targets, &TargetMapCrossEntropyGrad { count: self.count })?;
        let grad = grad.broadcast_mul(&grad_res.to_dtype(grad.dtype())?)?;
        Ok((Some(grad), None))
    }
}

/// The loss's gradient with respect to the logits. Arguments: (logits, targets).
struct TargetMapCrossEntropyGrad {
    count: usize,
}

impl Kernel<2> for TargetMapCrossEntropyGrad {
    const NAME: &'static str = "target-map-cross-entropy-grad";

    fn run<T: Float>(
        &self,
        [x, targets]: [&[T]; 2],
        [shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let scale = pixel_weight(self.count);
        let mut out = vec![T::zero(); x.len()];
        for (i, &target) in targets.iter().enumerate() {
            let Some(t) = target_class(target) else {
                continue;
            };
            let pixel = PixelScores::new(x, i, c, plane);
            for k in 0..c {
                let p = (pixel.score(k) - pixel.max).exp() / pixel.sum;
                let onehot = if k == t { 1.0 } else { 0.0 };
                out[pixel.index(k)] = T::from_f64((p - onehot) * scale);
            }
        }
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [logits, targets]: [(&candle_core::CudaStorage, &candle_core::Layout); 2],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let grad = cuda::grad(logits, targets, pixel_weight(self.count))?;
        Ok((grad, logits.1.shape().clone()))
    }
}

forward_only_op!(TargetMapCrossEntropyGrad, 2);

/// The launches of `target_map_cross_entropy.cu`'s kernels.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Result};

    use crate::ops::cuda::{
        dims, elementwise, input, output, ptx_module, reduction, storage, Input, Module,
    };

    static MODULE: Module = ptx_module!("target_map_cross_entropy");

    /// Blocks summing pixel losses: a fixed number for a given size, so the sum's order, and its
    /// bits, are the same on every run.
    fn loss_blocks(pixels: usize) -> u32 {
        pixels
            .div_ceil(crate::ops::cuda::SUM_THREADS as usize * 16)
            .clamp(1, 1024) as u32
    }

    /// The mean loss, a one-element f32 storage: `scale` (1/count) times the sum.
    pub(super) fn loss((ls, ll): Input, (ts, tl): Input, scale: f64) -> Result<CudaStorage> {
        const OP: &str = "target-map-cross-entropy";
        let (n, c, h, w) = ll.shape().dims4()?;
        let device = &ls.device;
        let logits = input::<f32>(ls, ll, OP)?;
        let targets = input::<f32>(ts, tl, OP)?;
        let blocks = loss_blocks(n * h * w);
        // SAFETY: the kernel launched next writes every element.
        let partials = unsafe { output::<f64>(device, blocks as usize) }?;
        let dims = dims([n, c, h * w], OP)?;
        let (func, stream) = MODULE.function(device, "cross_entropy_partial_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&logits).arg(&targets).arg(&partials);
        for d in &dims {
            args.arg(d);
        }
        // SAFETY: the arguments match the kernel's parameters in order and type; every block
        // writes its partial sum.
        unsafe { args.launch(reduction((blocks, 1), OP)?) }.w()?;
        // SAFETY: the kernel launched next writes every element.
        let loss = unsafe { output::<f32>(device, 1) }?;
        let (func, stream) = MODULE.function(device, "cross_entropy_finish_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&partials).arg(&loss).arg(&blocks).arg(&scale);
        // SAFETY: as above; the one thread writes the one value.
        unsafe { args.launch(elementwise(1)) }.w()?;
        Ok(storage(loss, device))
    }

    /// The gradient `(softmax − onehot) · scale`, zero at ignored pixels, shaped as the logits.
    pub(super) fn grad((ls, ll): Input, (ts, tl): Input, scale: f64) -> Result<CudaStorage> {
        const OP: &str = "target-map-cross-entropy-grad";
        let (n, c, h, w) = ll.shape().dims4()?;
        let device = &ls.device;
        let logits = input::<f32>(ls, ll, OP)?;
        let targets = input::<f32>(ts, tl, OP)?;
        // SAFETY: the kernel launched next writes every element.
        let grad = unsafe { output::<f32>(device, n * c * h * w) }?;
        let dims = dims([n, c, h * w], OP)?;
        let scale = scale as f32;
        let (func, stream) = MODULE.function(device, "cross_entropy_grad_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&logits).arg(&targets).arg(&grad);
        for d in &dims {
            args.arg(d);
        }
        args.arg(&scale);
        // SAFETY: the arguments match the kernel's parameters in order and type; one thread per
        // pixel writes all of its classes' gradients.
        unsafe { args.launch(elementwise(n * h * w)) }.w()?;
        Ok(storage(grad, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::softmax_cross_entropy;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    /// The target-map form on the CPU (its f64 reference kernels) against the CPU loss: the loss
    /// and, scaled as an auxiliary head's (0.4), its gradient; some pixels ignored, and none set.
    #[test]
    fn equals_the_cpu_loss_and_gradient() {
        let (n, c, h, w) = (2, 5, 3, 4);
        let logits = Var::from_tensor(
            &random_tensor(&[n, c, h, w], 1)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap(),
        )
        .unwrap();
        let targets: Vec<u32> = (0..n * h * w).map(|i| (i * 7 % c) as u32).collect();
        for mask in [
            (0..n * h * w).map(|i| i % 3 != 0).collect::<Vec<bool>>(),
            vec![false; n * h * w],
        ] {
            let count = mask.iter().filter(|m| **m).count();
            let map = target_map(&targets, &mask, (n, h, w), logits.device())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let ours = target_map_cross_entropy(&logits, &map, count).unwrap();
            let reference = softmax_cross_entropy(&logits, &targets, &mask).unwrap();
            assert!(max_abs_diff(&ours, &reference) < 1e-12);
            let grad = |loss: Tensor| {
                let grads = (loss * 0.4).unwrap().backward().unwrap();
                grads.get(&logits).unwrap().clone()
            };
            let diff = max_abs_diff(&grad(ours), &grad(reference));
            assert!(diff < 1e-12, "count {count}: {diff}");
        }
    }

    #[test]
    fn refuses_a_map_of_another_shape() {
        let logits = random_tensor(&[1, 3, 2, 2], 1).unwrap();
        let map = Tensor::zeros((1, 2, 3), DType::F32, logits.device()).unwrap();
        assert!(target_map_cross_entropy(&logits, &map, 4).is_err());
    }
}
