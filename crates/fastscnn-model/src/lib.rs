//! The Fast-SCNN network (Poudel et al., arXiv 1902.04502) on candle: configuration and the presets
//! of both public implementations (reference and OpenMMLab), strict loading of their checkpoints
//! (safetensors or PyTorch `.pth`, layout told from the key names), and the inference outputs
//! (logits, probabilities, label map).
//!
//! ```no_run
//! use candle_core::Device;
//! use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = FastScnn::from_file("fastscnn.safetensors", &LoadOptions::default())?;
//! let image = load_rgb_image("frame.png")?;
//! let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu)?;
//! let labels = model.predict(&input)?; // (1, H, W) u32 class indices
//! # Ok(()) }
//! ```

mod config;
pub mod cpu_blocks;
mod cpu_inference;
mod error;
mod fast_scnn;
mod layout;
pub mod pickle;
mod preprocess;
mod pytorch;
pub mod stages;
mod weights;

pub use config::{AuxSource, FastScnnConfig};
pub use error::{ModelError, Result};
pub use fast_scnn::{FastScnn, FastScnnStages, LoadOptions};
pub use fastscnn_core::layers::BatchNormMode;
pub use fastscnn_core::Normalization;
pub use fastscnn_cpu::{ExecutionContext, Isa, Tuning};
pub use layout::WeightLayout;
pub use preprocess::{
    image_to_tensor, load_rgb_image, load_rgb_image_within, resize_image, scaled_size,
    DEFAULT_MAX_PIXELS,
};
pub use stages::{GlobalFeatureExtractor, LearningToDownsample};
pub use weights::{WeightFile, WeightFormat, TRAINING_STATE_PREFIX};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
