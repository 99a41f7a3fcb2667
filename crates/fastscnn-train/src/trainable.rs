//! A Fast-SCNN whose tensors are variables: BatchNorm kept separate (batch statistics in
//! training), weights initialised as OpenMMLab does or taken from a checkpoint.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use fastscnn_core::layers::{BatchNormMode, NormOptions};
use fastscnn_model::{FastScnn, FastScnnConfig, WeightFile};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::optimizer::{decays, Param};

/// BatchNorm statistics: variables updated by the forward pass, not by the optimiser.
fn is_statistic(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// A Fast-SCNN in training: the network and the map of its variables, which the optimiser
/// updates and checkpoints save.
pub struct TrainableModel {
    /// The network; its tensors are the variables, so it always computes with the current
    /// weights.
    pub model: FastScnn,
    varmap: VarMap,
}

impl TrainableModel {
    /// Builds `config` on `device` (f32) with fresh weights drawn from `seed`: convolution weights
    /// Kaiming-normal (fan-out, ReLU gain), biases 0, BatchNorm scale 1 and shift 0.
    pub fn new(config: &FastScnnConfig, device: &Device, seed: u64) -> Result<Self> {
        Self::with_dtype(config, device, DType::F32, seed)
    }

    /// [`TrainableModel::new`] with variables of `dtype`: f32 trains; f64 (on the CPU) computes a
    /// step to within f64 rounding, for comparing it with another implementation's step.
    pub fn with_dtype(
        config: &FastScnnConfig,
        device: &Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let norm = NormOptions {
            mode: BatchNormMode::Unfolded,
            eps: config.bn_eps,
        };
        let model = FastScnn::new(config, norm, vb)?;
        let trainable = Self { model, varmap };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, var) in trainable.sorted_vars() {
            if let [c_out, _, kh, kw] = var.dims() {
                if name.ends_with(".weight") {
                    let fan_out = (c_out * kh * kw) as f32;
                    let normal = Normal::new(0f32, (2.0 / fan_out).sqrt()).expect("positive std");
                    let values: Vec<f32> = (0..var.elem_count())
                        .map(|_| normal.sample(&mut rng))
                        .collect();
                    var.set(&Tensor::from_vec(values, var.dims(), device)?.to_dtype(var.dtype())?)?;
                }
            }
        }
        Ok(trainable)
    }

    /// Every variable by canonical name, sorted, so that iteration order never depends on a hash.
    pub fn sorted_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// What the optimiser updates, each with its weight-decay decision.
    pub fn params(&self) -> Vec<Param> {
        self.sorted_vars()
            .into_iter()
            .filter(|(name, _)| !is_statistic(name))
            .map(|(name, var)| Param {
                decay: decays(&name, var.dims()),
                name,
                var,
            })
            .collect()
    }

    /// The current tensors under the names of the model's layout, as `fastscnn` loads them.
    pub fn layout_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let layout = self.model.config().layout;
        self.sorted_vars()
            .into_iter()
            .map(|(name, var)| Ok((layout.file_key(&name), var.as_tensor().copy()?)))
            .collect()
    }

    /// Overwrites variables with a checkpoint's tensors (read under the checkpoint's own layout,
    /// which must be this model's). Variables the file lacks keep their values when
    /// `allow_missing` (e.g. auxiliary heads absent from published weights); a shape mismatch is
    /// always an error.
    pub fn load(&self, weights: &WeightFile, allow_missing: bool) -> crate::Result<usize> {
        Ok(self.load_parts(weights, allow_missing, false)?.0)
    }

    /// Starts fine-tuning from `weights`, which may classify other classes (another count, or
    /// other names): every variable is loaded (those the file lacks keep their fresh values)
    /// but, for other classes, the classifying layers — the classifier's and the auxiliary
    /// heads' last convolution, whose first dimension is the class count — which keep their
    /// fresh initialisation. Returns the keys of the tensors left re-initialised, in the file's
    /// layout.
    pub fn load_for_fine_tuning(&self, weights: &WeightFile) -> crate::Result<Vec<String>> {
        Ok(self.load_parts(weights, true, true)?.1)
    }

    fn load_parts(
        &self,
        weights: &WeightFile,
        allow_missing: bool,
        new_classes: bool,
    ) -> crate::Result<(usize, Vec<String>)> {
        // Weights without a classifier (a backbone) have no classes to compare.
        let file_table = weights.class_table().ok();
        let classes = self.model.classes();
        // The weights' classifying layers are not for these classes: another count, or other
        // names (Cityscapes' 19 for weights without a table).
        let other_classes = file_table
            .as_ref()
            .is_some_and(|t| t.len() != classes.len() || t.names() != classes.names());
        let file_classes = file_table.as_ref().map_or(0, |t| t.len());
        // A classifying layer: the class count first, the rest of the shape as the model's.
        let classifying = |file: &[usize], model: &[usize]| {
            new_classes
                && other_classes
                && file.first() == Some(&file_classes)
                && model.first() == Some(&classes.len())
                && file[1..] == model[1..]
        };
        let mut reinitialised = Vec::new();
        let file_layout = weights.layout()?;
        let layout = self.model.config().layout;
        if file_layout != layout {
            return Err(checkpoint_error(
                weights,
                format!("{file_layout} layout, the model being trained is {layout}"),
            ));
        }
        let mut loaded = 0;
        for (name, var) in self.sorted_vars() {
            let key = layout.file_key(&name);
            match weights.get(&key) {
                Some(t) if t.dims() == var.dims() => {
                    var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                    loaded += 1;
                }
                Some(t) if classifying(t.dims(), var.dims()) => reinitialised.push(key),
                Some(t) => {
                    return Err(checkpoint_error(
                        weights,
                        format!(
                            "`{key}` has shape {:?}, the model expects {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ))
                }
                None if allow_missing => {}
                None => return Err(checkpoint_error(weights, format!("missing tensor `{key}`"))),
            }
        }
        Ok((loaded, reinitialised))
    }
}

fn checkpoint_error(weights: &WeightFile, why: String) -> crate::TrainError {
    crate::TrainError::Checkpoint {
        path: weights.path().to_path_buf(),
        why,
    }
}
