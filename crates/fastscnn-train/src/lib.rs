//! Training and evaluation of Fast-SCNN: the paper's recipe (cross-entropy with auxiliary losses,
//! optional OHEM, SGD with momentum and selective weight decay, poly learning rate), checkpoints
//! that resume bit for bit, and the evaluation metrics and loop shared by validation and
//! `fastscnn eval`.

#![warn(missing_docs)]

pub mod checkpoint;
mod config;
mod error;
pub mod evaluation;
pub mod loss;
pub mod metrics;
pub mod optimizer;
mod run_dir;
pub mod schedule;
pub mod step;
pub mod trainable;
pub mod trainer;

pub use config::{Augment, TrainConfig, MAX_SCALE};
pub use error::{Result, TrainError};
pub use evaluation::{evaluate, EvalError, Evaluation};
pub use loss::{cross_entropy, resize_then_cross_entropy, Ohem, SegmentationLoss};
pub use metrics::{ConfusionMatrix, MetricsError};
pub use optimizer::Sgd;
pub use schedule::PolyLr;
pub use step::TrainStep;
pub use trainable::TrainableModel;
pub use trainer::{Event, Runtime, StepReport, Trainer};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
