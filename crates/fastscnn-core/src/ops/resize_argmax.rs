//! The label map straight from low-resolution class scores: bilinear upsampling and the argmax over
//! classes in one pass, so the (C, H, W) logits at full resolution are never stored (the paper's
//! "cls" output). At 1024x2048 with 19 classes that is 160 MB not written and read back. CPU
//! (f32, f64) and CUDA (f32, f16, bf16: `resize_argmax.cu`) run the fused kernel, other devices
//! the resize and candle's argmax.

use candle_core::{bail, CpuStorage, Result, Shape, Tensor};
use fastscnn_cpu::resize_argmax_forward;

use super::{forward_only_op, has_kernel, resize_bilinear, Float, Kernel};

/// `argmax` over classes of `resize_bilinear(scores, out_h, out_w, align_corners)`, as (N, out_h,
/// out_w) u32, with the same arithmetic as the resize (so the same labels) and the first class
/// winning ties, as `argmax` does.
pub fn resize_argmax(
    scores: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, c, h, w) = scores.dims4()?;
    if c == 0 || h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        bail!("resize_argmax: cannot take {c} classes of {h}x{w} to {out_h}x{out_w}")
    }
    if has_kernel(scores) {
        scores.contiguous()?.apply_op1_no_bwd(&ResizeArgmax {
            out_h,
            out_w,
            align_corners,
        })
    } else {
        resize_bilinear(scores, out_h, out_w, align_corners)?.argmax(1)
    }
}

struct ResizeArgmax {
    out_h: usize,
    out_w: usize,
    align_corners: bool,
}

impl Kernel<1> for ResizeArgmax {
    const NAME: &'static str = "resize-argmax";

    fn run<T: Float>(&self, [x]: [&[T]; 1], [shape]: [&Shape; 1]) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = shape.dims4()?;
        let (oh, ow) = (self.out_h, self.out_w);
        let labels = resize_argmax_forward(x, c, (h, w), (oh, ow), self.align_corners);
        Ok((CpuStorage::U32(labels), Shape::from((n, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        [(s, l)]: [(&candle_core::CudaStorage, &candle_core::Layout); 1],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::for_element;
        for_element!(s, Self::NAME, cuda::labels(self, (s, l)))
    }
}

forward_only_op!(ResizeArgmax, 1);

/// The launch of `resize_argmax.cu`'s kernel.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Result, Shape};

    use super::{Kernel, ResizeArgmax};
    use crate::ops::cuda::{
        dims, elementwise, input, output, ptx_module, storage, typed, Element, Input, Module,
    };

    static MODULE: Module = ptx_module!("resize_argmax");

    /// The (N, OH, OW) u32 labels of the (N, C, H, W) scores of `op`'s input.
    pub(super) fn labels<T: Element>(
        op: &ResizeArgmax,
        (s, l): Input,
    ) -> Result<(CudaStorage, Shape)> {
        const OP: &str = <ResizeArgmax as Kernel<1>>::NAME;
        let (n, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (op.out_h, op.out_w);
        let device = &s.device;
        let scores = input::<T>(s, l, OP)?;
        let len = n * oh * ow;
        // SAFETY: the kernel launched next writes every element.
        let labels = unsafe { output::<u32>(device, len) }?;
        let dims = dims([n, c, h, w, oh, ow], OP)?;
        let align_corners = i32::from(op.align_corners);
        let (func, stream) = MODULE.function(device, &typed::<T>("resize_argmax"))?;
        let mut args = stream.launch_builder(&func);
        args.arg(&scores).arg(&labels);
        for d in &dims {
            args.arg(d);
        }
        args.arg(&align_corners);
        // SAFETY: the arguments match the kernel's parameters in order and type; the view holds
        // the element count the dimensions give; the kernel writes every label.
        unsafe { args.launch(elementwise(len)) }.w()?;
        Ok((storage(labels, device), Shape::from((n, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_tensor;

    #[test]
    fn equals_resize_then_argmax_for_any_sizes() {
        for align_corners in [true, false] {
            for ((h, w), (oh, ow)) in [((8, 16), (64, 128)), ((5, 7), (13, 3)), ((4, 4), (4, 4))] {
                let scores = random_tensor(&[2, 19, h, w], 3).unwrap();
                let fused: Vec<u32> = resize_argmax(&scores, oh, ow, align_corners)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let two_step: Vec<u32> = resize_bilinear(&scores, oh, ow, align_corners)
                    .unwrap()
                    .argmax(1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(
                    fused, two_step,
                    "{h}x{w} -> {oh}x{ow} align_corners={align_corners}"
                );
            }
        }
    }

    #[test]
    fn first_class_wins_ties() {
        let scores = Tensor::zeros(
            (1, 3, 2, 2),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let labels: Vec<u32> = resize_argmax(&scores, 3, 3, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(labels.iter().all(|&l| l == 0));
    }
}
