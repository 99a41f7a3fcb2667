use std::path::PathBuf;

use crate::EvalError;

/// Why training could not start or go on. Messages name the file or the step concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Returned when a recipe is refused before anything is built (out-of-range value, batch
    /// over the pixel budget), or when a training batch comes without labels.
    #[error("{0}")]
    Config(String),
    /// Returned when a checkpoint or a run folder cannot be used: nothing to resume from, a run
    /// already there, a folder locked by another process, a file that is incomplete or does not
    /// match the model.
    #[error("{}: {why}", path.display())]
    Checkpoint {
        /// The checkpoint file or run folder concerned.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Returned when a checkpoint, a log line or the run folder's lock cannot be written.
    #[error("{}: cannot write: {cause}", path.display())]
    Write {
        /// The file or folder being written.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// Returned when the loss of a step, or the weights at a checkpoint, are NaN or infinite;
    /// the last checkpoint written before is left as it was.
    #[error(
        "step {step}: the loss or the weights are not finite ({loss}); training stopped and the \
         last checkpoint (step {last_checkpoint}) is kept; lower the learning rate"
    )]
    NonFinite {
        /// The step (1-based) at which the loss or the weights were found not finite.
        step: u64,
        /// The non-finite value: the step's loss, or the sum of absolute values of a weight
        /// tensor.
        loss: f64,
        /// The step of the last checkpoint written, which the run can resume from (0 when none
        /// was written).
        last_checkpoint: u64,
    },
    /// Returned when a weight file (`--init` or a checkpoint) cannot be read, or holds values or
    /// a layout the model cannot use.
    #[error(transparent)]
    Model(#[from] fastscnn_model::ModelError),
    /// Returned when a split name is invalid or the split cannot be found, or when a training
    /// batch cannot be loaded.
    #[error(transparent)]
    Data(#[from] fastscnn_data::DataError),
    /// Returned when an evaluation error is passed on with `?` outside a validation run (a failed
    /// validation is `Validation`).
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Returned when a validation run fails; the checkpoint of that step is saved first.
    #[error("step {step}: validation failed (the checkpoint of step {step} is saved): {cause}")]
    Validation {
        /// The step validated.
        step: u64,
        /// Why the evaluation stopped.
        cause: EvalError,
    },
    /// Returned when a tensor operation fails: forward or backward pass, optimiser update,
    /// serialising or reading back a checkpoint.
    #[error("{}", fastscnn_model::candle_message(.0))]
    Candle(candle_core::Error),
}

/// candle's error as the `Candle` variant, which shows it and is the end of the chain (its
/// `source` is `None`): its message is already in ours.
impl From<candle_core::Error> for TrainError {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(error)
    }
}

/// The result of the training crate's fallible operations.
pub type Result<T> = std::result::Result<T, TrainError>;
