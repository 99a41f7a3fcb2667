//! Which weights a command runs: a file, a Hub file, or those installed.

use std::path::PathBuf;

use crate::{default_weights_path, HubFile, Result, WeightsError};

/// Where a command's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSource {
    /// A checkpoint on disk (safetensors or PyTorch, either layout).
    File(PathBuf),
    /// A file of a Hub repository, through the Hugging Face cache.
    Hub(HubFile),
    /// The weights `fastscnn download` installed ([`default_weights_path`]).
    Installed,
}

impl WeightSource {
    /// The local file: the path given, the Hub file fetched (or found in the cache), or the
    /// installed weights, which must exist.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            WeightSource::File(path) => Ok(path.clone()),
            WeightSource::Hub(file) => file.fetch(),
            WeightSource::Installed => match default_weights_path() {
                Some(path) if path.is_file() => Ok(path),
                Some(path) => Err(WeightsError::NotInstalled { path }),
                None => Err(WeightsError::NoHome),
            },
        }
    }
}
