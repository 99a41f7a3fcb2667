//! What a run leaves in its folder, and reading it back: `last.safetensors` (the weights in the
//! model's own key layout, loadable by `fastscnn segment --weights`), `last.state.safetensors`
//! (momentum buffers, step, best score and the run configuration), `best.safetensors`. Every file
//! is written to a temporary name and renamed, the weights last, so a killed run leaves the
//! previous checkpoint whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use fastscnn_core::atomic_write::write_atomically;
use fastscnn_model::WeightFile;

use crate::error::{Result, TrainError};
use crate::TrainConfig;

pub const LAST: &str = "last.safetensors";
pub const LAST_STATE: &str = "last.state.safetensors";
pub const BEST: &str = "best.safetensors";

/// Where training resumes from.
#[derive(Debug)]
pub struct SavedState {
    pub config: TrainConfig,
    pub step: u64,
    pub best_miou: Option<f64>,
    pub buffers: BTreeMap<String, Tensor>,
    pub weights: WeightFile,
}

fn write_safetensors(
    path: &Path,
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| TrainError::Candle(e.into()))?;
    write_atomically(path, |tmp| std::fs::write(tmp, &bytes)).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the weights (under the model's layout names) as `name` in `dir`.
pub fn save_weights(
    dir: &Path,
    name: &str,
    tensors: HashMap<String, Tensor>,
    layout: &str,
    classes: usize,
    step: u64,
    extra: &[(&str, String)],
) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut metadata = HashMap::from([
        ("layout".to_string(), layout.to_string()),
        ("classes".to_string(), classes.to_string()),
        ("source".to_string(), "fastscnn train".to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    for (k, v) in extra {
        metadata.insert(k.to_string(), v.clone());
    }
    write_safetensors(&path, tensors, metadata)?;
    Ok(path)
}

/// Writes the optimiser state and run configuration beside the weights.
pub fn save_state(
    dir: &Path,
    config: &TrainConfig,
    step: u64,
    best_miou: Option<f64>,
    buffers: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let mut metadata = HashMap::from([
        ("step".to_string(), step.to_string()),
        (
            "config".to_string(),
            serde_json::to_string(config).expect("the config serialises"),
        ),
    ]);
    if let Some(best) = best_miou {
        metadata.insert("best_miou".into(), format!("{best:e}"));
    }
    let tensors = buffers
        .iter()
        .map(|(k, v)| (format!("momentum.{k}"), v.clone()))
        .collect();
    write_safetensors(&dir.join(LAST_STATE), tensors, metadata)
}

/// Reads `last.*` back, checking that the two files belong to the same step.
pub fn load_last(dir: &Path, device: &Device) -> Result<SavedState> {
    let state_path = dir.join(LAST_STATE);
    let weights_path = dir.join(LAST);
    let problem = |path: &Path, why: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        why,
    };
    if !state_path.is_file() || !weights_path.is_file() {
        return Err(problem(
            dir,
            format!("no checkpoint to resume from (needs {LAST} and {LAST_STATE})"),
        ));
    }
    let state = WeightFile::open_safetensors(&state_path)?;
    let meta = state.metadata();
    let read_step = |file: &WeightFile, path: &Path| -> Result<u64> {
        file.metadata()
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| problem(path, "no `step` in the metadata".into()))
    };
    let step = read_step(&state, &state_path)?;
    let config: TrainConfig = meta
        .get("config")
        .and_then(|c| serde_json::from_str(c).ok())
        .ok_or_else(|| problem(&state_path, "no readable run configuration".into()))?;
    let best_miou = meta.get("best_miou").and_then(|v| v.parse().ok());
    let mut buffers = BTreeMap::new();
    for (key, tensor) in state.tensors() {
        let name = key
            .strip_prefix("momentum.")
            .ok_or_else(|| problem(&state_path, format!("unexpected tensor `{key}`")))?;
        buffers.insert(name.to_string(), tensor.to_device(device)?);
    }
    let weights = WeightFile::open_safetensors(&weights_path)?;
    let weights_step = read_step(&weights, &weights_path)?;
    if weights_step != step {
        return Err(problem(
            dir,
            format!(
                "{LAST} is from step {weights_step} but {LAST_STATE} from step {step}; the run \
                 was stopped while saving, resume from a copy of the one you trust"
            ),
        ));
    }
    Ok(SavedState {
        config,
        step,
        best_miou,
        buffers,
        weights,
    })
}
