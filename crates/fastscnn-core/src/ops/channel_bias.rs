//! A per-channel bias added to an (N, C, H, W) map, as one op with its own backward pass.
//!
//! Through candle the bias is broadcast, and its gradient is a reduction over three of the four
//! axes that candle's strided reduction runs element by element, milliseconds for one head's
//! logits. Here the forward is one pass and the bias gradient each plane's sum, in f64 over
//! independent partial sums (`fastscnn bench --mode train`).

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{forward_only_op, has_cpu_kernel, lane_sum, run_kernel, Float, Kernel};

/// `x + bias` with `bias` (C) added to every pixel of channel c of `x` (N, C, H, W).
/// Differentiable in both.
pub fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    if bias.dims() != [c] {
        bail!("add_channel_bias: bias {:?} must be ({c})", bias.dims())
    }
    if has_cpu_kernel(x) && x.dtype() == bias.dtype() {
        x.contiguous()?.apply_op2(&bias.contiguous()?, ChannelBias)
    } else {
        x.broadcast_add(&bias.reshape((1, c, 1, 1))?)
    }
}

struct ChannelBias;

impl Kernel<2> for ChannelBias {
    const NAME: &'static str = "channel-bias";

    fn run<T: Float>(
        &self,
        [x, bias]: [&[T]; 2],
        [shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let mut out = x.to_vec();
        if plane > 0 {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
                let b = bias[i % c];
                for v in dst {
                    *v += b;
                }
            });
        }
        Ok((T::to_cpu_storage_owned(out), shape.clone()))
    }
}

impl CustomOp2 for ChannelBias {
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

    /// The map's gradient passes as it is; the bias's is each channel's sum of it.
    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let grad_bias = grad.apply_op2_no_bwd(bias, &ChannelSums)?;
        Ok((Some(grad), Some(grad_bias)))
    }
}

/// (C): each channel's sum over the batch and the plane. Arguments (grad, bias); the bias only
/// gives the shape.
struct ChannelSums;

impl Kernel<2> for ChannelSums {
    const NAME: &'static str = "channel-sums";

    fn run<T: Float>(
        &self,
        [g, _]: [&[T]; 2],
        [shape, _]: [&Shape; 2],
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let plane = h * w;
        let sums: Vec<T> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut total = 0f64;
                for b in 0..n {
                    let p = &g[(b * c + ch) * plane..(b * c + ch + 1) * plane];
                    total += lane_sum(p, |v| v);
                }
                T::of_f64(total)
            })
            .collect();
        Ok((T::to_cpu_storage_owned(sums), Shape::from(c)))
    }
}

forward_only_op!(ChannelSums, 2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    #[test]
    fn output_and_gradients_match_the_broadcast_add() {
        for dtype in [DType::F32, DType::F64] {
            let x = random_tensor(&[2, 5, 7, 9], 1)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let bias = random_tensor(&[5], 2).unwrap().to_dtype(dtype).unwrap();
            let mix = random_tensor(&[2, 5, 7, 9], 3)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (x, bias) = (
                Var::from_tensor(&x).unwrap(),
                Var::from_tensor(&bias).unwrap(),
            );
            let ours = add_channel_bias(x.as_tensor(), bias.as_tensor()).unwrap();
            let broadcast = bias.as_tensor().reshape((1, 5, 1, 1)).unwrap();
            let reference = x.as_tensor().broadcast_add(&broadcast).unwrap();
            assert!(max_abs_diff(&ours, &reference) < 1e-6);
            let grads = |y: Tensor| (y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let (ours, reference) = (grads(ours), grads(reference));
            for var in [&x, &bias] {
                let err = max_abs_diff(ours.get(var).unwrap(), reference.get(var).unwrap());
                assert!(err < 1e-5, "{dtype:?}: {err}");
            }
        }
    }

    #[test]
    fn rejects_a_bias_of_another_length() {
        let x = random_tensor(&[1, 3, 2, 2], 1).unwrap();
        assert!(add_channel_bias(&x, &random_tensor(&[4], 2).unwrap()).is_err());
    }
}
