//! The Fast-SCNN network (Poudel et al., arXiv 1902.04502) on candle: configuration and the presets
//! of both public implementations (reference and OpenMMLab), strict loading of their checkpoints
//! (safetensors or PyTorch `.pth`, layout told from the key names), and the inference outputs
//! (logits, probabilities, label map).
//!
//! ```no_run
//! use fastscnn_model::{load_rgb_image, Segmenter, SegmenterOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let segmenter = Segmenter::from_file("fastscnn.safetensors", &SegmenterOptions::default())?;
//! let labels = segmenter.segment(&load_rgb_image("frame.png")?)?; // a class (u8) per pixel
//! # Ok(()) }
//! ```
//!
//! [`Segmenter`] is the plain-buffer API: RGB bytes in, label maps and scores as `Vec`s out.
//! [`FastScnn`] is the tensor API beneath it, on candle tensors of any device.

#![warn(missing_docs)]

mod config;
pub mod cpu_blocks;
mod cpu_inference;
mod error;
mod fast_scnn;
mod layout;
pub mod pickle;
mod preprocess;
mod pytorch;
mod segmenter;
pub mod stages;
mod weights;

/// candle, at the version this crate is built with: its types appear in the tensor API.
pub use candle_core;
pub use candle_core::{DType, Device, Module, Tensor};
/// The `image` crate, at the version this crate is built with: [`RgbImage`] is the API's image.
pub use image;
pub use image::RgbImage;

pub use config::{AuxSource, FastScnnConfig};
pub use error::{ModelError, Result};
pub use fast_scnn::{FastScnn, FastScnnStages, LoadOptions, TrainingScores};
pub use fastscnn_core::layers::BatchNormMode;
pub use fastscnn_core::{candle_message, Normalization};
pub use fastscnn_cpu::{keep_freed_memory, ContextError, ExecutionContext, Isa, Tuning};
pub use fastscnn_data::palette::Palette;
pub use layout::WeightLayout;
pub use preprocess::{
    image_to_tensor, load_rgb_image, load_rgb_image_within, resize_image, scaled_size,
    DEFAULT_MAX_PIXELS,
};
pub use segmenter::{ClassScores, LabelMap, RgbFrame, Segmenter, SegmenterOptions};
pub use stages::{GlobalFeatureExtractor, LearningToDownsample};
pub use weights::{WeightFile, WeightFormat, CLASS_TABLE_KEY, TRAINING_STATE_PREFIX};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
