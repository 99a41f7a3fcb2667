//! Any checkpoint `fastscnn-model` reads, written as safetensors.

use std::fmt;
use std::path::{Path, PathBuf};

use fastscnn_model::{FastScnn, LoadOptions, ModelError, WeightFile, WeightLayout};

use crate::{Result, WeightsError};

/// Whether a file already at the output may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse: it may be the user's own weights. A file that appears while the new one is being
    /// written is kept too (on file systems without hard links, only until the last instant:
    /// see `fastscnn_core::atomic_write::write_durably_new`).
    Never,
    /// Replace it, atomically: the old file stays whole until the new one is complete.
    Existing,
}

/// A checkpoint written as safetensors.
#[derive(Debug)]
pub struct Converted {
    /// The tensors and metadata written.
    pub weights: WeightFile,
    /// The layout of the checkpoint's key names: the reference implementation's or OpenMMLab's.
    pub layout: WeightLayout,
    /// The number of classes the network outputs.
    pub classes: usize,
    /// What it was converted from (a path, URL or `hf://` name).
    pub from: String,
    /// The safetensors file written.
    pub output: PathBuf,
}

impl fmt::Display for Converted {
    /// One line: `FROM -> OUTPUT: LAYOUT layout, N classes, N tensors`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}: {} layout, {} classes, {} tensors",
            self.from,
            self.output.display(),
            self.layout,
            self.classes,
            self.weights.len()
        )
    }
}

/// Reads `input` (PyTorch `.pth`/`.pt` or safetensors, either layout), checks that it builds a
/// Fast-SCNN, and writes it to `output` (a complete file or none) with `layout`, `classes` and
/// `source` metadata, key names unchanged and `num_batches_tracked` dropped. `source` is
/// recorded as the origin instead of the input's file name.
pub fn convert(
    input: &Path,
    output: &Path,
    source: Option<&str>,
    replace: Replace,
) -> Result<Converted> {
    let weights = checked(input, source)?;
    let from = source.map_or_else(|| input.display().to_string(), str::to_string);
    write(weights, from, output, replace)
}

/// The checkpoint at `input`, refused unless it builds a network (a layout, a class count, every
/// tensor in place), with `source` recorded.
pub(crate) fn checked(
    input: &Path,
    source: Option<&str>,
) -> std::result::Result<WeightFile, ModelError> {
    let mut weights = WeightFile::open(input)?;
    FastScnn::from_weights(&weights, &LoadOptions::default())?;
    if let Some(source) = source {
        weights = weights.with_metadata("source", source);
    }
    Ok(weights)
}

/// Writes `weights` to `output` as safetensors.
pub(crate) fn write(
    weights: WeightFile,
    from: String,
    output: &Path,
    replace: Replace,
) -> Result<Converted> {
    let saved = match replace {
        Replace::Existing => weights.save_safetensors(output),
        Replace::Never => weights.save_safetensors_new(output),
    };
    match saved {
        Ok(()) => {}
        Err(ModelError::WriteWeights { cause: source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            return Err(WeightsError::Exists {
                path: output.to_path_buf(),
            })
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Converted {
        layout: weights.layout()?,
        classes: weights.num_classes()?,
        weights,
        from,
        output: output.to_path_buf(),
    })
}
