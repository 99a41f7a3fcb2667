//! Bilinear resize to any size, with PyTorch's `align_corners` semantics.
//!
//! The reference Fast-SCNN resizes with `align_corners=True` and OpenMMLab's with `False`; the two
//! place source samples differently, so both are needed to reproduce either set of weights.
//! candle's own `upsample_bilinear2d` has no backward pass, which training needs; this op's
//! composite path is differentiable through candle's matmul, and its CPU kernel is tested against
//! both. CUDA (f32, f16, bf16) runs the kernels of `bilinear_resize.cu`.

use candle_core::{bail, CpuStorage, CustomOp1, Result, Shape, Tensor};
use fastscnn_cpu::{output_vec, resize_forward, resize_grad, resize_planes_uninit, MapView};

use super::{forward_only_op, has_kernel, kernel_forwards, source_index, Float, Kernel};

/// Bilinear resize of (N, C, H, W) to (N, C, out_h, out_w).
pub fn resize_bilinear(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = check(x, out_h, out_w)?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if has_kernel(x) {
        x.contiguous()?.apply_op1(BilinearResize {
            out_h,
            out_w,
            align_corners,
        })
    } else {
        resize_bilinear_composite(x, out_h, out_w, align_corners)
    }
}

/// The same resize as two matrix products with interpolation matrices, `Ry · x · Rxᵀ`: runs on every
/// device candle supports, is differentiable through candle's own ops, and is the reference for the
/// CPU kernel.
pub fn resize_bilinear_composite(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = check(x, out_h, out_w)?;
    let ry = interpolation_matrix(h, out_h, align_corners, x)?;
    let rx_t = interpolation_matrix(w, out_w, align_corners, x)?.t()?;
    ry.broadcast_matmul(&x.broadcast_matmul(&rx_t)?)
}

/// The (output × input) matrix whose rows hold each output sample's two bilinear weights.
fn interpolation_matrix(
    input: usize,
    output: usize,
    align_corners: bool,
    like: &Tensor,
) -> Result<Tensor> {
    let mut m = vec![0f64; output * input];
    for o in 0..output {
        let (i0, i1, l) = source_index(o, input, output, align_corners);
        m[o * input + i0] += 1.0 - l;
        m[o * input + i1] += l;
    }
    Tensor::from_vec(m, (output, input), like.device())?.to_dtype(like.dtype())
}

fn check(x: &Tensor, out_h: usize, out_w: usize) -> Result<(usize, usize, usize, usize)> {
    let dims = x.dims4()?;
    if out_h == 0 || out_w == 0 || dims.2 == 0 || dims.3 == 0 {
        bail!(
            "resize_bilinear: cannot resize {}x{} to {out_h}x{out_w}",
            dims.2,
            dims.3
        )
    }
    Ok(dims)
}

struct BilinearResize {
    out_h: usize,
    out_w: usize,
    align_corners: bool,
}

impl Kernel<1> for BilinearResize {
    const NAME: &'static str = "resize-bilinear";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let (oh, ow) = (self.out_h, self.out_w);
        let out = resize_forward(x, (h, w), (oh, ow), self.align_corners);
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, oh, ow))))
    }

    /// On the inference engine's separable resize, written once into fresh memory.
    fn run_f32(&self, [x]: [&[f32]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let (oh, ow) = (self.out_h, self.out_w);
        let len = n * c * oh * ow;
        let mut out = output_vec::<f32>(len);
        let input = MapView::new(x, n * c, h, w);
        resize_planes_uninit(
            input,
            &mut out.spare_capacity_mut()[..len],
            (oh, ow),
            self.align_corners,
            false,
        );
        // SAFETY: resize_planes_uninit initialised all `len` elements.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x]: [(&candle_core::CudaStorage, &candle_core::Layout); 1],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = x.1.shape().dims4()?;
        let (oh, ow) = (self.out_h, self.out_w);
        let out = cuda::run(x, n * c, (h, w), (oh, ow), self.align_corners, false)?;
        Ok((out, Shape::from((n, c, oh, ow))))
    }
}

impl CustomOp1 for BilinearResize {
    kernel_forwards!(1);

    /// Each output's gradient sent back to its four source pixels with the forward's weights.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, in_h, in_w) = arg.dims4()?;
        let grad = grad_res.contiguous()?;
        let grad_arg = if has_kernel(&grad) {
            grad.apply_op1_no_bwd(&BilinearResizeGrad {
                in_h,
                in_w,
                align_corners: self.align_corners,
            })?
        } else {
            // The transpose of the composite: Ryᵀ · g · Rx.
            let ry_t = interpolation_matrix(in_h, self.out_h, self.align_corners, &grad)?.t()?;
            let rx = interpolation_matrix(in_w, self.out_w, self.align_corners, &grad)?;
            ry_t.broadcast_matmul(&grad.broadcast_matmul(&rx)?)?
        };
        Ok(Some(grad_arg))
    }
}

/// Backward of [`BilinearResize`]: (N, C, out_h, out_w) gradients to (N, C, in_h, in_w).
struct BilinearResizeGrad {
    in_h: usize,
    in_w: usize,
    align_corners: bool,
}

impl Kernel<1> for BilinearResizeGrad {
    const NAME: &'static str = "resize-bilinear-grad";

    fn run<T: Float>(&self, [g]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, oh, ow) = shape.dims4()?;
        let (h, w) = (self.in_h, self.in_w);
        let out = resize_grad(g, (oh, ow), (h, w), self.align_corners);
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [g]: [(&candle_core::CudaStorage, &candle_core::Layout); 1],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, oh, ow) = g.1.shape().dims4()?;
        let (h, w) = (self.in_h, self.in_w);
        let out = cuda::run(g, n * c, (h, w), (oh, ow), self.align_corners, true)?;
        Ok((out, Shape::from((n, c, h, w))))
    }
}

forward_only_op!(BilinearResizeGrad, 1);

/// The launches of `bilinear_resize.cu`'s kernels.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::{CudaStorage, Result};

    use crate::ops::cuda::{map_planes, ptx_module, Input, Module};

    static MODULE: Module = ptx_module!("bilinear_resize");

    /// The resize of `planes` planes of `input_size` to `output_size`, or with `backward` its
    /// gradient (from planes of `output_size` to planes of `input_size`).
    pub(super) fn run(
        source: Input,
        planes: usize,
        input_size: (usize, usize),
        output_size: (usize, usize),
        align_corners: bool,
        backward: bool,
    ) -> Result<CudaStorage> {
        let functions = ("resize_bilinear", "resize_bilinear_grad");
        map_planes(
            &MODULE,
            functions,
            source,
            planes,
            input_size,
            output_size,
            backward,
            &[i32::from(align_corners)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::Device;

    fn row(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, (1, 1, 1, values.len()), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn hand_checked_align_corners_true() {
        // 2 -> 4 with corners aligned samples at 0, 1/3, 2/3, 1.
        let y = resize_bilinear(&row(&[0.0, 3.0]), 1, 4, true).unwrap();
        let expected = [0.0, 1.0, 2.0, 3.0];
        for (a, b) in values(&y).iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn hand_checked_align_corners_false() {
        // PyTorch: F.interpolate([0, 4], size=4, mode='linear', align_corners=False) = [0, 1, 3, 4]
        // (sources -0.25→0 clamped, 0.25, 0.75, 1.25→ clamped to the last sample).
        let y = resize_bilinear(&row(&[0.0, 4.0]), 1, 4, false).unwrap();
        assert_eq!(values(&y), [0.0, 1.0, 3.0, 4.0]);
        // Downsampling 4 -> 2 without aligned corners averages neighbouring pairs.
        let y = resize_bilinear(&row(&[0.0, 2.0, 4.0, 6.0]), 1, 2, false).unwrap();
        assert_eq!(values(&y), [1.0, 5.0]);
    }

    #[test]
    fn single_output_takes_first_sample_with_aligned_corners() {
        let y = resize_bilinear(&row(&[5.0, 7.0, 9.0]), 1, 1, true).unwrap();
        assert_eq!(values(&y), [5.0]);
    }

    #[test]
    fn kernel_matches_composite_for_odd_sizes() {
        for (i, (h, w)) in [(1, 1), (2, 3), (8, 16), (7, 13), (32, 64)]
            .into_iter()
            .enumerate()
        {
            let x = random_tensor(&[2, 3, h, w], i as u64).unwrap();
            for (oh, ow) in [(1, 1), (5, 9), (32, 64), (31, 63), (250, 500), (h, w + 1)] {
                for align in [true, false] {
                    let fast = resize_bilinear(&x, oh, ow, align).unwrap();
                    let slow = resize_bilinear_composite(&x, oh, ow, align).unwrap();
                    assert_eq!(fast.dims(), &[2, 3, oh, ow]);
                    let diff = max_abs_diff(&fast, &slow);
                    assert!(diff < 1e-5, "{h}x{w} -> {oh}x{ow} align {align}: {diff}");
                }
            }
        }
    }

    #[test]
    fn kernel_matches_candles_upsample_bilinear2d() {
        let x = random_tensor(&[1, 4, 8, 16], 5).unwrap();
        for (oh, ow) in [(32, 64), (31, 63), (250, 500), (5, 7)] {
            for align in [true, false] {
                let ours = resize_bilinear(&x, oh, ow, align).unwrap();
                let candle = x.upsample_bilinear2d(oh, ow, align).unwrap();
                let diff = max_abs_diff(&ours, &candle);
                assert!(diff < 1e-5, "8x16 -> {oh}x{ow} align {align}: {diff}");
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let x = row(&[1.0, 2.0, 3.0]);
        for align in [true, false] {
            assert_eq!(
                values(&resize_bilinear(&x, 1, 3, align).unwrap()),
                [1.0, 2.0, 3.0]
            );
            assert_eq!(
                values(&resize_bilinear_composite(&x, 1, 3, align).unwrap()),
                [1.0, 2.0, 3.0]
            );
        }
    }
}
