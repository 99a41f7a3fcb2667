//! Dense KxK convolution (the stem, the auxiliary heads) as one op with its own backward pass.
//!
//! candle's conv2d backward always computes the input gradient, by a transposed convolution, even
//! where the input is the batch of images, which needs none: at the stem that is a full-resolution
//! pass per step for nothing. Its weight gradient, a convolution of the input by the output
//! gradient, computes a larger kernel than the weight and narrows it. Here the forward is the
//! inference engine's kernel (f32) or im2col and a product (f64), the weight gradient one product
//! per band of rows, and the input gradient is computed only for an input that needs one
//! (`cargo bench -p fastscnn-benches --bench train_step`).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use fastscnn_cpu::{dense_forward, dense_input_grad, dense_weight_grad, DenseConv, DenseGeometry};

use super::{forward_only_op, has_cpu_kernel, run_kernel, Float, Kernel};

/// The convolution of `x` (N, C, H, W) by `weight` (O, C, k, k) with zero `padding` on every side
/// and `stride` along both axes, no bias. Runs the direct kernels on CPU for f32/f64 and candle's
/// conv2d elsewhere; differentiable in both.
pub fn dense_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let op = dense_op(x, weight, stride, padding)?;
    if has_cpu_kernel(x) {
        x.contiguous()?.apply_op2(&weight.contiguous()?, op)
    } else {
        x.conv2d(weight, padding, stride, 1, 1)
    }
}

/// The op of [`dense_conv2d`] for these operands, or its error for operands that do not fit.
pub(super) fn dense_op(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<DenseConv2d> {
    let (_, c, h, w) = x.dims4()?;
    let (_, wc, kh, kw) = weight.dims4()?;
    if wc != c || kh != kw || c == 0 || kh == 0 {
        bail!(
            "dense_conv2d: weight must be (out, {c}, k, k), k and {c} input channels above 0, got {:?}",
            weight.dims()
        )
    }
    if x.dtype() != weight.dtype() {
        bail!(
            "dense_conv2d: input is {:?} but weight is {:?}",
            x.dtype(),
            weight.dtype()
        )
    }
    let op = DenseConv2d { stride, padding };
    if op.geometry(x.dims4()?, weight.dims4()?).output().is_none() {
        bail!(
            "dense_conv2d: a {h}x{w} input with padding {padding} is smaller than the {kh}x{kw} \
             kernel (or stride {stride} is zero)"
        )
    }
    Ok(op)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct DenseConv2d {
    stride: usize,
    padding: usize,
}

impl DenseConv2d {
    fn geometry(
        &self,
        (_, c, h, w): (usize, usize, usize, usize),
        (o, _, k, _): (usize, usize, usize, usize),
    ) -> DenseGeometry {
        DenseGeometry {
            in_channels: c,
            out_channels: o,
            kernel: k,
            stride: self.stride,
            padding: self.padding,
            input: (h, w),
        }
    }
}

/// The forward written for both float types: what f64 runs (f32 takes the engine's kernel,
/// `run_f32`).
impl Kernel<2> for DenseConv2d {
    const NAME: &'static str = "dense-conv2d";

    fn run<T: Float>(
        &self,
        [x, weight]: [&[T]; 2],
        [x_shape, w_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let n = x_shape.dims4()?.0;
        let geometry = self.geometry(x_shape.dims4()?, w_shape.dims4()?);
        let Some((oh, ow)) = geometry.output() else {
            bail!("{}: the input is smaller than the kernel", Self::NAME)
        };
        let out = dense_forward(x, n, &geometry, weight);
        Ok((
            T::to_cpu_storage_owned(out),
            Shape::from((n, geometry.out_channels, oh, ow)),
        ))
    }

    /// On the inference engine's kernel (bias zero, no ReLU).
    fn run_f32(
        &self,
        [x, weight]: [&[f32]; 2],
        [x_shape, w_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = x_shape.dims4()?;
        let (o, _, k, _) = w_shape.dims4()?;
        let conv = DenseConv::new(
            weight.to_vec(),
            vec![0.0; o],
            c,
            o,
            k,
            self.stride,
            self.padding,
            false,
        );
        let (oh, ow) = conv.output_size(h, w);
        let mut out = vec![0f32; n * o * oh * ow];
        if !out.is_empty() {
            for (image, out) in x
                .chunks_exact(c * h * w)
                .zip(out.chunks_exact_mut(o * oh * ow))
            {
                conv.run(image, h, w, out);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, o, oh, ow))))
    }
}

impl CustomOp2 for DenseConv2d {
    fn name(&self) -> &'static str {
        <Self as Kernel<2>>::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run_kernel(self, [(s1, l1), (s2, l2)])
    }

    /// The weight gradient always; the input gradient only for an input that tracks one (not
    /// the batch of images at the stem).
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let geometry = self.geometry(x.dims4()?, weight.dims4()?);
        let grad_weight = x.apply_op2_no_bwd(&grad, &DenseConv2dWeightGrad(geometry))?;
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(weight, &DenseConv2dInputGrad(geometry))?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_weight)))
    }
}

/// Gradient with respect to the (O, C, k, k) weight. Arguments: (x, grad_out).
struct DenseConv2dWeightGrad(DenseGeometry);

impl Kernel<2> for DenseConv2dWeightGrad {
    const NAME: &'static str = "dense-conv2d-weight-grad";

    fn run<T: Float>(
        &self,
        [x, g]: [&[T]; 2],
        [x_shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let geometry = &self.0;
        let out = dense_weight_grad(x, g, x_shape.dims4()?.0, geometry);
        let k = geometry.kernel;
        let shape = (geometry.out_channels, geometry.in_channels, k, k);
        Ok((T::to_cpu_storage_owned(out), Shape::from(shape)))
    }
}

forward_only_op!(DenseConv2dWeightGrad, 2);

/// Gradient with respect to the (N, C, H, W) input. Arguments: (grad_out, weight).
struct DenseConv2dInputGrad(DenseGeometry);

impl Kernel<2> for DenseConv2dInputGrad {
    const NAME: &'static str = "dense-conv2d-input-grad";

    fn run<T: Float>(
        &self,
        [g, weight]: [&[T]; 2],
        [g_shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let geometry = &self.0;
        let n = g_shape.dims4()?.0;
        let out = dense_input_grad(g, n, geometry, weight);
        let (h, w) = geometry.input;
        let shape = (n, geometry.in_channels, h, w);
        Ok((T::to_cpu_storage_owned(out), Shape::from(shape)))
    }
}

forward_only_op!(DenseConv2dInputGrad, 2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    /// (weights out, in, k, stride, padding, height, width) of the stem, an auxiliary head and
    /// odd shapes. Strided sizes leave no remainder: candle's own transposed convolution, the
    /// input gradient's reference here, mis-sizes those (fastscnn-cpu's tests check such shapes
    /// against the definition).
    const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
        (8, 3, 3, 2, 0, 17, 25),
        (8, 3, 3, 2, 1, 15, 17),
        (4, 6, 3, 1, 1, 9, 13),
        (5, 4, 1, 1, 0, 6, 7),
        (3, 2, 3, 1, 1, 1, 1),
    ];

    #[test]
    fn forward_matches_candle_conv2d_in_f32_and_f64() {
        for (i, &(o, c, k, s, p, h, w)) in SHAPES.iter().enumerate() {
            let x = random_tensor(&[2, c, h, w], i as u64).unwrap();
            let weight = random_tensor(&[o, c, k, k], 50 + i as u64).unwrap();
            for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
                let (x, weight) = (x.to_dtype(dtype).unwrap(), weight.to_dtype(dtype).unwrap());
                let ours = dense_conv2d(&x, &weight, s, p).unwrap();
                let candle = x.conv2d(&weight, p, s, 1, 1).unwrap();
                assert_eq!(ours.dims(), candle.dims());
                let err = max_abs_diff(&ours, &candle);
                assert!(err < tolerance, "{:?} {dtype:?}: {err}", SHAPES[i]);
            }
        }
    }

    #[test]
    fn gradients_match_candle_conv2d_and_skip_an_input_without_gradient() {
        for (i, &(o, c, k, s, p, h, w)) in SHAPES.iter().enumerate() {
            let x = random_tensor(&[2, c, h, w], 10 + i as u64).unwrap();
            let x = x.to_dtype(DType::F64).unwrap();
            let weight = random_tensor(&[o, c, k, k], 60 + i as u64).unwrap();
            let weight = Var::from_tensor(&weight.to_dtype(DType::F64).unwrap()).unwrap();
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let mix = random_tensor(&[2, o, oh, ow], 90 + i as u64).unwrap();
            let mix = mix.to_dtype(DType::F64).unwrap();
            let grads = |f: &dyn Fn(&Tensor) -> Tensor, input: &Tensor| {
                let loss = (f(input) * &mix).unwrap().sum_all().unwrap();
                loss.backward().unwrap()
            };
            // The input as a plain tensor, like the batch of images: no input gradient.
            let ours = grads(&|x| dense_conv2d(x, weight.as_tensor(), s, p).unwrap(), &x);
            let candle = grads(&|x| x.conv2d(weight.as_tensor(), p, s, 1, 1).unwrap(), &x);
            assert!(ours.get(&x).is_none());
            let err = max_abs_diff(ours.get(&weight).unwrap(), candle.get(&weight).unwrap());
            assert!(err < 1e-10, "{:?} weight: {err}", SHAPES[i]);
            // The input as a variable: its gradient too.
            let x = Var::from_tensor(&x).unwrap();
            let ours = grads(&|x| dense_conv2d(x, weight.as_tensor(), s, p).unwrap(), &x);
            let candle = grads(&|x| x.conv2d(weight.as_tensor(), p, s, 1, 1).unwrap(), &x);
            let err = max_abs_diff(ours.get(&x).unwrap(), candle.get(&x).unwrap());
            assert!(err < 1e-10, "{:?} input: {err}", SHAPES[i]);
        }
    }

    #[test]
    fn f32_gradients_match_f64() {
        for (i, &(o, c, k, s, p, h, w)) in SHAPES.iter().enumerate() {
            let x = random_tensor(&[2, c, h, w], 20 + i as u64).unwrap();
            let weight = random_tensor(&[o, c, k, k], 70 + i as u64).unwrap();
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let mix = random_tensor(&[2, o, oh, ow], 95 + i as u64).unwrap();
            let grads = |dtype: DType| {
                let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
                let weight = Var::from_tensor(&weight.to_dtype(dtype).unwrap()).unwrap();
                let y = dense_conv2d(x.as_tensor(), weight.as_tensor(), s, p).unwrap();
                let y = y.to_dtype(DType::F64).unwrap();
                let mix = mix.to_dtype(DType::F64).unwrap();
                let grads = (y * mix).unwrap().sum_all().unwrap().backward().unwrap();
                [&x, &weight].map(|v| grads.get(v).unwrap().to_dtype(DType::F64).unwrap())
            };
            let (single, double) = (grads(DType::F32), grads(DType::F64));
            for (name, a, b) in [
                ("input", &single[0], &double[0]),
                ("weight", &single[1], &double[1]),
            ] {
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                let err = max_abs_diff(a, b) as f64 / scale.max(1e-12);
                assert!(err < 1e-5, "{:?} {name}: relative error {err}", SHAPES[i]);
            }
        }
    }
}
