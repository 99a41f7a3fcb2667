//! Any checkpoint `fastscnn-model` reads, written as safetensors.

use std::fmt;
use std::path::{Path, PathBuf};

use fastscnn_model::{FastScnn, LoadOptions, WeightFile, WeightLayout};

use crate::Result;

/// A checkpoint written as safetensors.
#[derive(Debug)]
pub struct Converted {
    pub weights: WeightFile,
    pub layout: WeightLayout,
    pub classes: usize,
    /// What it was converted from (a path, URL or `hf://` name).
    pub from: String,
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
/// Fast-SCNN, and writes it to `output` (atomically: a complete file or none) with `layout`,
/// `classes` and `source` metadata, key names unchanged and `num_batches_tracked` dropped.
/// `source` is recorded as the origin instead of the input's file name.
pub fn convert(input: &Path, output: &Path, source: Option<&str>) -> Result<Converted> {
    let mut weights = WeightFile::open(input)?;
    // Refuse what would not load later: a layout, a class count, and every tensor in place.
    FastScnn::from_weights(&weights, &LoadOptions::default())?;
    if let Some(source) = source {
        weights = weights.with_metadata("source", source);
    }
    weights.save_safetensors(output)?;
    Ok(Converted {
        layout: weights.layout()?,
        classes: weights.num_classes()?,
        weights,
        from: source.map_or_else(|| input.display().to_string(), str::to_string),
        output: output.to_path_buf(),
    })
}
