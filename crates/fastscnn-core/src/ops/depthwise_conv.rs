//! Depthwise 3x3 convolution, padding 1, stride 1 or 2.
//!
//! candle runs a grouped convolution as one im2col convolution per group, which for a depthwise
//! layer means one tiny GEMM per channel. Every depthwise layer of Fast-SCNN is 3x3 with padding 1,
//! so a direct kernel over each channel plane is both simpler and much faster
//! (`cargo bench -p fastscnn-benches --bench depthwise`). The kernels are `fastscnn-cpu`'s: its
//! vectorised f32 ones for the forward pass, those written for f32 and f64 for f64 and the
//! gradients; this is candle's side of the op and its composite reference. On CUDA (f32, f16,
//! bf16) the op runs the kernels of `depthwise_conv.cu` beside it, the forward with the bias and
//! ReLU of a folded BatchNorm fused in for inference ([`depthwise_conv2d_bias_act`]).

use candle_core::{bail, CpuStorage, CustomOp2, Result, Shape, Tensor};
use fastscnn_cpu::{
    depthwise_forward, depthwise_input_grad, depthwise_weight_grad, turned_kernels, DepthwiseConv,
};

#[cfg(feature = "cuda")]
use super::cuda::for_element;
use super::{
    add_channel_bias, depthwise_output_size, forward_only_op, has_cuda_element_kernel, has_kernel,
    kernel_forwards, Float, Kernel,
};

/// Depthwise 3x3 convolution with padding 1: `x` is (N, C, H, W), `weight` is (C, 1, 3, 3).
///
/// Runs the direct kernels on CPU for f32/f64 and on CUDA for f32/f16/bf16, candle's grouped
/// convolution elsewhere.
pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let op = depthwise_op(x, weight, stride)?;
    if has_kernel(x) {
        let x = x.contiguous()?;
        let weight = weight.contiguous()?;
        x.apply_op2(&weight, op)
    } else {
        depthwise_conv2d_grouped(x, weight, stride)
    }
}

/// `relu(depthwise_conv2d(x, weight, stride) + bias)` (the ReLU where `relu` is set), `bias` (C):
/// a depthwise layer with its BatchNorm folded in, for inference. On CUDA (f32, f16, bf16) one
/// kernel writes the result, with no gradient; elsewhere, or where an operand will be
/// differentiated, the three ops in turn.
pub fn depthwise_conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    relu: bool,
) -> Result<Tensor> {
    check_shapes(x, weight, stride)?;
    let c = x.dim(1)?;
    if bias.dims() != [c] || bias.dtype() != x.dtype() {
        bail!(
            "depthwise_conv2d_bias_act: bias must be ({c}) {:?}, got {:?} {:?}",
            x.dtype(),
            bias.dims(),
            bias.dtype()
        )
    }
    let differentiated = x.track_op() || weight.track_op() || bias.track_op();
    if has_cuda_element_kernel(x) && !differentiated {
        x.contiguous()?.apply_op3_no_bwd(
            &weight.contiguous()?,
            &bias.contiguous()?,
            &DepthwiseConv3x3BiasAct { stride, relu },
        )
    } else {
        let y = add_channel_bias(&depthwise_conv2d(x, weight, stride)?, bias)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// The op of [`depthwise_conv2d`] for these operands, or its error for operands that do not fit.
pub(super) fn depthwise_op(x: &Tensor, weight: &Tensor, stride: usize) -> Result<DepthwiseConv3x3> {
    check_shapes(x, weight, stride)?;
    Ok(DepthwiseConv3x3 { stride })
}

/// The same convolution through candle's grouped conv2d: the fallback on other devices and the
/// reference the direct kernel is tested against.
pub fn depthwise_conv2d_grouped(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    check_shapes(x, weight, stride)?;
    let channels = x.dim(1)?;
    x.conv2d(weight, 1, stride, 1, channels)
}

fn check_shapes(x: &Tensor, weight: &Tensor, stride: usize) -> Result<()> {
    let (_, c, _, _) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 || kh != 3 || kw != 3 {
        bail!(
            "depthwise_conv2d: weight must be ({c}, 1, 3, 3) for {c} input channels, got {:?}",
            weight.dims()
        )
    }
    if !(stride == 1 || stride == 2) {
        bail!("depthwise_conv2d: stride must be 1 or 2, got {stride}")
    }
    if x.dtype() != weight.dtype() {
        bail!(
            "depthwise_conv2d: input is {:?} but weight is {:?}",
            x.dtype(),
            weight.dtype()
        )
    }
    Ok(())
}

pub(super) struct DepthwiseConv3x3 {
    stride: usize,
}

impl DepthwiseConv3x3 {
    /// The f32 forward on the inference engine's vectorised kernels (bias zero, no ReLU).
    fn forward_f32(
        &self,
        x: &[f32],
        x_shape: &Shape,
        weight: &[f32],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = x_shape.dims4()?;
        let conv = DepthwiseConv::new(weight.to_vec(), vec![0.0; c], c, self.stride, false);
        let (oh, ow) = conv.output_size(h, w);
        let mut out = vec![0f32; n * c * oh * ow];
        if !out.is_empty() {
            for (image, out) in x
                .chunks_exact(c * h * w)
                .zip(out.chunks_exact_mut(c * oh * ow))
            {
                conv.run(image, h, w, out);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// The forward on the kernel written for both float types: what f64 runs (f32 takes the
/// engine's kernels, `run_f32`).
impl Kernel<2> for DepthwiseConv3x3 {
    const NAME: &'static str = "depthwise-conv3x3";

    fn run<T: Float>(
        &self,
        [x, w]: [&[T]; 2],
        [x_shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, wd) = x_shape.dims4()?;
        let (oh, ow) = (
            depthwise_output_size(h, self.stride),
            depthwise_output_size(wd, self.stride),
        );
        let out = depthwise_forward(x, c, (h, wd), w, self.stride);
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, oh, ow))))
    }

    fn run_f32(
        &self,
        [x, w]: [&[f32]; 2],
        [x_shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        self.forward_f32(x, x_shape, w)
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x, w]: [(&candle_core::CudaStorage, &candle_core::Layout); 2],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        for_element!(
            x.0,
            Self::NAME,
            cuda::forward(x, w, None, self.stride, false)
        )
    }
}

/// The forward with a per-channel bias and an optional ReLU, for inference (no backward pass).
/// Arguments: (x, weight, bias).
struct DepthwiseConv3x3BiasAct {
    stride: usize,
    relu: bool,
}

impl Kernel<3> for DepthwiseConv3x3BiasAct {
    const NAME: &'static str = "depthwise-conv3x3-bias-act";

    fn run<T: Float>(
        &self,
        [x, w, bias]: [&[T]; 3],
        [x_shape, _, _]: [&Shape; 3],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, wd) = x_shape.dims4()?;
        let (oh, ow) = (
            depthwise_output_size(h, self.stride),
            depthwise_output_size(wd, self.stride),
        );
        let mut out = depthwise_forward(x, c, (h, wd), w, self.stride);
        if oh * ow > 0 {
            for (i, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
                for v in plane {
                    *v += bias[i % c];
                    if self.relu {
                        *v = if *v > T::zero() { *v } else { T::zero() };
                    }
                }
            }
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x, w, bias]: [(&candle_core::CudaStorage, &candle_core::Layout); 3],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        for_element!(
            x.0,
            Self::NAME,
            cuda::forward(x, w, Some(bias), self.stride, self.relu)
        )
    }
}

forward_only_op!(DepthwiseConv3x3BiasAct, 3);

impl CustomOp2 for DepthwiseConv3x3 {
    kernel_forwards!(2);

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, w) = x.dims4()?;
        let grad = grad_res.contiguous()?;
        let grad_x = grad.apply_op2_no_bwd(
            weight,
            &DepthwiseConv3x3InputGrad {
                stride: self.stride,
                h,
                w,
            },
        )?;
        let grad_weight = x.apply_op2_no_bwd(
            &grad,
            &DepthwiseConv3x3WeightGrad {
                stride: self.stride,
            },
        )?;
        Ok((Some(grad_x), Some(grad_weight)))
    }
}

/// Gradient of the depthwise convolution with respect to its input. Arguments: (grad_out,
/// weight).
struct DepthwiseConv3x3InputGrad {
    stride: usize,
    h: usize,
    w: usize,
}

impl Kernel<2> for DepthwiseConv3x3InputGrad {
    const NAME: &'static str = "depthwise-conv3x3-input-grad";

    fn run<T: Float>(
        &self,
        [g, k]: [&[T]; 2],
        [g_shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, oh, ow) = g_shape.dims4()?;
        let (h, w) = (self.h, self.w);
        let out = depthwise_input_grad(g, c, (oh, ow), (h, w), k, self.stride);
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, h, w))))
    }

    /// At stride 1 the gradient is the forward convolution with every kernel turned by 180°,
    /// which f32 runs on the engine's vectorised kernels.
    fn run_f32(&self, inputs: [&[f32]; 2], shapes: [&Shape; 2]) -> Result<(CpuStorage, Shape)> {
        let [g, k] = inputs;
        if self.stride == 1 {
            DepthwiseConv3x3 { stride: 1 }.forward_f32(g, shapes[0], &turned_kernels(k))
        } else {
            self.run(inputs, shapes)
        }
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [g, k]: [(&candle_core::CudaStorage, &candle_core::Layout); 2],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        for_element!(
            g.0,
            Self::NAME,
            cuda::input_grad(g, k, (self.h, self.w), self.stride)
        )
    }
}

forward_only_op!(DepthwiseConv3x3InputGrad, 2);

/// Gradient of the depthwise convolution with respect to its (C, 1, 3, 3) weight. Arguments:
/// (x, grad_out).
struct DepthwiseConv3x3WeightGrad {
    stride: usize,
}

impl Kernel<2> for DepthwiseConv3x3WeightGrad {
    const NAME: &'static str = "depthwise-conv3x3-weight-grad";

    fn run<T: Float>(
        &self,
        [x, g]: [&[T]; 2],
        [x_shape, g_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = x_shape.dims4()?;
        let (_, _, oh, ow) = g_shape.dims4()?;
        let out = depthwise_weight_grad(x, g, (n, c), (h, w), (oh, ow), self.stride);
        Ok((T::to_cpu_storage_owned(out), Shape::from((c, 1, 3, 3))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x, g]: [(&candle_core::CudaStorage, &candle_core::Layout); 2],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        for_element!(x.0, Self::NAME, cuda::weight_grad(x, g, self.stride))
    }
}

forward_only_op!(DepthwiseConv3x3WeightGrad, 2);

/// The launches of `depthwise_conv.cu`'s kernels.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Result, Shape};

    use crate::ops::cuda::{
        channel_splits, dims, elementwise, input, output, per_channel, ptx_module, reduction,
        storage, typed, Element, Input, Module,
    };
    use crate::ops::depthwise_output_size;

    static MODULE: Module = ptx_module!("depthwise_conv");

    /// The output of `x` (N, C, H, W) by `w` (C, 1, 3, 3), plus `bias` (C) if given, through a
    /// ReLU if `relu`.
    pub(super) fn forward<T: Element>(
        (xs, xl): Input,
        (ws, wl): Input,
        bias: Option<Input>,
        stride: usize,
        relu: bool,
    ) -> Result<(CudaStorage, Shape)> {
        const OP: &str = "depthwise-conv3x3";
        let (n, c, h, w) = xl.shape().dims4()?;
        let (oh, ow) = (
            depthwise_output_size(h, stride),
            depthwise_output_size(w, stride),
        );
        let device = &xs.device;
        let x = input::<T>(xs, xl, OP)?;
        let weight = input::<T>(ws, wl, OP)?;
        let bias = bias.map(|(s, l)| input::<T>(s, l, OP)).transpose()?;
        let len = n * c * oh * ow;
        // SAFETY: the kernel launched next writes every element.
        let out = unsafe { output::<T>(device, len) }?;
        let dims = dims([n, c, h, w, oh, ow, stride], OP)?;
        let relu = i32::from(relu);
        // The kernel reads no bias through a null pointer.
        let no_bias = 0u64;
        let (func, stream) = MODULE.function(device, &typed::<T>("depthwise3x3_forward"))?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&weight);
        match &bias {
            Some(bias) => args.arg(bias),
            None => args.arg(&no_bias),
        };
        args.arg(&out);
        for d in &dims {
            args.arg(d);
        }
        args.arg(&relu);
        // SAFETY: the arguments match the kernel's parameters in order and type; the views hold
        // the element counts the dimensions give.
        unsafe { args.launch(elementwise(len)) }.w()?;
        Ok((storage(out, device), Shape::from((n, c, oh, ow))))
    }

    /// The input gradient, (N, C, H, W) from the output gradient `g` and the weight `k`.
    pub(super) fn input_grad<T: Element>(
        (gs, gl): Input,
        (ks, kl): Input,
        (h, w): (usize, usize),
        stride: usize,
    ) -> Result<(CudaStorage, Shape)> {
        const OP: &str = "depthwise-conv3x3-input-grad";
        let (n, c, oh, ow) = gl.shape().dims4()?;
        let device = &gs.device;
        let g = input::<T>(gs, gl, OP)?;
        let k = input::<T>(ks, kl, OP)?;
        let len = n * c * h * w;
        // SAFETY: the kernel launched next writes every element.
        let out = unsafe { output::<T>(device, len) }?;
        let dims = dims([n, c, h, w, oh, ow, stride], OP)?;
        let (func, stream) = MODULE.function(device, &typed::<T>("depthwise3x3_input_grad"))?;
        let mut args = stream.launch_builder(&func);
        args.arg(&g).arg(&k).arg(&out);
        for d in &dims {
            args.arg(d);
        }
        // SAFETY: as in `forward`.
        unsafe { args.launch(elementwise(len)) }.w()?;
        Ok((storage(out, device), Shape::from((n, c, h, w))))
    }

    /// The (C, 1, 3, 3) weight gradient from the input `x` and the output gradient `g`: a grid
    /// of (split, channel) blocks sums nine f64 partials per stretch of each channel, then one
    /// thread per weight adds its channel's in order.
    pub(super) fn weight_grad<T: Element>(
        (xs, xl): Input,
        (gs, gl): Input,
        stride: usize,
    ) -> Result<(CudaStorage, Shape)> {
        const OP: &str = "depthwise-conv3x3-weight-grad";
        let (n, c, h, w) = xl.shape().dims4()?;
        let (_, _, oh, ow) = gl.shape().dims4()?;
        let device = &xs.device;
        let x = input::<T>(xs, xl, OP)?;
        let g = input::<T>(gs, gl, OP)?;
        let dims = dims([n, c, h, w, oh, ow, stride], OP)?;
        let splits = channel_splits(n * oh * ow);
        // SAFETY: the kernel launched next writes every element.
        let partials = unsafe { output::<f64>(device, c * splits as usize * 9) }?;
        let function = typed::<T>("depthwise3x3_weight_grad_partial");
        let (func, stream) = MODULE.function(device, &function)?;
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&g).arg(&partials);
        for d in &dims {
            args.arg(d);
        }
        // SAFETY: as in `forward`; each of the (splits, C) blocks writes its nine partials.
        unsafe { args.launch(reduction((splits, dims[1]), OP)?) }.w()?;
        // SAFETY: the kernel launched next writes every element.
        let out = unsafe { output::<T>(device, c * 9) }?;
        let function = typed::<T>("depthwise3x3_weight_grad_finish");
        let (func, stream) = MODULE.function(device, &function)?;
        let mut args = stream.launch_builder(&func);
        args.arg(&partials).arg(&out).arg(&dims[1]).arg(&splits);
        // SAFETY: as in `forward`; one thread per weight writes it.
        unsafe { args.launch(per_channel(c * 9)) }.w()?;
        Ok((storage(out, device), Shape::from((c, 1, 3, 3))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Device};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        random_tensor(shape, seed).unwrap()
    }

    #[test]
    fn hand_checked_sum_kernel() {
        // A 3x3 all-ones kernel over a 3x3 ramp sums each zero-padded neighbourhood.
        let x = Tensor::arange(1f32, 10., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 3))
            .unwrap();
        let w = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let y = depthwise_conv2d(&x, &w, 1).unwrap();
        let expected = [[12f32, 21., 16.], [27., 45., 33.], [24., 39., 28.]];
        assert_eq!(
            y.squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            expected
        );
        let y2 = depthwise_conv2d(&x, &w, 2).unwrap();
        assert_eq!(
            y2.squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            [[12f32, 16.], [24., 28.]]
        );
    }

    #[test]
    fn hand_checked_centre_tap_is_identity_per_channel() {
        // Channel k gets a kernel with only the centre tap set to k+1.
        let x = random(&[2, 3, 5, 4], 1);
        let mut w = vec![0f32; 27];
        for ch in 0..3 {
            w[ch * 9 + 4] = (ch + 1) as f32;
        }
        let w = Tensor::from_vec(w, (3, 1, 3, 3), &Device::Cpu).unwrap();
        let y = depthwise_conv2d(&x, &w, 1).unwrap();
        let scale = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 1, 1))
            .unwrap();
        let expected = x.broadcast_mul(&scale).unwrap();
        assert_eq!(max_abs_diff(&y, &expected), 0.0);
    }

    #[test]
    fn matches_grouped_conv_on_random_data() {
        let sizes = [
            (1, 1),
            (1, 2),
            (2, 2),
            (3, 3),
            (5, 7),
            (8, 8),
            (9, 16),
            (17, 31),
            (32, 64),
        ];
        for (i, &(h, w)) in sizes.iter().enumerate() {
            for stride in [1, 2] {
                let x = random(&[2, 5, h, w], i as u64);
                let k = random(&[5, 1, 3, 3], 100 + i as u64);
                let fast = depthwise_conv2d(&x, &k, stride).unwrap();
                let slow = depthwise_conv2d_grouped(&x, &k, stride).unwrap();
                assert_eq!(fast.dims(), slow.dims(), "{h}x{w} stride {stride}");
                assert_eq!(
                    fast.dims4().unwrap().2,
                    depthwise_output_size(h, stride),
                    "{h}x{w} stride {stride}"
                );
                let diff = max_abs_diff(&fast, &slow);
                assert!(diff < 1e-5, "{h}x{w} stride {stride}: max diff {diff}");
            }
        }
    }

    #[test]
    fn f64_and_strided_inputs() {
        let x = random(&[1, 4, 6, 9], 7).to_dtype(DType::F64).unwrap();
        let k = random(&[4, 1, 3, 3], 8).to_dtype(DType::F64).unwrap();
        // A transposed (non-contiguous) view must give the same result as its contiguous copy.
        let xt = x.transpose(2, 3).unwrap();
        let fast = depthwise_conv2d(&xt, &k, 2).unwrap();
        let slow = depthwise_conv2d_grouped(&xt.contiguous().unwrap(), &k, 2).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-12);
    }

    /// The fused op's CPU kernel (the reference of the CUDA one) against the three ops in turn.
    #[test]
    fn bias_and_relu_fused_equal_the_ops_in_turn() {
        let x = random(&[2, 6, 9, 14], 3);
        let k = random(&[6, 1, 3, 3], 4);
        let bias = random(&[6], 5);
        for stride in [1, 2] {
            for relu in [false, true] {
                let fused = x
                    .apply_op3_no_bwd(&k, &bias, &DepthwiseConv3x3BiasAct { stride, relu })
                    .unwrap();
                let y =
                    add_channel_bias(&depthwise_conv2d(&x, &k, stride).unwrap(), &bias).unwrap();
                let y = if relu { y.relu().unwrap() } else { y };
                let diff = max_abs_diff(&fused, &y);
                assert!(diff < 1e-6, "stride {stride}, relu {relu}: {diff}");
                // Off CUDA the public function is the three ops.
                let public = depthwise_conv2d_bias_act(&x, &k, &bias, stride, relu).unwrap();
                assert_eq!(max_abs_diff(&public, &y), 0.0);
            }
        }
    }

    #[test]
    fn rejects_bad_weights_and_strides() {
        let x = random(&[1, 4, 6, 6], 1);
        assert!(depthwise_conv2d(&x, &random(&[3, 1, 3, 3], 2), 1).is_err());
        assert!(depthwise_conv2d(&x, &random(&[4, 1, 5, 5], 2), 1).is_err());
        assert!(depthwise_conv2d(&x, &random(&[4, 1, 3, 3], 2), 3).is_err());
    }
}
