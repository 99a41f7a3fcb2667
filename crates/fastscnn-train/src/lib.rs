//! Training and evaluation of Fast-SCNN. So far: the evaluation metrics (confusion matrix, per-class
//! IoU, mIoU, pixel accuracy) shared by validation during training and `fastscnn eval`.

pub mod metrics;

pub use metrics::{ConfusionMatrix, MetricsError};
