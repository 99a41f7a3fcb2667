//! What a run leaves in its folder, and reading it back. `last.safetensors` holds the weights in
//! the model's own key layout (loadable by `fastscnn segment --weights`) and, in the same file,
//! the momentum buffers (under [`TRAINING_STATE_PREFIX`]), the step, the best score and the run
//! configuration: one file renamed into place is one commit, so a kill at any instant leaves the
//! previous checkpoint or the new one, each whole and resumable. `best.safetensors` holds the
//! weights of the best validation score.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use fastscnn_core::atomic_write::write_durably;
use fastscnn_data::ClassTable;
use fastscnn_model::{WeightFile, CLASS_TABLE_KEY, TRAINING_STATE_PREFIX};

use crate::error::{Result, TrainError};
use crate::TrainConfig;

/// The latest checkpoint of a run: weights, optimiser state, step, best score and run
/// configuration in one file, rewritten at every validation and at the end.
pub const LAST: &str = "last.safetensors";
/// The optimiser state of a checkpoint kept in a second file: read when `last.safetensors`
/// carries none, and removed once a checkpoint carrying its own is written.
pub const LAST_STATE: &str = "last.state.safetensors";
/// The weights of the best validation mIoU so far, with that score in the metadata; written
/// only by runs that validate.
pub const BEST: &str = "best.safetensors";

/// Where training resumes from.
#[derive(Debug)]
pub struct SavedState {
    /// The run's recipe, as saved with the checkpoint.
    pub config: TrainConfig,
    /// Iterations done when the checkpoint was written; never more than `config.iters`.
    pub step: u64,
    /// The best validation mIoU so far; `None` when the run does not validate or no score has
    /// been defined yet.
    pub best_miou: Option<f64>,
    /// The SGD momentum buffers by parameter name, f32, finite and on the requested device.
    pub buffers: BTreeMap<String, Tensor>,
    /// The checkpoint file itself, its values checked; the weights are read from it.
    pub weights: WeightFile,
}

/// The weights of one checkpoint, as the model names them.
pub struct CheckpointWeights<'a> {
    /// Every tensor of the model, BatchNorm statistics included, under the key names of `layout`.
    pub tensors: HashMap<String, Tensor>,
    /// The name of the weight layout (`reference` or `openmmlab`), saved in the metadata.
    pub layout: &'a str,
    /// The classes the classifier outputs: their count and table are saved in the metadata.
    pub classes: &'a ClassTable,
    /// Iterations done when the weights were taken.
    pub step: u64,
    /// The validation mIoU at this step, when the run validates.
    pub miou: Option<f64>,
}

impl CheckpointWeights<'_> {
    fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::from([
            ("layout".to_string(), self.layout.to_string()),
            ("classes".to_string(), self.classes.len().to_string()),
            (CLASS_TABLE_KEY.to_string(), self.classes.to_json()),
            ("source".to_string(), "fastscnn train".to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        if let Some(miou) = self.miou {
            metadata.insert("miou".into(), format!("{miou}"));
        }
        metadata
    }
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
    write_durably(path, |tmp| std::fs::write(tmp, &bytes)).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        cause: source,
    })
}

/// Writes weights alone as `name` in `dir` (the best checkpoint).
pub fn save_weights(dir: &Path, name: &str, weights: CheckpointWeights) -> Result<PathBuf> {
    let path = dir.join(name);
    let metadata = weights.metadata();
    write_safetensors(&path, weights.tensors, metadata)?;
    Ok(path)
}

/// Writes `last.safetensors`: the weights with the optimiser state and run configuration, in one
/// file.
pub fn save_last(
    dir: &Path,
    weights: CheckpointWeights,
    config: &TrainConfig,
    best_miou: Option<f64>,
    buffers: &BTreeMap<String, Tensor>,
) -> Result<PathBuf> {
    let path = dir.join(LAST);
    let mut metadata = weights.metadata();
    metadata.insert(
        "config".into(),
        serde_json::to_string(config).expect("the config serialises"),
    );
    if let Some(best) = best_miou {
        metadata.insert("best_miou".into(), format!("{best:e}"));
    }
    let mut tensors = weights.tensors;
    for (name, buffer) in buffers {
        tensors.insert(
            format!("{TRAINING_STATE_PREFIX}momentum.{name}"),
            buffer.clone(),
        );
    }
    write_safetensors(&path, tensors, metadata)?;
    // The state now travels with the weights; a second file would only be stale.
    let _ = std::fs::remove_file(dir.join(LAST_STATE));
    Ok(path)
}

fn problem(path: &Path, why: String) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        why,
    }
}

fn read_step(file: &WeightFile) -> Result<u64> {
    file.metadata()
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| problem(file.path(), "no `step` in the metadata".into()))
}

/// Reads `last.safetensors` back with its optimiser state.
pub fn load_last(dir: &Path, device: &Device) -> Result<SavedState> {
    let weights_path = dir.join(LAST);
    if !weights_path.is_file() {
        return Err(problem(
            dir,
            format!("no checkpoint to resume from (no {LAST})"),
        ));
    }
    let weights = WeightFile::open_safetensors(&weights_path)?;
    weights.check_values()?;
    let step = read_step(&weights)?;
    let separate;
    let (state, stored) = if weights.training_state().is_empty() {
        separate = separate_state(dir, step)?;
        (&separate, separate.tensors())
    } else {
        (&weights, weights.training_state())
    };
    let meta = state.metadata();
    let config: TrainConfig = meta
        .get("config")
        .and_then(|c| serde_json::from_str(c).ok())
        .ok_or_else(|| problem(state.path(), "no readable run configuration".into()))?;
    let best_miou = meta.get("best_miou").and_then(|v| v.parse().ok());
    if step > config.iters {
        return Err(problem(
            &weights_path,
            format!("is from step {step} of a {}-iteration run", config.iters),
        ));
    }
    let mut buffers = BTreeMap::new();
    for (key, tensor) in stored {
        let name = key
            .strip_prefix("momentum.")
            .ok_or_else(|| problem(state.path(), format!("unexpected state tensor `{key}`")))?;
        // The momentum feeds every later step: a wrong type or a NaN would spoil the weights.
        if tensor.dtype() != DType::F32 {
            return Err(problem(
                state.path(),
                format!(
                    "state tensor `{key}` has dtype {:?}, not f32",
                    tensor.dtype()
                ),
            ));
        }
        let values = tensor.flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(problem(
                state.path(),
                format!("state tensor `{key}` holds {} at index {i}", values[i]),
            ));
        }
        buffers.insert(name.to_string(), tensor.to_device(device)?);
    }
    Ok(SavedState {
        config,
        step,
        best_miou,
        buffers,
        weights,
    })
}

/// The optimiser state of a checkpoint that keeps it in [`LAST_STATE`], which must be from the
/// same step as the weights.
fn separate_state(dir: &Path, step: u64) -> Result<WeightFile> {
    let state_path = dir.join(LAST_STATE);
    if !state_path.is_file() {
        return Err(problem(
            &dir.join(LAST),
            "holds weights without the optimiser state a run resumes from".into(),
        ));
    }
    let state = WeightFile::open_safetensors(&state_path)?;
    let state_step = read_step(&state)?;
    if state_step != step {
        return Err(problem(
            dir,
            format!(
                "{LAST} is from step {step} but {LAST_STATE} from step {state_step}; resume from \
                 a copy of the one you trust"
            ),
        ));
    }
    Ok(state)
}
