//! Training BatchNorm with its per-channel values stacked in one (rows, C) tensor on the input's
//! device: γ, β, the batch mean and the biased batch variance, and for the input gradient the
//! two sums of the backward pass. This is the form CUDA runs: the CPU op keeps its statistics
//! and sums in host memory, which on a GPU would stop the device at every layer to copy them
//! over; here every value stays where the map is, and the op's inputs stay within candle's
//! three per custom op.
//!
//! CUDA runs the kernels of `stacked_batch_norm.cu` (statistics and sums in f64, the per-channel
//! terms in f64 rounded to f32, the element-wise passes in f32); the CPU runs this form in f64,
//! the reference the CUDA kernels and the rest of this form are tested against.

use candle_core::{CpuStorage, Result, Shape, Tensor};

use super::batch_norm::channel_stats;
use super::{forward_only_op, kernel_forwards, BatchNormTrainOutput, Float, Kernel};

/// [`super::batch_norm_train_act`] in the stacked form: `x` (N, C, H, W), `gamma` and `beta` (C)
/// of `x`'s type. The statistics come back in `x`'s type.
pub(super) fn stacked_batch_norm_train_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrainOutput> {
    let x = x.contiguous()?;
    let moments = x.apply_op1_no_bwd(&ChannelMoments)?;
    let params = Tensor::cat(&[&gamma.unsqueeze(0)?, &beta.unsqueeze(0)?, &moments], 0)?;
    let output = x.apply_op2(&params, StackedBatchNorm { eps, relu })?;
    Ok(BatchNormTrainOutput {
        output,
        mean: moments.get(0)?,
        variance: moments.get(1)?,
    })
}

/// Row `row` of a stacked (rows, C) slice.
fn row<T>(params: &[T], c: usize, row: usize) -> &[T] {
    &params[row * c..(row + 1) * c]
}

/// A channel's normalisation from its stacked values (γ, β, mean, variance): 1/σ in f64 and
/// the scale γ/σ and shift β − μ·γ/σ rounded to the map's type, as the CUDA kernels compute
/// them.
struct Channel<T> {
    mean: f64,
    inverse_std: f64,
    gamma: f64,
    scale: T,
    shift: T,
}

impl<T: Float> Channel<T> {
    fn new(params: &[T], c: usize, ch: usize, eps: f64) -> Self {
        let [gamma, beta, mean, variance] = [0, 1, 2, 3].map(|r| params[r * c + ch].to_f64());
        let inverse_std = 1.0 / (variance + eps).sqrt();
        let scale = inverse_std * gamma;
        Self {
            mean,
            inverse_std,
            gamma,
            scale: T::from_f64(scale),
            shift: T::from_f64(beta - mean * scale),
        }
    }

    /// The output gradient `dy` through the ReLU, for input `x`.
    fn through_relu(&self, dy: T, x: T, relu: bool) -> f64 {
        if !relu || x * self.scale + self.shift > T::zero() {
            dy.to_f64()
        } else {
            0.0
        }
    }
}

/// Every element of channel `ch` of an (N, C, plane) map, by index.
fn channel_indices(n: usize, c: usize, plane: usize, ch: usize) -> impl Iterator<Item = usize> {
    (0..n).flat_map(move |b| (b * c + ch) * plane..(b * c + ch + 1) * plane)
}

/// (2, C): each channel's mean and biased variance, on the CPU those the fused op normalises by.
/// Argument: x.
struct ChannelMoments;

impl Kernel<1> for ChannelMoments {
    const NAME: &'static str = "channel-moments";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let stats = channel_stats(x, n, c, h * w);
        let out = (stats.iter().map(|s| s.mean))
            .chain(stats.iter().map(|s| s.variance))
            .map(T::from_f64)
            .collect();
        Ok((T::to_cpu_storage_owned(out), Shape::from((2, c))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x]: [(&candle_core::CudaStorage, &candle_core::Layout); 1],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let c = x.1.shape().dims4()?.1;
        Ok((cuda::moments(x)?, Shape::from((2, c))))
    }
}

forward_only_op!(ChannelMoments, 1);

/// The normalisation (and ReLU). Arguments: (x, the (4, C) stack γ, β, mean, variance).
struct StackedBatchNorm {
    eps: f64,
    relu: bool,
}

impl Kernel<2> for StackedBatchNorm {
    const NAME: &'static str = "stacked-batch-norm";

    fn run<T: Float>(
        &self,
        [x, params]: [&[T]; 2],
        [shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = shape.dims4()?;
        let plane = (h * w).max(1);
        let channels: Vec<Channel<T>> = (0..c)
            .map(|ch| Channel::new(params, c, ch, self.eps))
            .collect();
        let out = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let channel = &channels[i / plane % c];
                let y = v * channel.scale + channel.shift;
                if !self.relu || y > T::zero() {
                    y
                } else {
                    T::zero()
                }
            })
            .collect();
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x, params]: [(&candle_core::CudaStorage, &candle_core::Layout); 2],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = cuda::normalize(x, params, self.eps, self.relu)?;
        Ok((out, x.1.shape().clone()))
    }
}

impl candle_core::CustomOp2 for StackedBatchNorm {
    kernel_forwards!(2);

    /// With g the output's gradient through the ReLU, x̂ the normalised input and M the count
    /// per channel: dβ = Σ g, dγ = Σ g·x̂, dx = γ/σ · (g − dβ/M − x̂·dγ/M); the statistics rows
    /// of the stack get no gradient (they were computed without one).
    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let (eps, relu) = (self.eps, self.relu);
        let sums = x.apply_op3_no_bwd(&grad, params, &StackedGradSums { eps, relu })?;
        let stack = Tensor::cat(&[params, &sums], 0)?;
        let grad_x = x.apply_op3_no_bwd(&grad, &stack, &StackedInputGrad { eps, relu })?;
        let grad_params = Tensor::cat(
            &[
                &sums.narrow(0, 1, 1)?,
                &sums.narrow(0, 0, 1)?,
                &sums.zeros_like()?,
            ],
            0,
        )?;
        Ok((Some(grad_x), Some(grad_params)))
    }
}

/// (2, C): Σ g and Σ g·x̂ per channel. Arguments: (x, dy, the (4, C) stack).
struct StackedGradSums {
    eps: f64,
    relu: bool,
}

impl Kernel<3> for StackedGradSums {
    const NAME: &'static str = "stacked-batch-norm-grad-sums";

    fn run<T: Float>(
        &self,
        [x, dy, params]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let mut out = vec![T::zero(); 2 * c];
        for ch in 0..c {
            let channel = Channel::new(params, c, ch, self.eps);
            let (mut sum, mut centred) = (0f64, 0f64);
            for i in channel_indices(n, c, plane, ch) {
                let g = channel.through_relu(dy[i], x[i], self.relu);
                sum += g;
                centred += g * (x[i].to_f64() - channel.mean);
            }
            out[ch] = T::from_f64(sum);
            out[c + ch] = T::from_f64(centred * channel.inverse_std);
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((2, c))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x, dy, params]: [(&candle_core::CudaStorage, &candle_core::Layout); 3],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let c = x.1.shape().dims4()?.1;
        let sums = cuda::grad_sums(x, dy, params, self.eps, self.relu)?;
        Ok((sums, Shape::from((2, c))))
    }
}

forward_only_op!(StackedGradSums, 3);

/// dx. Arguments: (x, dy, the (6, C) stack: γ, β, mean, variance, Σ g, Σ g·x̂).
struct StackedInputGrad {
    eps: f64,
    relu: bool,
}

impl Kernel<3> for StackedInputGrad {
    const NAME: &'static str = "stacked-batch-norm-input-grad";

    fn run<T: Float>(
        &self,
        [x, dy, params]: [&[T]; 3],
        [shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = (h * w).max(1);
        let count = (n * h * w) as f64;
        let channels: Vec<Channel<T>> = (0..c)
            .map(|ch| Channel::new(params, c, ch, self.eps))
            .collect();
        let (sum, centred) = (row(params, c, 4), row(params, c, 5));
        let out = x
            .iter()
            .zip(dy)
            .enumerate()
            .map(|(i, (&v, &d))| {
                let ch = i / plane % c;
                let channel = &channels[ch];
                let g = channel.through_relu(d, v, self.relu);
                let xhat = (v.to_f64() - channel.mean) * channel.inverse_std;
                let mean_g = sum[ch].to_f64() / count;
                let mean_gx = centred[ch].to_f64() / count;
                T::from_f64(channel.gamma * channel.inverse_std * (g - mean_g - xhat * mean_gx))
            })
            .collect();
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x, dy, params]: [(&candle_core::CudaStorage, &candle_core::Layout); 3],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let grad = cuda::input_grad(x, dy, params, self.eps, self.relu)?;
        Ok((grad, x.1.shape().clone()))
    }
}

forward_only_op!(StackedInputGrad, 3);

/// The launches of `stacked_batch_norm.cu`'s kernels.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{CudaStorage, Result};

    use crate::ops::cuda::{
        channel_splits, dims, elementwise, input, output, per_channel, ptx_module, reduction,
        storage, Input, Module,
    };

    static MODULE: Module = ptx_module!("stacked_batch_norm");

    /// The f64 partial sums of a channel reduction over maps of `count` values per channel:
    /// two for each of `splits` stretches of each channel, and `splits`.
    fn partials(device: &CudaDevice, c: usize, count: usize) -> Result<(CudaSlice<f64>, u32)> {
        let splits = channel_splits(count);
        // SAFETY: the partial-sum kernel launched next writes every element.
        Ok((
            unsafe { output::<f64>(device, c * splits as usize * 2) }?,
            splits,
        ))
    }

    /// Each channel's mean and biased variance, (2, C).
    pub(super) fn moments((xs, xl): Input) -> Result<CudaStorage> {
        const OP: &str = "channel-moments";
        let (n, c, h, w) = xl.shape().dims4()?;
        let device = &xs.device;
        let x = input::<f32>(xs, xl, OP)?;
        let [n32, c32, plane32] = dims([n, c, h * w], OP)?;
        let (partials, splits) = partials(device, c, n * h * w)?;
        let (func, stream) = MODULE.function(device, "batch_norm_partial_moments_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x)
            .arg(&partials)
            .arg(&n32)
            .arg(&c32)
            .arg(&plane32);
        // SAFETY: the arguments match the kernel's parameters in order and type; each of the
        // (splits, C) blocks writes its two partials.
        unsafe { args.launch(reduction((splits, c32), OP)?) }.w()?;
        // SAFETY: the kernel launched next writes every element.
        let moments = unsafe { output::<f32>(device, 2 * c) }?;
        let (func, stream) = MODULE.function(device, "batch_norm_finish_moments_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&partials).arg(&moments);
        args.arg(&n32).arg(&c32).arg(&plane32).arg(&splits);
        // SAFETY: as above; one thread per channel writes its two values.
        unsafe { args.launch(per_channel(c)) }.w()?;
        Ok(storage(moments, device))
    }

    /// x·scale + shift per channel, through a ReLU if `relu`: the channels' scale and shift
    /// first (f64 once per channel), then the element-wise pass in f32.
    pub(super) fn normalize(
        (xs, xl): Input,
        (ps, pl): Input,
        eps: f64,
        relu: bool,
    ) -> Result<CudaStorage> {
        const OP: &str = "stacked-batch-norm";
        let (n, c, h, w) = xl.shape().dims4()?;
        let device = &xs.device;
        let x = input::<f32>(xs, xl, OP)?;
        let params = input::<f32>(ps, pl, OP)?;
        let dims = dims([n, c, h * w], OP)?;
        // SAFETY: the kernel launched next writes every element.
        let coefficients = unsafe { output::<f32>(device, 2 * c) }?;
        let (func, stream) = MODULE.function(device, "batch_norm_coefficients_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&params).arg(&coefficients).arg(&dims[1]).arg(&eps);
        // SAFETY: the arguments match the kernel's parameters in order and type; one thread per
        // channel writes its two values.
        unsafe { args.launch(per_channel(c)) }.w()?;
        let len = n * c * h * w;
        // SAFETY: the kernel launched next writes every element.
        let out = unsafe { output::<f32>(device, len) }?;
        let relu = i32::from(relu);
        let (func, stream) = MODULE.function(device, "batch_norm_apply_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&coefficients).arg(&out);
        for d in &dims {
            args.arg(d);
        }
        args.arg(&relu);
        // SAFETY: the arguments match the kernel's parameters in order and type; the views hold
        // the element counts the dimensions give.
        unsafe { args.launch(elementwise(len)) }.w()?;
        Ok(storage(out, device))
    }

    /// (2, C): Σ g and Σ g·x̂ per channel.
    pub(super) fn grad_sums(
        (xs, xl): Input,
        (gs, gl): Input,
        (ps, pl): Input,
        eps: f64,
        relu: bool,
    ) -> Result<CudaStorage> {
        const OP: &str = "stacked-batch-norm-grad-sums";
        let (n, c, h, w) = xl.shape().dims4()?;
        let device = &xs.device;
        let x = input::<f32>(xs, xl, OP)?;
        let dy = input::<f32>(gs, gl, OP)?;
        let params = input::<f32>(ps, pl, OP)?;
        let [n32, c32, plane32] = dims([n, c, h * w], OP)?;
        let relu = i32::from(relu);
        let (partials, splits) = partials(device, c, n * h * w)?;
        let (func, stream) = MODULE.function(device, "batch_norm_partial_grad_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&dy).arg(&params).arg(&partials);
        args.arg(&n32).arg(&c32).arg(&plane32).arg(&eps).arg(&relu);
        // SAFETY: as in `moments`.
        unsafe { args.launch(reduction((splits, c32), OP)?) }.w()?;
        // SAFETY: the kernel launched next writes every element.
        let sums = unsafe { output::<f32>(device, 2 * c) }?;
        let (func, stream) = MODULE.function(device, "batch_norm_finish_grad_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&partials).arg(&params).arg(&sums);
        args.arg(&c32).arg(&splits).arg(&eps);
        // SAFETY: as in `moments`.
        unsafe { args.launch(per_channel(c)) }.w()?;
        Ok(storage(sums, device))
    }

    /// dx from x, dy and the (6, C) stack: the per-channel terms first (f64 once per channel),
    /// then the element-wise pass in f32.
    pub(super) fn input_grad(
        (xs, xl): Input,
        (gs, gl): Input,
        (ps, pl): Input,
        eps: f64,
        relu: bool,
    ) -> Result<CudaStorage> {
        const OP: &str = "stacked-batch-norm-input-grad";
        let (n, c, h, w) = xl.shape().dims4()?;
        let device = &xs.device;
        let x = input::<f32>(xs, xl, OP)?;
        let dy = input::<f32>(gs, gl, OP)?;
        let params = input::<f32>(ps, pl, OP)?;
        let dims = dims([n, c, h * w], OP)?;
        // SAFETY: the kernel launched next writes every element.
        let terms = unsafe { output::<f32>(device, 6 * c) }?;
        let count = (n * h * w) as f64;
        let (func, stream) = MODULE.function(device, "batch_norm_grad_coefficients_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&params)
            .arg(&terms)
            .arg(&dims[1])
            .arg(&count)
            .arg(&eps);
        // SAFETY: the arguments match the kernel's parameters in order and type; one thread per
        // channel writes its six values.
        unsafe { args.launch(per_channel(c)) }.w()?;
        let len = n * c * h * w;
        // SAFETY: the kernel launched next writes every element.
        let out = unsafe { output::<f32>(device, len) }?;
        let relu = i32::from(relu);
        let (func, stream) = MODULE.function(device, "batch_norm_input_grad_f32")?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&dy).arg(&terms).arg(&out);
        for d in &dims {
            args.arg(d);
        }
        args.arg(&relu);
        // SAFETY: as in `normalize`.
        unsafe { args.launch(elementwise(len)) }.w()?;
        Ok(storage(out, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batch_norm_train_act;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    /// The stacked form on the CPU (its f64 reference kernels) against the fused CPU op: output,
    /// statistics and the gradients of x, γ and β, with and without the ReLU.
    #[test]
    fn equals_the_fused_op_forward_and_backward() {
        for relu in [false, true] {
            let x = Var::from_tensor(
                &random_tensor(&[2, 3, 5, 7], 1)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap(),
            )
            .unwrap();
            let gamma = Var::from_tensor(
                &(random_tensor(&[3], 2)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    + 1.0)
                    .unwrap(),
            )
            .unwrap();
            let beta = Var::from_tensor(
                &random_tensor(&[3], 3)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap(),
            )
            .unwrap();
            let weights = random_tensor(&[2, 3, 5, 7], 4)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let run = |stacked: bool| {
                let out = if stacked {
                    stacked_batch_norm_train_act(&x, &gamma, &beta, 1e-5, relu).unwrap()
                } else {
                    batch_norm_train_act(&x, &gamma, &beta, 1e-5, relu).unwrap()
                };
                let loss = (&out.output * &weights).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let grad = |v: &Var| grads.get(v).unwrap().clone();
                (out, [grad(&x), grad(&gamma), grad(&beta)])
            };
            let (stacked, stacked_grads) = run(true);
            let (fused, fused_grads) = run(false);
            assert!(
                max_abs_diff(&stacked.output, &fused.output) < 1e-12,
                "relu {relu}"
            );
            assert!(max_abs_diff(&stacked.mean, &fused.mean) < 1e-12);
            assert!(max_abs_diff(&stacked.variance, &fused.variance) < 1e-12);
            for (i, (a, b)) in stacked_grads.iter().zip(&fused_grads).enumerate() {
                let diff = max_abs_diff(a, b);
                assert!(diff < 1e-10, "relu {relu}, gradient {i}: {diff}");
            }
        }
    }
}
