//! `--weights FILE` or `--hf-repo OWNER/NAME`: finding and loading the checkpoint every model
//! command needs.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use fastscnn_model::{ExecutionContext, FastScnn, Isa, LoadOptions, ModelError};

use crate::cli::WeightsArgs;
use crate::precision::Precision;

/// The local file the arguments name, fetched from the Hub first if need be.
pub fn resolve(args: &WeightsArgs) -> Result<PathBuf> {
    Ok(args.source()?.resolve()?)
}

/// The network the checkpoint describes, BatchNorm folded, on `device`, in `precision`.
pub fn load_model(
    args: &WeightsArgs,
    device: &Device,
    precision: Precision,
    context: &ExecutionContext,
) -> Result<(FastScnn, PathBuf)> {
    let path = resolve(args)?;
    let options = LoadOptions {
        device: device.clone(),
        dtype: precision.dtype(),
        context: Some(context.clone()),
        ..Default::default()
    };
    let model = FastScnn::from_file(&path, &options).map_err(|e| match e {
        ModelError::DType { .. } => anyhow!("--dtype {}: {e}", precision.name()),
        e => e.into(),
    })?;
    Ok((model, path))
}

/// `--isa` chooses the kernels of the fused CPU path: refused for a model that runs through
/// candle's ops (a GPU, `--candle-ops`), where it would change nothing.
pub fn check_isa_applies(isa: Option<Isa>, model: &FastScnn) -> Result<()> {
    match isa {
        Some(isa) if !model.uses_cpu_kernels() => bail!(
            "--isa {}: the network runs through candle's ops here (a GPU or --candle-ops), which \
             take no instruction set",
            isa.name()
        ),
        _ => Ok(()),
    }
}
