//! Fast-SCNN's building blocks as candle modules, each loaded from a `VarBuilder` whose key names
//! follow the reference PyTorch implementation (the canonical layout of this project).

mod bottleneck;
mod classifier;
mod conv;
mod conv_bn_act;
mod dsconv;
mod feature_fusion;
mod mode;
mod pyramid_pooling;

pub use bottleneck::LinearBottleneck;
pub use classifier::{AuxHead, Classifier};
pub use conv::{Conv2d, ConvConfig};
pub use conv_bn_act::{BatchNormMode, ConvBnAct, NormOptions};
pub use dsconv::DSConv;
pub use feature_fusion::{FeatureFusion, FeatureFusionConfig};
pub use mode::{dropout, Mode};
pub use pyramid_pooling::{PyramidPooling, PyramidPoolingConfig};
