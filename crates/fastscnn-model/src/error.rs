use std::path::PathBuf;

use fastscnn_core::candle_message;

/// Why a model could not be loaded or run. Every variant that concerns a file names it, and every
/// message carries its cause, so the message alone tells the user what to fix; the causes are
/// fields (`cause`), not `source()`, so that reporters that print the chain do not repeat them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A weight file could not be opened or parsed as safetensors.
    #[error("{}: cannot read weights: {}", path.display(), candle_message(cause))]
    ReadWeights {
        /// The weight file.
        path: PathBuf,
        /// What reading it reported.
        cause: candle_core::Error,
    },
    /// A weight file could not be written.
    #[error("{}: cannot write weights: {cause}", path.display())]
    WriteWeights {
        /// The file being written.
        path: PathBuf,
        /// What the file system reported.
        cause: std::io::Error,
    },
    /// The checkpoint lacks a tensor the network needs.
    #[error("{}: missing tensor `{key}` (the model expects shape {expected:?})", path.display())]
    MissingTensor {
        /// The weight file.
        path: PathBuf,
        /// The tensor's name as the file's layout spells it.
        key: String,
        /// The shape the network needs.
        expected: Vec<usize>,
    },
    /// A tensor of the checkpoint has another shape than the network's.
    #[error("{}: tensor `{key}` has shape {found:?}, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        /// The weight file.
        path: PathBuf,
        /// The tensor's name as the file's layout spells it.
        key: String,
        /// The shape the network needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The checkpoint holds tensors the network has no place for (loading is strict).
    #[error("{}: {} unexpected tensor(s): {}", path.display(), keys.len(), summarise(keys))]
    UnexpectedTensors {
        /// The weight file.
        path: PathBuf,
        /// Every tensor name the network does not use.
        keys: Vec<String>,
    },
    /// A tensor's values cannot be used (not finite, a negative variance, a non-float dtype).
    #[error("{}: tensor `{key}` {why}", path.display())]
    BadTensor {
        /// The weight file.
        path: PathBuf,
        /// The tensor's name in the file.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The file is damaged: truncated, inconsistent offsets, an unreadable pickle.
    #[error("{}: {why}", path.display())]
    Corrupt {
        /// The weight file.
        path: PathBuf,
        /// What is damaged.
        why: String,
    },
    /// The key names match neither public layout of Fast-SCNN's weights.
    #[error("{}: not a Fast-SCNN checkpoint in a known layout ({reason})", path.display())]
    UnknownLayout {
        /// The weight file.
        path: PathBuf,
        /// Which keys gave it away.
        reason: String,
    },
    /// An input the network cannot take: its rank, channels, size, dtype or device.
    #[error("{0}")]
    Input(String),
    /// The network cannot be built in this dtype on this device.
    #[error("{dtype:?} weights on {device}: {why}")]
    DType {
        /// The dtype asked for.
        dtype: candle_core::DType,
        /// The device, in words.
        device: &'static str,
        /// Why not, and what runs instead.
        why: &'static str,
    },
    /// The model has no class, or more than a label map of bytes holds below the ignore value 255.
    #[error(
        "the model has {classes} classes; a label map of bytes holds 1 to 255 \
         (FastScnn::predict gives u32 labels)"
    )]
    ClassCount {
        /// The model's class count.
        classes: usize,
    },
    /// The execution context asked for cannot be made (an instruction set the processor lacks,
    /// threads that cannot start).
    #[error(transparent)]
    Context(#[from] fastscnn_cpu::ContextError),
    /// An image could not be read or decoded.
    #[error(transparent)]
    Image(#[from] fastscnn_data::DataError),
    /// A tensor operation failed: a device error, or the weights' dtype unsupported there.
    #[error("{}", candle_message(.0))]
    Candle(candle_core::Error),
}

/// candle's error as the `Candle` variant, which shows it and is the end of the chain (its
/// `source` is `None`): its message is already in ours.
impl From<candle_core::Error> for ModelError {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(error)
    }
}

/// Model errors where candle's are expected (inside a `Module` or a training closure): the
/// error as it is, or candle's own when it is one.
impl From<ModelError> for candle_core::Error {
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// What the fallible functions of this crate return.
pub type Result<T> = std::result::Result<T, ModelError>;

fn summarise(keys: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn the_message_carries_the_cause_and_the_chain_ends_here() {
        let read = ModelError::ReadWeights {
            path: "w.safetensors".into(),
            cause: candle_core::Error::Msg("header too large".into()).bt(),
        };
        let write = ModelError::WriteWeights {
            path: "out.safetensors".into(),
            cause: std::io::Error::other("disk full"),
        };
        let candle: ModelError = candle_core::Error::Msg("out of memory".into()).into();
        for (error, message) in [
            (read, "w.safetensors: cannot read weights: header too large"),
            (write, "out.safetensors: cannot write weights: disk full"),
            (candle, "out of memory"),
        ] {
            assert_eq!(error.to_string(), message);
            assert!(error.source().is_none(), "{message} would be printed twice");
        }
    }
}
