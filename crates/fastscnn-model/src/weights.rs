//! Strict weight loading: every tensor the network asks for must be present with the right shape,
//! and every tensor in the file must be used, so a checkpoint of another model or another layout
//! fails loudly at load time instead of producing plausible garbage.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};

/// BatchNorm's step counter, stored by PyTorch but meaningless for inference.
const IGNORED_SUFFIXES: &[&str] = &["num_batches_tracked"];

/// The tensors of one checkpoint, keyed by their PyTorch state_dict names.
#[derive(Debug, Clone)]
pub struct WeightFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl WeightFile {
    /// Reads a safetensors file onto the CPU.
    pub fn open_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|source| {
            ModelError::ReadWeights {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Self::from_tensors(path, tensors))
    }

    /// Wraps tensors that came from elsewhere; `origin` is the name errors will use.
    pub fn from_tensors(origin: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> Self {
        let tensors = tensors
            .into_iter()
            .filter(|(k, _)| !IGNORED_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .collect();
        Self {
            path: origin.into(),
            tensors,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Runs `build` with a `VarBuilder` over these tensors and turns its first missing or misshapen
    /// tensor, or any tensor it left unused, into a [`ModelError`] naming the key.
    pub fn build<T>(
        &self,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    ) -> Result<T> {
        let tracker = Tracker {
            file: self,
            used: Mutex::new(BTreeSet::new()),
            problem: Mutex::new(None),
        };
        let vb = VarBuilder::from_backend(Box::new(&tracker), dtype, device.clone());
        let built = build(vb);
        if let Some(problem) = tracker.problem.lock().expect("tracker lock").take() {
            return Err(problem);
        }
        let built = built?;
        let used = tracker.used.into_inner().expect("tracker lock");
        let mut unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(ModelError::UnexpectedTensors {
                path: self.path.clone(),
                keys: unexpected,
            });
        }
        Ok(built)
    }
}

/// The `VarBuilder` backend behind [`WeightFile::build`]: records what was used and the first
/// problem met, since candle's error type cannot carry ours.
struct Tracker<'a> {
    file: &'a WeightFile,
    used: Mutex<BTreeSet<String>>,
    problem: Mutex<Option<ModelError>>,
}

impl Tracker<'_> {
    fn fail(&self, error: ModelError) -> candle_core::Error {
        let message = error.to_string();
        self.problem
            .lock()
            .expect("tracker lock")
            .get_or_insert(error);
        candle_core::Error::Msg(message)
    }

    /// Records `name` as used and returns its tensor in the asked dtype and device.
    fn hand_out(
        &self,
        name: &str,
        tensor: &Tensor,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.used
            .lock()
            .expect("tracker lock")
            .insert(name.to_string());
        tensor.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for &Tracker<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(tensor) = self.file.tensors.get(name) else {
            return Err(self.fail(ModelError::MissingTensor {
                path: self.file.path.clone(),
                key: name.to_string(),
                expected: shape.dims().to_vec(),
            }));
        };
        if tensor.shape() != &shape {
            return Err(self.fail(ModelError::ShapeMismatch {
                path: self.file.path.clone(),
                key: name.to_string(),
                expected: shape.dims().to_vec(),
                found: tensor.dims().to_vec(),
            }));
        }
        self.hand_out(name, tensor, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.file.tensors.get(name) {
            Some(tensor) => self.hand_out(name, tensor, dtype, dev),
            None => Err(self.fail(ModelError::MissingTensor {
                path: self.file.path.clone(),
                key: name.to_string(),
                expected: vec![],
            })),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.file.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &[usize])]) -> WeightFile {
        let tensors = entries
            .iter()
            .map(|(k, s)| {
                (
                    k.to_string(),
                    Tensor::zeros(*s, DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        WeightFile::from_tensors("w.safetensors", tensors)
    }

    fn load_a(vb: VarBuilder) -> candle_core::Result<Tensor> {
        vb.get((2, 3), "a")
    }

    #[test]
    fn loads_exact_match_and_skips_step_counters() {
        let f = file(&[("a", &[2, 3]), ("bn.num_batches_tracked", &[])]);
        assert_eq!(f.len(), 1);
        let t = f.build(DType::F32, &Device::Cpu, load_a).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
    }

    #[test]
    fn missing_key_is_named_with_expected_shape() {
        let err = file(&[("b", &[2, 3])])
            .build(DType::F32, &Device::Cpu, load_a)
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::MissingTensor { key, expected, .. } if key == "a" && expected == &[2, 3])
        );
        assert_eq!(
            err.to_string(),
            "w.safetensors: missing tensor `a` (the model expects shape [2, 3])"
        );
    }

    #[test]
    fn wrong_shape_names_both_shapes() {
        let err = file(&[("a", &[3, 2])])
            .build(DType::F32, &Device::Cpu, load_a)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "w.safetensors: tensor `a` has shape [3, 2], the model expects [2, 3]"
        );
    }

    #[test]
    fn unused_tensors_are_reported() {
        let err = file(&[("a", &[2, 3]), ("extra.weight", &[1])])
            .build(DType::F32, &Device::Cpu, load_a)
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::UnexpectedTensors { keys, .. } if keys == &["extra.weight"])
        );
    }
}
