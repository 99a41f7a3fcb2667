//! `cargo xtask convert IN OUT.safetensors`: any checkpoint fastscnn reads, as safetensors.

use std::path::Path;

use anyhow::{Context, Result};
use fastscnn_model::WeightFile;

/// Reads `input` (PyTorch `.pth`/`.pt` or safetensors, either layout), checks that it builds a
/// Fast-SCNN, and writes it to `output` with `layout`, `classes` and `source` metadata, key names
/// unchanged and `num_batches_tracked` dropped. `source` overrides the recorded origin.
pub fn convert(input: &Path, output: &Path, source: Option<&str>) -> Result<WeightFile> {
    let mut weights = WeightFile::open(input)?;
    // Refuse what would not load later: a layout, a class count, and every tensor in place.
    fastscnn_model::FastScnn::from_weights(&weights, &Default::default())?;
    if let Some(source) = source {
        weights = weights.with_metadata("source", source);
    }
    weights
        .save_safetensors(output)
        .with_context(|| format!("converting {}", input.display()))?;
    Ok(weights)
}

/// One line describing a conversion from `from`.
pub fn summary(weights: &WeightFile, from: &str, output: &Path) -> Result<String> {
    Ok(format!(
        "{from} -> {}: {} layout, {} classes, {} tensors",
        output.display(),
        weights.layout()?,
        weights.num_classes()?,
        weights.len()
    ))
}
