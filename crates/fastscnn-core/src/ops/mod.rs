//! Operations that candle lacks or runs slowly, as candle custom ops.
//!
//! Each op runs a direct CPU kernel for f32 and f64 (the loss of upsampled scores for f32); with
//! the `cuda` feature, the depthwise convolution, pooling, resize, resize + argmax, training
//! BatchNorm and the loss run CUDA kernels for f32, the first four also for f16 and bf16 (the `.cu`
//! file beside each op, compiled to PTX by `build.rs`); on every other device or dtype a fallback
//! composed of candle's own ops or of the other ops here runs, so Metal builds (and CUDA's other
//! dtypes) work too. The composite paths double as the reference the CPU kernels are tested
//! against. Most CPU kernels are `fastscnn-cpu`'s: the engine's own for the forward passes it
//! shares (depthwise, dense and 1x1 convolutions, resize, resize + argmax, pooling), and beside
//! them those training adds (the same forwards in f64, every gradient, BatchNorm's f32 passes, the
//! loss in f32, alone and of upsampled scores). The few that only these ops run are here with them
//! (BatchNorm's f64 normalisation, the per-channel bias, the loss in f64). Two ops run others
//! inside them so that the maps between those never enter candle's gradient store: a convolution
//! and the training BatchNorm after it ([`conv_batch_norm_train_act`]), and the upsampling of
//! scores and their loss ([`resize_cross_entropy`]).

mod adaptive_avg_pool;
mod batch_norm;
mod bilinear_resize;
mod channel_bias;
mod conv_batch_norm;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
mod dense_conv;
mod depthwise_conv;
mod pointwise_conv;
mod resize_argmax;
mod resize_cross_entropy;
mod stacked_batch_norm;
mod target_map_cross_entropy;

pub use adaptive_avg_pool::{adaptive_avg_pool2d, adaptive_avg_pool2d_composite};
pub use batch_norm::{
    batch_norm_train, batch_norm_train_act, batch_norm_train_composite, BatchNormTrainOutput,
};
pub use bilinear_resize::{resize_bilinear, resize_bilinear_composite};
pub use channel_bias::add_channel_bias;
pub use conv_batch_norm::{conv_batch_norm_train_act, ConvKind};
pub use cross_entropy::{
    softmax_cross_entropy, softmax_cross_entropy_composite, target_probabilities,
};
pub use dense_conv::dense_conv2d;
pub use depthwise_conv::{depthwise_conv2d, depthwise_conv2d_bias_act, depthwise_conv2d_grouped};
pub use pointwise_conv::pointwise_conv2d;
pub use resize_argmax::resize_argmax;
pub use resize_cross_entropy::resize_cross_entropy;

use fastscnn_cpu::sampling::pool_planes;
pub use fastscnn_cpu::sampling::{depthwise_output_size, pool_window, source_index};

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType};

/// The data of a contiguous CPU tensor as a slice; the public wrappers make inputs contiguous, so a
/// strided layout here is a bug in the caller.
fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Whether a tensor can take the direct CPU kernels (CPU device, f32 or f64).
fn has_cpu_kernel(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// Whether a tensor can take the CUDA kernels of every op that has one: a build with the `cuda`
/// feature, a CUDA device, f32 and at least one element (the driver allocates no empty buffer).
fn has_cuda_kernel(t: &Tensor) -> bool {
    has_cuda_element_kernel(t) && t.dtype() == DType::F32
}

/// Whether a tensor can take the CUDA kernels of the memory-bound ops (depthwise convolution,
/// pooling, resize, resize + argmax), which also run on f16 and bf16: they compute in f32 and
/// round once on the store, so half precision halves their memory traffic and costs one rounding.
fn has_cuda_element_kernel(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && t.elem_count() > 0
}

/// Whether a tensor can take the kernels of the memory-bound ops, which have both CPU kernels
/// (f32, f64) and CUDA ones (f32, f16, bf16).
fn has_kernel(t: &Tensor) -> bool {
    has_cpu_kernel(t) || has_cuda_element_kernel(t)
}

/// The float types the CPU kernels run on: f32 and f64, as candle's dtype and as the sampling
/// code of `fastscnn-cpu` takes them.
trait Float: WithDType + fastscnn_cpu::Real {}

impl<T: WithDType + fastscnn_cpu::Real> Float for T {}

/// Independent partial sums per reduction: the adds pipeline instead of waiting on each other,
/// and vectorise, while every term is still summed in f64.
const LANES: usize = 8;

/// Σ f(v) over a slice, in f64, over [`LANES`] partial sums.
#[inline]
fn lane_sum<T: Float>(a: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|v| f(v.as_f64())).sum();
    for chunk in chunks {
        for lane in 0..LANES {
            acc[lane] += f(chunk[lane].as_f64());
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Inside `impl CustomOp1`, `CustomOp2` or `CustomOp3` for a [`Kernel`] of that many inputs: its
/// name, its CPU forward through [`run_kernel`] and, with the `cuda` feature, its CUDA forward
/// through `Kernel::run_cuda`; the op adds its backward pass, if it has one.
macro_rules! kernel_forwards {
    (1) => {
        fn name(&self) -> &'static str {
            <Self as $crate::ops::Kernel<1>>::NAME
        }

        fn cpu_fwd(
            &self,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $crate::ops::run_kernel(self, [(s, l)])
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            s: &candle_core::CudaStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            <Self as $crate::ops::Kernel<1>>::run_cuda(self, [(s, l)])
        }
    };
    (2) => {
        fn name(&self) -> &'static str {
            <Self as $crate::ops::Kernel<2>>::NAME
        }

        fn cpu_fwd(
            &self,
            s1: &candle_core::CpuStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CpuStorage,
            l2: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $crate::ops::run_kernel(self, [(s1, l1), (s2, l2)])
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CudaStorage,
            l2: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            <Self as $crate::ops::Kernel<2>>::run_cuda(self, [(s1, l1), (s2, l2)])
        }
    };
    (3) => {
        fn name(&self) -> &'static str {
            <Self as $crate::ops::Kernel<3>>::NAME
        }

        fn cpu_fwd(
            &self,
            s1: &candle_core::CpuStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CpuStorage,
            l2: &candle_core::Layout,
            s3: &candle_core::CpuStorage,
            l3: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            $crate::ops::run_kernel(self, [(s1, l1), (s2, l2), (s3, l3)])
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            s1: &candle_core::CudaStorage,
            l1: &candle_core::Layout,
            s2: &candle_core::CudaStorage,
            l2: &candle_core::Layout,
            s3: &candle_core::CudaStorage,
            l3: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
            <Self as $crate::ops::Kernel<3>>::run_cuda(self, [(s1, l1), (s2, l2), (s3, l3)])
        }
    };
}
use kernel_forwards;

/// `CustomOp1`, `CustomOp2` or `CustomOp3` for a kernel run forward only (a gradient, the
/// fused argmax): [`kernel_forwards`] alone.
macro_rules! forward_only_op {
    ($kernel:ty, 1) => {
        impl candle_core::CustomOp1 for $kernel {
            $crate::ops::kernel_forwards!(1);
        }
    };
    ($kernel:ty, 2) => {
        impl candle_core::CustomOp2 for $kernel {
            $crate::ops::kernel_forwards!(2);
        }
    };
    ($kernel:ty, 3) => {
        impl candle_core::CustomOp3 for $kernel {
            $crate::ops::kernel_forwards!(3);
        }
    };
}
use forward_only_op;

/// A kernel of `N` inputs of one float type: on the CPU written once for f32 and f64, on CUDA
/// (where the op has one) for f32, and for f16 and bf16 too where the op is memory-bound.
trait Kernel<const N: usize> {
    const NAME: &'static str;
    fn run<T: Float>(&self, inputs: [&[T]; N], shapes: [&Shape; N]) -> Result<(CpuStorage, Shape)>;

    /// f32 inputs: [`Kernel::run`], unless the op has a faster f32 path of its own (the
    /// inference engine's kernels, `fastscnn-cpu`'s dispatched ones), which computes the same.
    fn run_f32(&self, inputs: [&[f32]; N], shapes: [&Shape; N]) -> Result<(CpuStorage, Shape)> {
        self.run(inputs, shapes)
    }

    /// CUDA inputs (contiguous, not empty, of a dtype the op has a kernel for): the op's CUDA
    /// kernel, for the ops that have one (the public wrappers send CUDA tensors to no other).
    #[cfg(feature = "cuda")]
    fn run_cuda(
        &self,
        inputs: [(&candle_core::CudaStorage, &Layout); N],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let _ = inputs;
        bail!("{}: no CUDA kernel", Self::NAME)
    }
}

/// Runs `kernel` on `N` contiguous storages, all f32 or all f64 (the first one's type decides;
/// another dtype among the rest is an error): the ops' one f32/f64 dispatch, f32 through
/// [`Kernel::run_f32`].
fn run_kernel<const N: usize, K: Kernel<N>>(
    kernel: &K,
    inputs: [(&CpuStorage, &Layout); N],
) -> Result<(CpuStorage, Shape)> {
    fn slices<'a, T: WithDType, const N: usize>(
        name: &str,
        inputs: [(&'a CpuStorage, &Layout); N],
    ) -> Result<[&'a [T]; N]> {
        let mut out: [&[T]; N] = [&[]; N];
        for (slot, (storage, layout)) in out.iter_mut().zip(inputs) {
            *slot = contiguous_slice::<T>(storage, layout, name)?;
        }
        Ok(out)
    }
    let shapes = inputs.map(|(_, layout)| layout.shape());
    match inputs.first().map(|(storage, _)| storage) {
        Some(CpuStorage::F32(_)) => kernel.run_f32(slices::<f32, N>(K::NAME, inputs)?, shapes),
        Some(CpuStorage::F64(_)) => kernel.run(slices::<f64, N>(K::NAME, inputs)?, shapes),
        _ => bail!("{}: only f32 and f64 have a CPU kernel", K::NAME),
    }
}
