//! Training-mode batch normalisation, with the ReLU that usually follows it, as one op with its
//! own backward pass.
//!
//! candle_nn's training path transposes, flattens and broadcasts through a dozen full-size
//! intermediate tensors, and candle's ReLU costs a pass forward and five (a comparison, a cast, a
//! product, a zeroed gradient and a sum) backward. Here the forward is three passes (the mean, the
//! variance, the normalisation with the ReLU) and the backward two (the per-channel sums, the
//! input gradient), the ReLU's mask read from the output; the batch statistics are computed once
//! and serve the running estimates and the backward pass (`fastscnn bench --mode train`).

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use fastscnn_cpu::{
    batch_norm_grad_sums, batch_norm_input_grad, batch_norm_moment, batch_norm_normalize,
    output_vec, InputGradTerms,
};

use super::stacked_batch_norm::stacked_batch_norm_train_act;
use super::{
    forward_only_op, has_cpu_kernel, has_cuda_kernel, lane_sum, run_kernel, Float, Kernel, LANES,
};

/// The output of training BatchNorm and the statistics it normalised by.
#[derive(Debug, Clone)]
pub struct BatchNormTrainOutput {
    /// `(x − mean) / √(var + eps) · gamma + beta`, through a ReLU if one was asked for.
    pub output: Tensor,
    /// Each channel's mean over the batch and both spatial axes, (C), without gradient: f64 from
    /// the CPU kernel (the sums it normalised by), `x`'s dtype elsewhere (f32 from the CUDA
    /// kernels, which keep it on the device).
    pub mean: Tensor,
    /// Each channel's biased variance, (C), without gradient, typed as `mean`: PyTorch's running
    /// variance takes it times `M / (M − 1)`, M the count per channel.
    pub variance: Tensor,
}

/// `(x − mean) / √(var + eps) · gamma + beta` with each channel's mean and biased variance over
/// the batch and both spatial axes, as BatchNorm computes in training; `x` is (N, C, H, W),
/// `gamma` and `beta` (C). Differentiable in all three.
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(batch_norm_train_act(x, gamma, beta, eps, false)?.output)
}

/// [`batch_norm_train`], followed by a ReLU when `relu` is set, with the batch statistics it used.
/// On the CPU and CUDA kernels the ReLU's gradient passes where its output is positive, as
/// PyTorch's does; elsewhere it is candle's ReLU, whose gradient also passes where the normalised
/// value is 0.
pub fn batch_norm_train_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrainOutput> {
    let (_, c, _, _) = x.dims4()?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        bail!(
            "batch_norm_train: gamma {:?} and beta {:?} must be ({c})",
            gamma.dims(),
            beta.dims()
        )
    }
    let same_types = x.dtype() == gamma.dtype() && x.dtype() == beta.dtype();
    if has_cpu_kernel(x) && same_types {
        let op = BatchNormTrain::new(eps, relu);
        let stats = op.stats.clone();
        let output = x
            .contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
        with_statistics(output, &stats)
    } else if has_cuda_kernel(x) && same_types {
        stacked_batch_norm_train_act(x, gamma, beta, eps, relu)
    } else {
        let output = batch_norm_train_composite(x, gamma, beta, eps)?;
        let output = if relu { output.relu()? } else { output };
        let x = x.detach();
        let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        let variance = x
            .broadcast_sub(&mean)?
            .sqr()?
            .mean_keepdim(0)?
            .mean_keepdim(2)?
            .mean_keepdim(3)?;
        Ok(BatchNormTrainOutput {
            output,
            mean: mean.flatten_all()?,
            variance: variance.flatten_all()?,
        })
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

/// Σ f(a, b, c) over three slices of one length, as two sums at once (f returns both terms), in
/// f64, each over [`LANES`] partial sums.
#[inline]
fn lane_sums<T: Float>(
    a: &[T],
    b: &[T],
    c: &[T],
    f: impl Fn(f64, f64, f64) -> (f64, f64),
) -> (f64, f64) {
    let (mut first, mut second) = ([0f64; LANES], [0f64; LANES]);
    let chunks = a
        .chunks_exact(LANES)
        .zip(b.chunks_exact(LANES))
        .zip(c.chunks_exact(LANES));
    for ((a, b), c) in chunks {
        for lane in 0..LANES {
            let (u, v) = f(a[lane].as_f64(), b[lane].as_f64(), c[lane].as_f64());
            first[lane] += u;
            second[lane] += v;
        }
    }
    let body = a.len() - a.len() % LANES;
    let mut tail = (0f64, 0f64);
    for i in body..a.len() {
        let (u, v) = f(a[i].as_f64(), b[i].as_f64(), c[i].as_f64());
        tail.0 += u;
        tail.1 += v;
    }
    (
        first.iter().sum::<f64>() + tail.0,
        second.iter().sum::<f64>() + tail.1,
    )
}

/// One channel's batch statistics.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelStats {
    pub(super) mean: f64,
    /// Biased: the mean squared deviation.
    pub(super) variance: f64,
}

impl ChannelStats {
    /// 1/√(var + eps).
    fn inverse_std(&self, eps: f64) -> f64 {
        1.0 / (self.variance + eps).sqrt()
    }
}

/// The planes of channel `ch` in an (N, C, plane) buffer.
fn channel_planes<T>(
    x: &[T],
    n: usize,
    c: usize,
    ch: usize,
    plane: usize,
) -> impl Iterator<Item = &[T]> {
    (0..n).map(move |b| &x[(b * c + ch) * plane..(b * c + ch + 1) * plane])
}

/// Every channel's mean and biased variance, in f64, two passes (mean, then squared deviations),
/// one channel per task.
pub(super) fn channel_stats<T: Float>(
    x: &[T],
    n: usize,
    c: usize,
    plane: usize,
) -> Vec<ChannelStats> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let count = (n * plane) as f64;
            let planes = || channel_planes(x, n, c, ch, plane);
            let mean = planes().map(|p| lane_sum(p, |v| v)).sum::<f64>() / count;
            let variance = planes()
                .map(|p| lane_sum(p, |v| (v - mean) * (v - mean)))
                .sum::<f64>()
                / count;
            ChannelStats { mean, variance }
        })
        .collect()
}

/// [`channel_stats`] for f32 on `fastscnn-cpu`'s vectorised sums: the same two passes.
fn channel_stats_f32(x: &[f32], n: usize, c: usize, plane: usize) -> Vec<ChannelStats> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let count = (n * plane) as f64;
            let (mut sum, mut squares) = (0f64, 0f64);
            for p in channel_planes(x, n, c, ch, plane) {
                batch_norm_moment(p, 0.0, 1, &mut sum);
            }
            let mean = sum / count;
            for p in channel_planes(x, n, c, ch, plane) {
                batch_norm_moment(p, mean, 2, &mut squares);
            }
            ChannelStats {
                mean,
                variance: squares / count,
            }
        })
        .collect()
}

/// `len` f32 values whose planes of `plane` `fill` writes in parallel (its arguments: the plane's
/// index, its memory), into memory not written before ([`output_vec`]'s): no pass clears it first.
///
/// # Safety
/// `fill` must write every element of the plane it is given.
unsafe fn written_planes(
    len: usize,
    plane: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = output_vec::<f32>(len);
    if plane > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, dst)| fill(i, dst));
    }
    // SAFETY: the planes cover all `len` elements (none when `plane` is 0, for `len` is then 0
    // too), each of which the caller's `fill` wrote.
    unsafe { out.set_len(if plane > 0 { len } else { 0 }) };
    out
}

/// The output of an op that ran [`BatchNormTrain`], with the statistics it filled.
pub(super) fn with_statistics(
    output: Tensor,
    stats: &OnceLock<Vec<ChannelStats>>,
) -> Result<BatchNormTrainOutput> {
    let Some(stats) = stats.get() else {
        bail!("batch_norm_train: the kernel left no statistics")
    };
    let column = |values: Vec<f64>| Tensor::from_vec(values, stats.len(), output.device());
    Ok(BatchNormTrainOutput {
        mean: column(stats.iter().map(|s| s.mean).collect())?,
        variance: column(stats.iter().map(|s| s.variance).collect())?,
        output,
    })
}

/// The forward op: arguments (x, gamma, beta); fills `stats` for the caller and the backward pass.
pub(super) struct BatchNormTrain {
    eps: f64,
    relu: bool,
    pub(super) stats: Arc<OnceLock<Vec<ChannelStats>>>,
}

impl BatchNormTrain {
    pub(super) fn new(eps: f64, relu: bool) -> Self {
        Self {
            eps,
            relu,
            stats: Arc::new(OnceLock::new()),
        }
    }
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
        let stats = self.stats.get_or_init(|| channel_stats(x, n, c, plane));
        let mut out = vec![T::zero(); x.len()];
        if plane > 0 {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let ch = i % c;
                let scale = stats[ch].inverse_std(self.eps) * gamma[ch].as_f64();
                let shift = beta[ch].as_f64() - stats[ch].mean * scale;
                let (scale, shift) = (T::of_f64(scale), T::of_f64(shift));
                let src = &x[i * plane..(i + 1) * plane];
                if self.relu {
                    for (o, &v) in dst.iter_mut().zip(src) {
                        let y = v * scale + shift;
                        *o = if y > T::zero() { y } else { T::zero() };
                    }
                } else {
                    for (o, &v) in dst.iter_mut().zip(src) {
                        *o = v * scale + shift;
                    }
                }
            });
        }
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }

    /// The statistics and the normalisation on `fastscnn-cpu`'s dispatched kernels, the same
    /// arithmetic as [`Kernel::run`].
    fn run_f32(
        &self,
        [x, gamma, beta]: [&[f32]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let stats = self.stats.get_or_init(|| channel_stats_f32(x, n, c, plane));
        // SAFETY: `batch_norm_normalize` writes every element of its plane.
        let out = unsafe {
            written_planes(x.len(), plane, |i, dst| {
                let ch = i % c;
                let scale = stats[ch].inverse_std(self.eps) * gamma[ch] as f64;
                let shift = beta[ch] as f64 - stats[ch].mean * scale;
                let src = &x[i * plane..(i + 1) * plane];
                batch_norm_normalize(src, scale as f32, shift as f32, self.relu, dst);
            })
        };
        Ok((CpuStorage::F32(out), shape.clone()))
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

    /// With dy the output's gradient through the ReLU (zero where the output is not positive),
    /// x̂ the normalised input and M the count per channel:
    /// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ/σ · (dy − dβ/M − x̂·dγ/M).
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(stats) = self.stats.get() else {
            bail!("batch-norm-train: backward pass without a forward one")
        };
        let grad = grad_res.contiguous()?;
        let output = res.contiguous()?;
        let mode = GradMode {
            stats: stats.clone(),
            eps: self.eps,
            relu: self.relu,
        };
        // f64 whatever the input's type: the sums feed the input gradient unrounded.
        let sums = x.apply_op3_no_bwd(&grad, &output, &BatchNormGradSums(mode.clone()))?;
        let sums_values: Vec<f64> = sums.flatten_all()?.to_vec1()?;
        let gamma_values: Vec<f64> = gamma.to_dtype(DType::F64)?.to_vec1()?;
        let grad_x = x.apply_op3_no_bwd(
            &grad,
            &output,
            &BatchNormGradInput {
                mode,
                gamma: gamma_values,
                sums: sums_values,
            },
        )?;
        let grad_beta = sums.get(0)?.to_dtype(gamma.dtype())?;
        let grad_gamma = sums.get(1)?.to_dtype(gamma.dtype())?;
        Ok((Some(grad_x), Some(grad_gamma), Some(grad_beta)))
    }
}

/// What both backward kernels share: the forward's statistics and options.
#[derive(Clone)]
struct GradMode {
    stats: Vec<ChannelStats>,
    eps: f64,
    relu: bool,
}

impl GradMode {
    /// The output gradient `g` through the ReLU, whose output was `y`.
    #[inline]
    fn through_relu(&self, g: f64, y: f64) -> f64 {
        if !self.relu || y > 0.0 {
            g
        } else {
            0.0
        }
    }
}

/// (2, C) in f64: per channel Σ dy and Σ dy·x̂. Arguments (x, dy, output).
struct BatchNormGradSums(GradMode);

impl Kernel<3> for BatchNormGradSums {
    const NAME: &'static str = "batch-norm-grad-sums";

    fn run<T: Float>(
        &self,
        [x, dy, y]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let mode = &self.0;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let ChannelStats { mean, .. } = mode.stats[ch];
                let (mut sum_dy, mut sum_dy_centred) = (0f64, 0f64);
                let planes = channel_planes(x, n, c, ch, plane)
                    .zip(channel_planes(dy, n, c, ch, plane))
                    .zip(channel_planes(y, n, c, ch, plane));
                for ((x, dy), y) in planes {
                    let (g, gc) = lane_sums(x, dy, y, |v, g, y| {
                        let g = mode.through_relu(g, y);
                        (g, g * (v - mean))
                    });
                    sum_dy += g;
                    sum_dy_centred += gc;
                }
                let inv = mode.stats[ch].inverse_std(mode.eps);
                (sum_dy, sum_dy_centred * inv)
            })
            .collect();
        let mut out: Vec<f64> = sums.iter().map(|s| s.0).collect();
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, c))))
    }

    /// The f32 sums on `fastscnn-cpu`'s vectorised kernel: [`Kernel::run`]'s terms, summed over
    /// its own number of partial sums.
    fn run_f32(
        &self,
        [x, dy, y]: [&[f32]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let mode = &self.0;
        let sums: Vec<[f64; 2]> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut sums = [0f64; 2];
                let planes = channel_planes(x, n, c, ch, plane)
                    .zip(channel_planes(dy, n, c, ch, plane))
                    .zip(channel_planes(y, n, c, ch, plane));
                for ((x, dy), y) in planes {
                    batch_norm_grad_sums(x, dy, y, mode.stats[ch].mean, mode.relu, &mut sums);
                }
                [sums[0], sums[1] * mode.stats[ch].inverse_std(mode.eps)]
            })
            .collect();
        let mut out: Vec<f64> = sums.iter().map(|s| s[0]).collect();
        out.extend(sums.iter().map(|s| s[1]));
        Ok((CpuStorage::F64(out), Shape::from((2, c))))
    }
}

forward_only_op!(BatchNormGradSums, 3);

/// dx from x, dy, the output and the per-channel sums. Arguments (x, dy, output).
struct BatchNormGradInput {
    mode: GradMode,
    gamma: Vec<f64>,
    /// Σ dy for every channel, then Σ dy·x̂.
    sums: Vec<f64>,
}

impl Kernel<3> for BatchNormGradInput {
    const NAME: &'static str = "batch-norm-grad-input";

    fn run<T: Float>(
        &self,
        [x, dy, y]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let count = (n * plane) as f64;
        let mode = &self.mode;
        let mut out = vec![T::zero(); x.len()];
        if plane > 0 {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let ch = i % c;
                let InputGradTerms {
                    mean,
                    k,
                    mean_dy,
                    slope,
                } = self.terms(ch, c, count);
                let range = i * plane..(i + 1) * plane;
                for (((o, &g), &v), &y) in dst
                    .iter_mut()
                    .zip(&dy[range.clone()])
                    .zip(&x[range.clone()])
                    .zip(&y[range])
                {
                    let g = mode.through_relu(g.as_f64(), y.as_f64());
                    *o = T::of_f64(k * (g - mean_dy) - slope * (v.as_f64() - mean));
                }
            });
        }
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }

    /// On `fastscnn-cpu`'s kernel under the dispatched target features, the same arithmetic as
    /// [`Kernel::run`].
    fn run_f32(
        &self,
        [x, dy, y]: [&[f32]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let count = (n * plane) as f64;
        // SAFETY: `batch_norm_input_grad` writes every element of its plane.
        let out = unsafe {
            written_planes(x.len(), plane, |i, dst| {
                let range = i * plane..(i + 1) * plane;
                let terms = self.terms(i % c, c, count);
                let (x, dy, y) = (&x[range.clone()], &dy[range.clone()], &y[range]);
                batch_norm_input_grad(x, dy, y, terms, self.mode.relu, dst);
            })
        };
        Ok((CpuStorage::F32(out), shape.clone()))
    }
}

impl BatchNormGradInput {
    /// The per-channel terms of `dx = k·(dy − mean_dy) − slope·(x − mean)`.
    fn terms(&self, ch: usize, c: usize, count: f64) -> InputGradTerms {
        let mode = &self.mode;
        let inv = mode.stats[ch].inverse_std(mode.eps);
        let k = self.gamma[ch] * inv;
        InputGradTerms {
            mean: mode.stats[ch].mean,
            k,
            mean_dy: self.sums[ch] / count,
            slope: k * inv * self.sums[c + ch] / count,
        }
    }
}

forward_only_op!(BatchNormGradInput, 3);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};

    /// Odd plane sizes, so the partial sums' tails are summed too.
    fn inputs(dtype: DType) -> (Tensor, Tensor, Tensor) {
        let x = random_tensor(&[3, 4, 5, 7], 1)
            .unwrap()
            .affine(3.0, 1.5)
            .unwrap();
        let gamma = random_tensor(&[4], 2).unwrap();
        let beta = random_tensor(&[4], 3).unwrap();
        let cast = |t: Tensor| t.to_dtype(dtype).unwrap();
        (cast(x), cast(gamma), cast(beta))
    }

    #[test]
    fn output_and_statistics_match_the_composite_with_and_without_relu() {
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let (x, gamma, beta) = inputs(dtype);
            let reference = batch_norm_train_composite(&x, &gamma, &beta, 1e-5).unwrap();
            let x64 = x.to_dtype(DType::F64).unwrap();
            let mean = x64.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap();
            let mean = mean.mean_keepdim(3).unwrap();
            let variance = x64.broadcast_sub(&mean).unwrap().sqr().unwrap();
            let variance = variance.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap();
            let variance = variance.mean_keepdim(3).unwrap().flatten_all().unwrap();
            for relu in [false, true] {
                let fused = batch_norm_train_act(&x, &gamma, &beta, 1e-5, relu).unwrap();
                let expected = if relu {
                    reference.relu().unwrap()
                } else {
                    reference.clone()
                };
                let err = max_abs_diff(&fused.output, &expected);
                assert!(err < tolerance, "{dtype:?} relu {relu}: {err}");
                assert!(max_abs_diff(&fused.mean, &mean.flatten_all().unwrap()) < 1e-12);
                assert!(max_abs_diff(&fused.variance, &variance) < 1e-12);
            }
        }
    }

    #[test]
    fn relu_gradient_passes_only_where_the_output_is_positive() {
        // Channel 0 holds -2..=2 in each image: its mean is 0 exactly, and with gamma 1 and beta
        // 0 the pixels holding 0 normalise to exactly 0, where the gradient must not pass (as
        // PyTorch's ReLU; candle's passes it there). The other channels are random.
        let (x, gamma, beta) = inputs(DType::F64);
        let ramp: Vec<f64> = (0..35).map(|i| (i % 5) as f64 - 2.0).collect();
        let ramp = Tensor::from_vec(ramp, (1, 1, 5, 7), x.device()).unwrap();
        let ramp = Tensor::cat(&[&ramp, &ramp, &ramp], 0).unwrap();
        let x = Tensor::cat(&[&ramp, &x.narrow(1, 1, 3).unwrap()], 1).unwrap();
        let first = |t: &Tensor, v: f64| {
            Tensor::cat(
                &[
                    &Tensor::new(&[v], t.device()).unwrap(),
                    &t.narrow(0, 1, 3).unwrap(),
                ],
                0,
            )
            .unwrap()
        };
        let (gamma, beta) = (first(&gamma, 1.0), first(&beta, 0.0));
        let x = candle_core::Var::from_tensor(&x).unwrap();
        let fused = batch_norm_train_act(x.as_tensor(), &gamma, &beta, 1e-5, true).unwrap();
        let grads = fused.output.sum_all().unwrap().backward().unwrap();
        let normalised = batch_norm_train_composite(x.as_tensor(), &gamma, &beta, 1e-5).unwrap();
        let zeros = normalised.eq(0.0).unwrap().to_dtype(DType::F64).unwrap();
        assert!(zeros.sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.0);
        let mask = normalised.gt(0.0).unwrap().to_dtype(DType::F64).unwrap();
        let masked = normalised.mul(&mask).unwrap();
        let reference = masked.sum_all().unwrap().backward().unwrap();
        let err = max_abs_diff(grads.get(&x).unwrap(), reference.get(&x).unwrap());
        assert!(err < 1e-12, "{err}");
    }
}
