//! Fast-SCNN's inference on plain f32 buffers for the CPU: the network's layers with BatchNorm
//! folded, run by kernels written for the shapes Fast-SCNN has, instead of through candle's
//! generic ops. Nothing here knows candle: the blocks are built from weight vectors
//! (`fastscnn-model` builds them from its loaded layers).
//!
//! candle runs each conv, bias, BatchNorm and ReLU as its own pass with a freshly allocated output,
//! and a 1x1 conv through reshapes and copies around its matrix product. Here:
//!
//! - a 1x1 conv ([`PointwiseConv`]) is one product on the NCHW layout, on AVX-512, AVX2 and NEON
//!   machines by a kernel whose bias, shortcut and ReLU are applied in registers before the only
//!   store ([`PackedWeights`]), elsewhere by the `gemm` crate followed by one pass per cache-sized
//!   panel;
//! - depthwise convs ([`DepthwiseConv`]) are direct kernels: in intrinsics for AVX-512 and AVX2,
//!   and portable code the compiler vectorises for each [`Isa`] (NEON on aarch64);
//! - dense convs ([`DenseConv`]: the stem, OpenMMLab's 3x3 pyramid-pooling output) are im2col over
//!   bands of rows and the same product;
//! - the blocks ([`StemSeparable`], [`SeparableConv`], [`FusedBottleneck`], [`FusedFeatureFusion`],
//!   [`FusedClassifier`]) run band by band of output rows, so that the maps between their layers (the
//!   stem's output, the bottlenecks' 6x-wide tensors) exist only a few rows at a time, in cache;
//! - the final upsampling is separable and can end in the argmax without storing the logits
//!   ([`resize_planes`], [`resize_argmax_planes`]), or in a one-pass softmax
//!   ([`softmax_planes`]);
//! - feature maps ([`FeatureMap`]) come from a [`BufferPool`] that outlives the frame.
//! - outputs are written once, into memory the allocator may have kept from the previous frame
//!   ([`output_vec`], and [`keep_freed_memory`] for a process that wants it kept).
//!
//! Training runs through candle's autograd and the custom ops of `fastscnn-core`, which take their
//! kernels from here: the forward passes above in f32, and for training the convolutions written
//! once for f32 and f64 with their gradients ([`depthwise_forward`], [`depthwise_input_grad`],
//! [`depthwise_weight_grad`], [`turned_kernels`], [`dense_forward`], [`dense_weight_grad`],
//! [`dense_input_grad`], [`pointwise_forward`], [`pointwise_weight_grad`],
//! [`pointwise_input_grad`]), BatchNorm's passes ([`batch_norm_moment`],
//! [`batch_norm_normalize`], [`batch_norm_grad_sums`], [`batch_norm_input_grad`]) and the loss
//! ([`cross_entropy_planes`], and of upsampled scores [`resize_cross_entropy_planes`]); other
//! devices use candle alone.

#![warn(missing_docs)]

mod allocator;
mod batch_norm;
mod blocks;
mod buffers;
mod context;
mod cross_entropy;
mod dense;
mod dense_gradients;
mod depthwise;
mod epilogue;
mod feature_map;
#[cfg(target_arch = "x86_64")]
mod gemm_avx2;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod gemm_neon;
mod packed_gemm;
mod pointwise;
mod pointwise_gradients;
mod real;
mod resize;
pub mod sampling;
pub(crate) mod simd;
mod softmax;
mod tuning;

pub use allocator::keep_freed_memory;
pub use batch_norm::{
    batch_norm_grad_sums, batch_norm_input_grad, batch_norm_moment, batch_norm_normalize,
    InputGradTerms,
};
pub use blocks::{
    AnyConv, FusedBottleneck, FusedClassifier, FusedFeatureFusion, FusedPyramidPooling,
    SeparableConv, StemSeparable,
};
pub use buffers::{output_vec, zeroed_vec, Buffer, BufferPool, Zeroable};
pub use context::{ContextError, ExecutionContext};
pub use cross_entropy::cross_entropy_planes;
pub use dense::DenseConv;
pub use dense_gradients::{dense_forward, dense_input_grad, dense_weight_grad, DenseGeometry};
pub use depthwise::{
    depthwise_forward, depthwise_input_grad, depthwise_weight_grad, turned_kernels, DepthwiseConv,
};
pub use feature_map::{FeatureMap, MapView};
pub use packed_gemm::PackedWeights;
pub use pointwise::{PointwiseConv, Seed};
pub use pointwise_gradients::{
    pointwise_forward, pointwise_input_grad, pointwise_weight_grad, PointwiseGeometry,
};
pub use real::Real;
pub use resize::{
    resize_argmax_forward, resize_argmax_min_scratch_len, resize_argmax_planes,
    resize_argmax_scratch_len, resize_cross_entropy_planes, resize_forward, resize_grad,
    resize_planes, resize_planes_uninit,
};
pub use simd::Isa;
pub use softmax::softmax_planes;
pub use tuning::Tuning;

/// A raw output pointer that parallel tasks write disjoint parts of.
struct SendPtr<T = f32>(*mut T);

// Copy for every `T`, not only `T: Copy` as derive would ask: it copies the pointer.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: every user writes through the pointer only at ranges no other task touches.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so closures capture the `Send` wrapper rather than its field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// Runs `test` on a two-thread context of each instruction set this processor has, so that one
/// test binary covers every kernel; a failure says which set failed.
#[cfg(test)]
fn on_every_isa(test: impl Fn(Isa) + Sync) {
    struct Named(Isa);
    impl Drop for Named {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("(this failure is on the {} kernels)", self.0.name());
            }
        }
    }
    for isa in Isa::available() {
        let context = ExecutionContext::new(isa, Some(2)).unwrap();
        let _named = Named(isa);
        context.install(|| test(isa));
    }
}

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
