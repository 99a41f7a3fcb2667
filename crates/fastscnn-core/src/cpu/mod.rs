//! Inference on plain f32 buffers for the CPU: the network's layers with BatchNorm folded, run by
//! kernels written for the shapes Fast-SCNN has, instead of through candle's generic ops.
//!
//! candle runs each conv, bias, BatchNorm and ReLU as its own pass with a freshly allocated output,
//! and a 1x1 conv through reshapes and copies around its matrix product. Here a layer is one pass:
//! the pointwise convs are one GEMM on the NCHW layout with bias, shortcut and ReLU applied to each
//! output panel while it is in cache ([`pointwise`]), the depthwise convs are vectorised direct
//! kernels with bias and ReLU fused ([`depthwise`]), the stem is a banded im2col GEMM ([`dense`]),
//! the final upsampling is separable and can end in the argmax without storing the logits
//! ([`resize`]), and feature maps come from a [`BufferPool`] that outlives the frame. Training and
//! other devices keep using candle.

mod blocks;
mod buffers;
mod dense;
mod depthwise;
mod epilogue;
// Its packing is portable; the kernel, and so most of the rest, is x86-64 only.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod gemm_avx512;
mod pointwise;
mod resize;
pub(crate) mod simd;

pub use blocks::{
    AnyConv, Bottleneck, Classifier, FeatureFusion, PyramidPooling, SeparableConv, StemSeparable,
};
pub use buffers::{zeroed_vec, Buffer, BufferPool, Zeroable};
pub use dense::DenseConv;
pub use depthwise::DepthwiseConv;
pub use gemm_avx512::PackedWeights;
pub use pointwise::{PointwiseConv, Seed};
pub use resize::{resize_argmax_planes, resize_planes};
pub use simd::Isa;

/// A raw output pointer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: every user writes through the pointer only at ranges no other task touches.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the `Send` wrapper rather than its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}
