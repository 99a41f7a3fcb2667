//! `--weights FILE`: finding and loading the checkpoint every model command needs.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use fastscnn_model::{FastScnn, LoadOptions};

use crate::cli::WeightsArgs;

/// The local file the arguments name.
pub fn resolve(args: &WeightsArgs) -> Result<PathBuf> {
    Ok(args.weights.clone())
}

/// The network the checkpoint describes, BatchNorm folded, on `device`.
pub fn load_model(args: &WeightsArgs, device: &Device) -> Result<(FastScnn, PathBuf)> {
    let path = resolve(args)?;
    let options = LoadOptions {
        device: device.clone(),
        ..Default::default()
    };
    let model = FastScnn::from_file(&path, &options)?;
    Ok((model, path))
}
