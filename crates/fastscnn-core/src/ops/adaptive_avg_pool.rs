//! Adaptive average pooling with PyTorch's windows.
//!
//! Output cell `i` of `out` averages input cells `floor(i*in/out) .. ceil((i+1)*in/out)`. When `in`
//! is not a multiple of `out` the windows are uneven and overlap (an 8x16 map pooled to 3x3 or 6x6,
//! as in the pyramid pooling of a 256x512 input), which no fixed-stride pooling reproduces.
//! CPU (f32, f64) and CUDA (f32, f16, bf16: `adaptive_avg_pool.cu`) run direct kernels, other
//! devices candle's narrow/mean/cat.

use candle_core::{bail, CpuStorage, CustomOp1, Result, Shape, Tensor};
use fastscnn_cpu::sampling::pool_planes_grad;

use super::{
    forward_only_op, has_kernel, kernel_forwards, pool_planes, pool_window, Float, Kernel,
};

/// Adaptive average pooling of (N, C, H, W) to (N, C, out_h, out_w).
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    check(x, out_h, out_w)?;
    if has_kernel(x) {
        x.contiguous()?
            .apply_op1(AdaptiveAvgPool2d { out_h, out_w })
    } else {
        adaptive_avg_pool2d_composite(x, out_h, out_w)
    }
}

/// The same pooling from candle's narrow/mean/cat: the fallback on other devices and the reference
/// for the CPU kernel.
pub fn adaptive_avg_pool2d_composite(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = check(x, out_h, out_w)?;
    let mut rows = Vec::with_capacity(out_h);
    for i in 0..out_h {
        let (y0, y1) = pool_window(i, h, out_h);
        let band = x.narrow(2, y0, y1 - y0)?;
        let mut cells = Vec::with_capacity(out_w);
        for j in 0..out_w {
            let (x0, x1) = pool_window(j, w, out_w);
            cells.push(
                band.narrow(3, x0, x1 - x0)?
                    .mean_keepdim(3)?
                    .mean_keepdim(2)?,
            );
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Tensor::cat(&rows, 2)
}

fn check(x: &Tensor, out_h: usize, out_w: usize) -> Result<(usize, usize, usize, usize)> {
    let dims = x.dims4()?;
    if out_h == 0 || out_w == 0 || dims.2 == 0 || dims.3 == 0 {
        bail!(
            "adaptive_avg_pool2d: cannot pool {}x{} to {out_h}x{out_w}",
            dims.2,
            dims.3
        )
    }
    Ok(dims)
}

struct AdaptiveAvgPool2d {
    out_h: usize,
    out_w: usize,
}

impl Kernel<1> for AdaptiveAvgPool2d {
    const NAME: &'static str = "adaptive-avg-pool2d";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let (oh, ow) = (self.out_h, self.out_w);
        let mut out = vec![T::zero(); n * c * oh * ow];
        pool_planes(x, h, w, &mut out, oh, ow);
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [x]: [(&candle_core::CudaStorage, &candle_core::Layout); 1],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = x.1.shape().dims4()?;
        let out = cuda::run(x, n * c, (h, w), (self.out_h, self.out_w), false)?;
        Ok((out, Shape::from((n, c, self.out_h, self.out_w))))
    }
}

impl CustomOp1 for AdaptiveAvgPool2d {
    kernel_forwards!(1);

    /// Each output's gradient spread evenly over its window; overlapping windows add up.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, in_h, in_w) = arg.dims4()?;
        let grad = grad_res.contiguous()?;
        let grad_arg = if has_kernel(&grad) {
            grad.apply_op1_no_bwd(&AdaptiveAvgPool2dGrad { in_h, in_w })?
        } else {
            adaptive_avg_pool2d_grad_composite(&grad, in_h, in_w)?
        };
        Ok(Some(grad_arg))
    }
}

/// The gradient of the pooling on devices without the CPU kernel: the transpose of the pooling
/// matrices, `Pyᵀ · g · Px`.
fn adaptive_avg_pool2d_grad_composite(grad: &Tensor, in_h: usize, in_w: usize) -> Result<Tensor> {
    let (_, _, out_h, out_w) = grad.dims4()?;
    let matrix = |input: usize, output: usize| {
        let mut m = vec![0f64; output * input];
        for o in 0..output {
            let (start, end) = pool_window(o, input, output);
            for i in start..end {
                m[o * input + i] = 1.0 / (end - start) as f64;
            }
        }
        Tensor::from_vec(m, (output, input), grad.device())?.to_dtype(grad.dtype())
    };
    let py_t = matrix(in_h, out_h)?.t()?;
    let px = matrix(in_w, out_w)?;
    py_t.broadcast_matmul(&grad.broadcast_matmul(&px)?)
}

/// Backward of [`AdaptiveAvgPool2d`]: (N, C, out_h, out_w) gradients to (N, C, in_h, in_w).
struct AdaptiveAvgPool2dGrad {
    in_h: usize,
    in_w: usize,
}

impl Kernel<1> for AdaptiveAvgPool2dGrad {
    const NAME: &'static str = "adaptive-avg-pool2d-grad";

    fn run<T: Float>(&self, [g]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, oh, ow) = shape.dims4()?;
        let (h, w) = (self.in_h, self.in_w);
        let out = pool_planes_grad(g, (oh, ow), (h, w));
        Ok((T::to_cpu_storage_owned(out), Shape::from((n, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [g]: [(&candle_core::CudaStorage, &candle_core::Layout); 1],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, oh, ow) = g.1.shape().dims4()?;
        let (h, w) = (self.in_h, self.in_w);
        let out = cuda::run(g, n * c, (h, w), (oh, ow), true)?;
        Ok((out, Shape::from((n, c, h, w))))
    }
}

forward_only_op!(AdaptiveAvgPool2dGrad, 1);

/// The launches of `adaptive_avg_pool.cu`'s kernels.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::{CudaStorage, Result};

    use crate::ops::cuda::{map_planes, ptx_module, Input, Module};

    static MODULE: Module = ptx_module!("adaptive_avg_pool");

    /// The pooling of `planes` planes of `input` to `output` cells, or with `backward` its
    /// gradient (from planes of `output` to planes of `input`).
    pub(super) fn run(
        source: Input,
        planes: usize,
        input_size: (usize, usize),
        output_size: (usize, usize),
        backward: bool,
    ) -> Result<CudaStorage> {
        let functions = ("adaptive_avg_pool", "adaptive_avg_pool_grad");
        map_planes(
            &MODULE,
            functions,
            source,
            planes,
            input_size,
            output_size,
            backward,
            &[],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::Device;

    #[test]
    fn pytorch_windows_are_uneven_for_8_to_3_and_6() {
        let windows: Vec<_> = (0..3).map(|i| pool_window(i, 8, 3)).collect();
        assert_eq!(windows, [(0, 3), (2, 6), (5, 8)]);
        let windows: Vec<_> = (0..6).map(|i| pool_window(i, 8, 6)).collect();
        assert_eq!(windows, [(0, 2), (1, 3), (2, 4), (4, 6), (5, 7), (6, 8)]);
        assert_eq!(pool_window(0, 16, 1), (0, 16));
    }

    #[test]
    fn hand_checked_means() {
        // Rows 0..4 of a 4x4 ramp 0..15; to 2x2 each output averages a 2x2 block.
        let x = Tensor::arange(0f32, 16., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        let y = adaptive_avg_pool2d(&x, 2, 2).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [2.5, 4.5, 10.5, 12.5]
        );
        // To 3 columns of a 1x4 row [0,1,2,3]: windows (0,2), (1,3), (2,4).
        let row = Tensor::arange(0f32, 4., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y = adaptive_avg_pool2d(&row, 1, 3).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0.5, 1.5, 2.5]
        );
    }

    #[test]
    fn kernel_matches_composite() {
        for (i, (h, w)) in [(8, 16), (7, 5), (1, 1), (6, 6), (13, 29)]
            .into_iter()
            .enumerate()
        {
            let x = random_tensor(&[2, 3, h, w], i as u64).unwrap();
            for (oh, ow) in [(1, 1), (2, 2), (3, 3), (6, 6), (4, 9)] {
                let fast = adaptive_avg_pool2d(&x, oh, ow).unwrap();
                let slow = adaptive_avg_pool2d_composite(&x, oh, ow).unwrap();
                assert!(max_abs_diff(&fast, &slow) < 1e-6, "{h}x{w} -> {oh}x{ow}");
            }
        }
    }

    #[test]
    fn rejects_empty_output() {
        let x = Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(adaptive_avg_pool2d(&x, 0, 2).is_err());
    }
}
