//! The paper's four stages as candle modules, with the blocks only they use: learning to
//! downsample, the global feature extractor (linear bottlenecks and pyramid pooling), feature
//! fusion and the classifier (with the auxiliary heads training adds). Each loads from a
//! `VarBuilder` whose key names follow the reference PyTorch implementation; the general layers
//! they are built of (convolutions, BatchNorm, DSConv) are `fastscnn_core::layers`. [`plan`] is
//! the order they run in, which both the candle network and the fused CPU engine follow.

mod bottleneck;
mod classifier;
mod feature_fusion;
mod global_feature_extractor;
mod learning_to_downsample;
pub mod plan;
mod pyramid_pooling;

pub use bottleneck::LinearBottleneck;
pub use classifier::{AuxHead, Classifier};
pub use feature_fusion::{FeatureFusion, FeatureFusionConfig};
pub use global_feature_extractor::GlobalFeatureExtractor;
pub use learning_to_downsample::LearningToDownsample;
pub use plan::{run_plan, Stage, StageExecutor, StageInput, StageTimer};
pub use pyramid_pooling::{PyramidPooling, PyramidPoolingConfig};
