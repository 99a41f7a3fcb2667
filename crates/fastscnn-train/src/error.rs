use std::path::PathBuf;

use crate::EvalError;

/// Why training could not start or go on. Messages name the file or the step concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error("{}: {why}", path.display())]
    Checkpoint { path: PathBuf, why: String },
    #[error("{}: cannot write", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "step {step}: the loss or the weights are not finite ({loss}); training stopped and the \
         last checkpoint (step {last_checkpoint}) is kept; lower the learning rate"
    )]
    NonFinite {
        step: u64,
        loss: f64,
        last_checkpoint: u64,
    },
    #[error(transparent)]
    Model(#[from] fastscnn_model::ModelError),
    #[error(transparent)]
    Data(#[from] fastscnn_data::DataError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("step {step}: validation failed (the checkpoint of step {step} is saved): {source}")]
    Validation { step: u64, source: EvalError },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;
