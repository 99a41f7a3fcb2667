//! Training-mode batch normalisation as one op with its own backward pass.
//!
//! candle_nn's training path transposes, flattens and broadcasts through a dozen full-size
//! intermediate tensors, whose backward pass would dominate a training step at the stem's 1/2
//! resolution. Here the forward is two passes (statistics, normalisation) and the backward three
//! (`cargo bench -p fastscnn-benches --bench train_step`).

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{forward_only_op, has_cpu_kernel, run_kernel, Float, Kernel};

/// `(x − mean) / √(var + eps) · gamma + beta` with each channel's mean and biased variance over
/// the batch and both spatial axes, as BatchNorm computes in training; `x` is (N, C, H, W),
/// `gamma` and `beta` (C). Differentiable in all three.
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        bail!(
            "batch_norm_train: gamma {:?} and beta {:?} must be ({c})",
            gamma.dims(),
            beta.dims()
        )
    }
    if has_cpu_kernel(x) && x.dtype() == gamma.dtype() && x.dtype() == beta.dtype() {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            BatchNormTrain { eps },
        )
    } else {
        batch_norm_train_composite(x, gamma, beta, eps)
    }
}

/// The same normalisation from candle's ops: the fallback and the kernel's reference.
pub fn batch_norm_train_composite(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1))?)
}

/// Each channel's batch mean and biased variance, (C) each, without gradient: what updates the
/// running statistics.
pub fn channel_mean_var(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = x.detach();
    if has_cpu_kernel(&x) {
        let stats = x.contiguous()?.apply_op1_no_bwd(&ChannelMeanVar)?;
        return Ok((stats.get(0)?, stats.get(1)?));
    }
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let var = x
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    Ok((mean.flatten_all()?, var.flatten_all()?))
}

/// (mean, 1/√(var + eps)) of every channel, in f64, one channel per task.
fn channel_stats<T: Float>(x: &[T], n: usize, c: usize, plane: usize, eps: f64) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |b| &x[(b * c + ch) * plane..(b * c + ch + 1) * plane]);
            let count = (n * plane) as f64;
            let mean = planes()
                .map(|p| p.iter().map(|v| v.to_f64()).sum::<f64>())
                .sum::<f64>()
                / count;
            let var = planes()
                .map(|p| p.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>())
                .sum::<f64>()
                / count;
            (mean, 1.0 / (var + eps).sqrt())
        })
        .collect()
}

/// (2, C): each channel's mean, then its biased variance.
struct ChannelMeanVar;

impl Kernel<1> for ChannelMeanVar {
    const NAME: &'static str = "channel-mean-var";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        // eps 0 and inverted back: the variance itself.
        let stats = channel_stats(x, n, c, h * w, 0.0);
        let mut out: Vec<T> = stats.iter().map(|s| T::from_f64(s.0)).collect();
        out.extend(stats.iter().map(|s| T::from_f64((1.0 / s.1).powi(2))));
        Ok((T::to_cpu_storage_owned(out), Shape::from((2, c))))
    }
}

forward_only_op!(ChannelMeanVar, 1);

struct BatchNormTrain {
    eps: f64,
}

impl Kernel<3> for BatchNormTrain {
    const NAME: &'static str = "batch-norm-train";

    fn run<T: Float>(
        &self,
        [x, gamma, beta]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let stats = channel_stats(x, n, c, plane, self.eps);
        let mut out = vec![T::zero(); x.len()];
        if plane > 0 {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let ch = i % c;
                let (mean, inv) = stats[ch];
                let scale = inv * gamma[ch].to_f64();
                let shift = beta[ch].to_f64() - mean * scale;
                let (scale, shift) = (T::from_f64(scale), T::from_f64(shift));
                for (o, &v) in dst.iter_mut().zip(&x[i * plane..(i + 1) * plane]) {
                    *o = v * scale + shift;
                }
            });
        }
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        <Self as Kernel<3>>::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run_kernel(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    /// With x̂ the normalised input and M the count per channel:
    /// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ/σ · (dy − dβ/M − x̂·dγ/M).
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let gamma_values: Vec<f64> = gamma.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        let sums = x.apply_op3_no_bwd(&grad, gamma, &BatchNormGradSums { eps: self.eps })?;
        let sums_values: Vec<f64> = sums
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let grad_x = x.apply_op3_no_bwd(
            &grad,
            gamma,
            &BatchNormGradInput {
                eps: self.eps,
                gamma: gamma_values,
                sums: sums_values,
            },
        )?;
        let grad_beta = sums.get(0)?;
        let grad_gamma = sums.get(1)?;
        Ok((Some(grad_x), Some(grad_gamma), Some(grad_beta)))
    }
}

/// (2, C): per channel Σ dy and Σ dy·x̂. Arguments (x, dy, gamma); gamma only fixes the dtype.
struct BatchNormGradSums {
    eps: f64,
}

impl Kernel<3> for BatchNormGradSums {
    const NAME: &'static str = "batch-norm-grad-sums";

    fn run<T: Float>(
        &self,
        [x, dy, _]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let stats = channel_stats(x, n, c, plane, self.eps);
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, inv) = stats[ch];
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for b in 0..n {
                    let range = (b * c + ch) * plane..(b * c + ch + 1) * plane;
                    for (&g, &v) in dy[range.clone()].iter().zip(&x[range]) {
                        let g = g.to_f64();
                        sum_dy += g;
                        sum_dy_xhat += g * (v.to_f64() - mean) * inv;
                    }
                }
                (sum_dy, sum_dy_xhat)
            })
            .collect();
        let mut out: Vec<T> = sums.iter().map(|s| T::from_f64(s.0)).collect();
        out.extend(sums.iter().map(|s| T::from_f64(s.1)));
        Ok((T::to_cpu_storage_owned(out), Shape::from((2, c))))
    }
}

forward_only_op!(BatchNormGradSums, 3);

/// dx from x, dy and the per-channel sums. Arguments (x, dy, gamma).
struct BatchNormGradInput {
    eps: f64,
    gamma: Vec<f64>,
    /// Σ dy for every channel, then Σ dy·x̂.
    sums: Vec<f64>,
}

impl Kernel<3> for BatchNormGradInput {
    const NAME: &'static str = "batch-norm-grad-input";

    fn run<T: Float>(
        &self,
        [x, dy, _]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let count = (n * plane) as f64;
        let stats = channel_stats(x, n, c, plane, self.eps);
        let mut out = vec![T::zero(); x.len()];
        if plane > 0 {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let ch = i % c;
                let (mean, inv) = stats[ch];
                let k = self.gamma[ch] * inv;
                let mean_dy = self.sums[ch] / count;
                let mean_dy_xhat = self.sums[c + ch] / count;
                let range = i * plane..(i + 1) * plane;
                for ((o, &g), &v) in dst.iter_mut().zip(&dy[range.clone()]).zip(&x[range]) {
                    let xhat = (v.to_f64() - mean) * inv;
                    *o = T::from_f64(k * (g.to_f64() - mean_dy - xhat * mean_dy_xhat));
                }
            });
        }
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }
}

forward_only_op!(BatchNormGradInput, 3);
