//! 1x1 convolution as one op with its own backward pass.
//!
//! Through candle a 1x1 convolution is a matrix product with the weight broadcast over the batch,
//! whose backward pass forms one weight gradient per image and sums them, and transposes its
//! operands. Here the forward is the inference engine's kernel (f32) or one product per column
//! chunk (f64), the weight gradient `Σ dY · Xᵀ` one product per chunk summed in f64, and the input
//! gradient `Wᵀ · dY` one product per chunk, all on the NCHW layout as it is (`cargo bench -p
//! fastscnn-benches --bench train_step`).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use fastscnn_cpu::{
    pointwise_forward, pointwise_input_grad, pointwise_weight_grad, PointwiseConv,
    PointwiseGeometry, Seed,
};

use super::{forward_only_op, has_cpu_kernel, run_kernel, Float, Kernel};

/// The 1x1 convolution of `x` (N, C, H, W) by `weight` (O, C, 1, 1), no bias. Runs the direct
/// kernels on CPU for f32/f64 and a broadcast matrix product elsewhere; differentiable in both.
pub fn pointwise_conv2d(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let op = pointwise_op(x, weight)?;
    if has_cpu_kernel(x) {
        x.contiguous()?.apply_op2(&weight.contiguous()?, op)
    } else {
        let (n, c, h, w) = x.dims4()?;
        let o = weight.dim(0)?;
        let flat = x.reshape((n, c, h * w))?;
        weight
            .reshape((o, c))?
            .broadcast_matmul(&flat)?
            .reshape((n, o, h, w))
    }
}

/// The op of [`pointwise_conv2d`] for these operands, or its error for operands that do not fit.
pub(super) fn pointwise_op(x: &Tensor, weight: &Tensor) -> Result<PointwiseConv2d> {
    let (_, c, _, _) = x.dims4()?;
    let (_, wc, kh, kw) = weight.dims4()?;
    if wc != c || kh != 1 || kw != 1 || c == 0 {
        bail!(
            "pointwise_conv2d: weight must be (out, {c}, 1, 1), {c} input channels above 0, got {:?}",
            weight.dims()
        )
    }
    if x.dtype() != weight.dtype() {
        bail!(
            "pointwise_conv2d: input is {:?} but weight is {:?}",
            x.dtype(),
            weight.dtype()
        )
    }
    Ok(PointwiseConv2d)
}

pub(super) struct PointwiseConv2d;

fn geometry(x: &Shape, weight: &Shape) -> Result<(usize, PointwiseGeometry)> {
    let (n, c, h, w) = x.dims4()?;
    let (o, _, _, _) = weight.dims4()?;
    let geometry = PointwiseGeometry {
        in_channels: c,
        out_channels: o,
        pixels: h * w,
    };
    Ok((n, geometry))
}

/// The forward written for both float types: what f64 runs (f32 takes the engine's kernel,
/// `run_f32`).
impl Kernel<2> for PointwiseConv2d {
    const NAME: &'static str = "pointwise-conv2d";

    fn run<T: Float>(
        &self,
        [x, weight]: [&[T]; 2],
        [x_shape, w_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, geometry) = geometry(x_shape, w_shape)?;
        let (_, _, h, w) = x_shape.dims4()?;
        let out = pointwise_forward(x, n, &geometry, weight);
        let shape = (n, geometry.out_channels, h, w);
        Ok((T::to_cpu_storage_owned(out), Shape::from(shape)))
    }

    /// On the inference engine's kernel.
    fn run_f32(
        &self,
        [x, weight]: [&[f32]; 2],
        [x_shape, w_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, geometry) = geometry(x_shape, w_shape)?;
        let (_, _, h, w) = x_shape.dims4()?;
        let PointwiseGeometry {
            in_channels: c,
            out_channels: o,
            pixels,
        } = geometry;
        let conv = PointwiseConv::new(weight.to_vec(), vec![0.0; o], c, o, false);
        let mut out = vec![0f32; n * o * pixels];
        if pixels > 0 {
            for (image, out) in x
                .chunks_exact(c * pixels)
                .zip(out.chunks_exact_mut(o * pixels))
            {
                conv.run(image, pixels, out, Seed::Bias);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, o, h, w))))
    }
}

impl CustomOp2 for PointwiseConv2d {
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

    /// The weight gradient always; the input gradient only for an input that tracks one.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let grad_weight = x.apply_op2_no_bwd(&grad, &PointwiseConv2dWeightGrad)?;
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(weight, &PointwiseConv2dInputGrad)?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_weight)))
    }
}

/// Gradient with respect to the (O, C, 1, 1) weight. Arguments: (x, grad_out).
struct PointwiseConv2dWeightGrad;

impl Kernel<2> for PointwiseConv2dWeightGrad {
    const NAME: &'static str = "pointwise-conv2d-weight-grad";

    fn run<T: Float>(
        &self,
        [x, g]: [&[T]; 2],
        [x_shape, g_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = x_shape.dims4()?;
        let o = g_shape.dims4()?.1;
        let geometry = PointwiseGeometry {
            in_channels: c,
            out_channels: o,
            pixels: h * w,
        };
        let out = pointwise_weight_grad(x, g, n, &geometry);
        Ok((T::to_cpu_storage_owned(out), Shape::from((o, c, 1, 1))))
    }
}

forward_only_op!(PointwiseConv2dWeightGrad, 2);

/// Gradient with respect to the (N, C, H, W) input. Arguments: (grad_out, weight).
struct PointwiseConv2dInputGrad;

impl Kernel<2> for PointwiseConv2dInputGrad {
    const NAME: &'static str = "pointwise-conv2d-input-grad";

    fn run<T: Float>(
        &self,
        [g, weight]: [&[T]; 2],
        [g_shape, w_shape]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, o, h, w) = g_shape.dims4()?;
        let c = w_shape.dims4()?.1;
        let geometry = PointwiseGeometry {
            in_channels: c,
            out_channels: o,
            pixels: h * w,
        };
        let out = pointwise_input_grad(g, n, &geometry, weight);
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, h, w))))
    }
}

forward_only_op!(PointwiseConv2dInputGrad, 2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    /// (out, in, height, width): small, odd, and past the kernels' column chunks.
    const SHAPES: [(usize, usize, usize, usize); 4] = [
        (4, 6, 5, 7),
        (1, 3, 1, 1),
        (19, 128, 9, 13),
        (8, 5, 70, 130),
    ];

    #[test]
    fn forward_and_gradients_match_the_broadcast_product() {
        for (i, &(o, c, h, w)) in SHAPES.iter().enumerate() {
            let seed = i as u64 * 10;
            for (dtype, tolerance) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
                let cast = |t: Tensor| t.to_dtype(dtype).unwrap();
                let x =
                    Var::from_tensor(&cast(random_tensor(&[2, c, h, w], seed).unwrap())).unwrap();
                let weight =
                    Var::from_tensor(&cast(random_tensor(&[o, c, 1, 1], seed + 1).unwrap()))
                        .unwrap();
                let mix = cast(random_tensor(&[2, o, h, w], seed + 2).unwrap());
                let composite = |x: &Tensor, weight: &Tensor| {
                    let flat = x.reshape((2, c, h * w))?;
                    weight
                        .reshape((o, c))?
                        .broadcast_matmul(&flat)?
                        .reshape((2, o, h, w))
                };
                let ours = pointwise_conv2d(x.as_tensor(), weight.as_tensor()).unwrap();
                let reference = composite(x.as_tensor(), weight.as_tensor()).unwrap();
                let err = max_abs_diff(&ours, &reference);
                assert!(err < tolerance, "{:?} {dtype:?} forward: {err}", SHAPES[i]);
                let ours = (ours * &mix)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let reference = (reference * &mix).unwrap().sum_all().unwrap();
                let reference = reference.backward().unwrap();
                for (name, var) in [("input", &x), ("weight", &weight)] {
                    let (a, b) = (ours.get(var).unwrap(), reference.get(var).unwrap());
                    assert_eq!(a.dims(), b.dims());
                    // Relative to the largest gradient: the weight's sums run over every pixel.
                    let scale = b
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap();
                    let err =
                        max_abs_diff(a, b) as f64 / scale.to_scalar::<f64>().unwrap().max(1e-12);
                    assert!(
                        err < tolerance as f64,
                        "{:?} {dtype:?} {name}: {err}",
                        SHAPES[i]
                    );
                }
            }
        }
    }

    #[test]
    fn an_input_without_gradient_gets_none() {
        let x = random_tensor(&[1, 3, 4, 4], 1).unwrap();
        let weight = Var::from_tensor(&random_tensor(&[2, 3, 1, 1], 2).unwrap()).unwrap();
        let grads = pointwise_conv2d(&x, weight.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&weight).is_some());
    }
}
