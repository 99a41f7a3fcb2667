//! Building blocks of Fast-SCNN (Poudel et al., arXiv 1902.04502) on candle.
//!
//! [`layers`] holds the network's modules; [`ops`] the operations candle lacks or runs slowly
//! (the convolutions, training BatchNorm, adaptive average pooling, bilinear resize, the loss), as
//! custom ops with direct CPU kernels and candle-composite fallbacks on other devices. The kernels
//! of the fused CPU inference engine are `fastscnn-cpu`'s, on plain buffers; this crate's ops run
//! them where they share a pass and its sampling code (bilinear source indices, pooling windows),
//! so both follow PyTorch the same way.

#![warn(missing_docs)]

pub mod atomic_write;
mod candle_message;
pub mod layers;
mod normalization;
pub mod ops;

pub use candle_message::candle_message;
pub use normalization::Normalization;

pub use candle_core as candle;
pub use candle_nn;

#[doc(hidden)]
pub mod testing;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
