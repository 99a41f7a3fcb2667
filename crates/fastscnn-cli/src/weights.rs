//! `--weights FILE` or `--hf-repo OWNER/NAME`: finding and loading the checkpoint every model
//! command needs.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use fastscnn_model::{ExecutionContext, FastScnn, Isa, LoadOptions};

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
    let options = LoadOptions {
        device: device.clone(),
        dtype: precision.dtype(),
        context: Some(context.clone()),
        ..Default::default()
    };
    // Before the weights are fetched.
    options
        .validate()
        .map_err(|e| anyhow!("--dtype {}: {e}", precision.name()))?;
    let path = resolve(args)?;
    let model = FastScnn::from_file(&path, &options)?;
    Ok((model, path))
}

/// `--isa` chooses the kernels of the fused CPU path: refused for a model that runs through
/// candle's ops (a GPU, `--candle-ops`, `--dtype f16`), where it would change nothing.
pub fn check_isa_applies(isa: Option<Isa>, model: &FastScnn) -> Result<()> {
    match isa {
        Some(isa) if !model.uses_cpu_kernels() => bail!(
            "--isa {}: the network runs through candle's ops here (a GPU, --candle-ops or \
             --dtype f16), which take no instruction set",
            isa.name()
        ),
        _ => Ok(()),
    }
}
