use std::path::PathBuf;

/// Why a model could not be loaded or run. Every variant that concerns a file names it, so the
/// message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: cannot read weights", path.display())]
    ReadWeights {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{}: cannot write weights", path.display())]
    WriteWeights {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: missing tensor `{key}` (the model expects shape {expected:?})", path.display())]
    MissingTensor {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{}: tensor `{key}` has shape {found:?}, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{}: {} unexpected tensor(s): {}", path.display(), keys.len(), summarise(keys))]
    UnexpectedTensors { path: PathBuf, keys: Vec<String> },
    #[error("{}: tensor `{key}` {why}", path.display())]
    BadTensor {
        path: PathBuf,
        key: String,
        why: String,
    },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{}: not a Fast-SCNN checkpoint in a known layout ({reason})", path.display())]
    UnknownLayout { path: PathBuf, reason: String },
    #[error(transparent)]
    Image(#[from] fastscnn_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

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
