//! Training and evaluation of Fast-SCNN. So far: the evaluation metrics (confusion matrix, per-class
//! and category IoU, mIoU, pixel accuracy) and the scoring of a model on a labelled split, shared
//! by validation during training and `fastscnn eval`.

pub mod evaluation;
pub mod metrics;

pub use evaluation::{evaluate, EvalError, Evaluation};
pub use metrics::{ConfusionMatrix, MetricsError};
