//! Operations that candle lacks or runs slowly, as candle custom ops.
//!
//! Each op has a direct CPU kernel (f32 and f64) and, on every other device or dtype, a fallback
//! composed of candle's own ops, so CUDA and Metal builds work from day one. The composite paths
//! double as the reference the CPU kernels are tested against.

mod adaptive_avg_pool;
mod batch_norm;
mod bilinear_resize;
mod cross_entropy;
mod depthwise_conv;
mod resize_argmax;

pub use adaptive_avg_pool::{adaptive_avg_pool2d, adaptive_avg_pool2d_composite};
pub use batch_norm::{batch_norm_train, batch_norm_train_composite, channel_mean_var};
pub use bilinear_resize::{resize_bilinear, resize_bilinear_composite};
pub use cross_entropy::{
    softmax_cross_entropy, softmax_cross_entropy_composite, target_probabilities,
};
pub use depthwise_conv::{depthwise_conv2d, depthwise_conv2d_grouped};
pub use resize_argmax::resize_argmax;

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

/// The float types the CPU kernels run on: f32 and f64, as candle's dtype and as the sampling
/// code of `fastscnn-cpu` takes them.
trait Float: WithDType + fastscnn_cpu::Real {}

impl<T: WithDType + fastscnn_cpu::Real> Float for T {}

/// A one-input CPU kernel written once for any float type.
trait PlaneKernel {
    const NAME: &'static str;
    fn run<T: Float>(&self, x: &[T], shape: &Shape) -> Result<(CpuStorage, Shape)>;
}

/// Runs `kernel` on f32 or f64 storage; the public wrappers send nothing else here.
fn run_f32_or_f64<K: PlaneKernel>(
    kernel: &K,
    storage: &CpuStorage,
    layout: &Layout,
) -> Result<(CpuStorage, Shape)> {
    match storage {
        CpuStorage::F32(_) => kernel.run(
            contiguous_slice::<f32>(storage, layout, K::NAME)?,
            layout.shape(),
        ),
        CpuStorage::F64(_) => kernel.run(
            contiguous_slice::<f64>(storage, layout, K::NAME)?,
            layout.shape(),
        ),
        _ => bail!("{}: only f32 and f64 have a CPU kernel", K::NAME),
    }
}
