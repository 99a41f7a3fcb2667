//! Strict weight loading: every tensor the network asks for must be present with the right shape,
//! and every tensor in the file must be used, so a checkpoint of another model or another layout
//! fails loudly at load time instead of producing plausible garbage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{ModelError, Result};
use crate::layout::{WeightLayout, CLASSIFIER_KEY};
use fastscnn_core::atomic_write::{write_durably, write_durably_new};
use fastscnn_data::ClassTable;

/// BatchNorm's step counter, stored by PyTorch but meaningless for inference.
const IGNORED_SUFFIXES: &[&str] = &["num_batches_tracked"];

/// BatchNorm statistics: stored with the weights but not learned by gradient descent.
const BUFFER_SUFFIXES: &[&str] = &["running_mean", "running_var"];

/// Keys under this prefix are a training run's optimiser state, saved in the same file as the
/// weights so that the two are committed together: kept apart from the weights, never loaded
/// into a network.
pub const TRAINING_STATE_PREFIX: &str = "train_state.";

/// Where a zip archive starts; PyTorch's `torch.save` writes one since 1.6.
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// Pickle protocol 2's opening bytes: PyTorch's legacy (pre-1.6) format.
const LEGACY_PICKLE_MAGIC: &[u8] = &[0x80, 0x02];

/// How a checkpoint file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// A safetensors file, with its string metadata: the format this crate saves.
    Safetensors,
    /// A PyTorch `torch.save` zip archive (`.pth`, `.pt`), read without Python.
    PyTorch,
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::PyTorch => "pytorch",
        })
    }
}

/// The metadata key of a weight file's class table (its `classes.json`, in the object form).
pub const CLASS_TABLE_KEY: &str = "class_table";

/// The tensors of one checkpoint, keyed by their state_dict names.
#[derive(Debug, Clone)]
pub struct WeightFile {
    path: PathBuf,
    format: WeightFormat,
    tensors: HashMap<String, Tensor>,
    training_state: HashMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
}

impl WeightFile {
    /// Reads a checkpoint onto the CPU, telling safetensors from a PyTorch archive by its first
    /// bytes rather than its extension.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Safetensors: an 8-byte header length, then the JSON header's `{`.
        let mut head = [0u8; 9];
        let mut read = 0;
        let mut file = File::open(path).map_err(|source| read_error(path, source.into()))?;
        // A device or a pipe would be read without end.
        match file.metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                let why = "not a regular file".to_string();
                return Err(read_error(path, candle_core::Error::Msg(why)));
            }
            Err(source) => return Err(read_error(path, source.into())),
        }
        while read < head.len() {
            match file.read(&mut head[read..]) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(source) => return Err(read_error(path, source.into())),
            }
        }
        let head = &head[..read];
        let refuse = |why: &str| Err(read_error(path, candle_core::Error::Msg(why.into())));
        if head.starts_with(ZIP_MAGIC) {
            Self::open_pytorch(path)
        } else if head.starts_with(LEGACY_PICKLE_MAGIC) {
            refuse(
                "a PyTorch checkpoint in the legacy pre-1.6 format; re-save it with a current \
                 torch.save",
            )
        } else if head.len() == 9 && head[8] == b'{' {
            Self::open_safetensors(path)
        } else {
            refuse("neither safetensors nor a PyTorch (zip) checkpoint")
        }
    }

    /// Reads a safetensors file onto the CPU, with its string metadata.
    pub fn open_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| read_error(path, source.into()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|source| read_error(path, source))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|source| read_error(path, source.into()))?;
        let metadata = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut file = Self::from_tensors(path, tensors);
        file.metadata = metadata;
        Ok(file)
    }

    /// Reads a PyTorch zip checkpoint: a bare state_dict (`torch.save(model.state_dict())`) or a
    /// dict holding one under `state_dict` or `model` (mmsegmentation, most trainers), through
    /// this crate's own pickle reader, which trusts nothing in the file. A `module.` prefix left by
    /// `DataParallel` is removed.
    pub fn open_pytorch(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tensors = strip_data_parallel_prefix(crate::pytorch::read_state_dict(path)?);
        let mut file = Self::from_tensors(path, tensors);
        file.format = WeightFormat::PyTorch;
        Ok(file)
    }

    /// Wraps tensors that came from elsewhere; `origin` is the name errors will use.
    /// Keys under [`TRAINING_STATE_PREFIX`] go to [`WeightFile::training_state`].
    pub fn from_tensors(origin: impl Into<PathBuf>, tensors: HashMap<String, Tensor>) -> Self {
        let (training_state, tensors): (HashMap<_, _>, HashMap<_, _>) = tensors
            .into_iter()
            .filter(|(k, _)| !IGNORED_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .partition(|(k, _)| k.starts_with(TRAINING_STATE_PREFIX));
        let training_state = training_state
            .into_iter()
            .map(|(k, v)| (k[TRAINING_STATE_PREFIX.len()..].to_string(), v))
            .collect();
        Self {
            path: origin.into(),
            format: WeightFormat::Safetensors,
            tensors,
            training_state,
            metadata: BTreeMap::new(),
        }
    }

    /// The optimiser state a training checkpoint carries beside its weights, by key without
    /// [`TRAINING_STATE_PREFIX`]; empty for other files.
    pub fn training_state(&self) -> &HashMap<String, Tensor> {
        &self.training_state
    }

    /// The file the tensors were read from, or the `origin` given to
    /// [`WeightFile::from_tensors`]: the name errors use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the file was stored; `Safetensors` for tensors wrapped with
    /// [`WeightFile::from_tensors`].
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Adds or replaces one metadata entry, written by [`WeightFile::save_safetensors`].
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The safetensors header's string metadata (empty for PyTorch files).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The key layout, from the key names.
    pub fn layout(&self) -> Result<WeightLayout> {
        WeightLayout::detect(self.keys()).ok_or_else(|| ModelError::UnknownLayout {
            path: self.path.clone(),
            reason: "its keys match neither the reference layout (`learning_to_downsample.*`) \
                     nor OpenMMLab's (`backbone.*`)"
                .into(),
        })
    }

    /// The number of classes the classifier was trained for: the first dimension of its last
    /// convolution's weight.
    pub fn num_classes(&self) -> Result<usize> {
        let layout = self.layout()?;
        let key = layout.file_key(CLASSIFIER_KEY);
        let unknown = |reason: String| ModelError::UnknownLayout {
            path: self.path.clone(),
            reason,
        };
        let classifier = self
            .get(&key)
            .ok_or_else(|| unknown(format!("{layout} layout without a `{key}` tensor")))?;
        match classifier.dims() {
            [classes, _, 1, 1] if *classes > 0 => match self.metadata.get("classes") {
                Some(said) if said.parse() != Ok(*classes) => Err(unknown(format!(
                    "its metadata says {said} classes but `{key}` has {classes}"
                ))),
                _ => Ok(*classes),
            },
            dims => Err(unknown(format!(
                "`{key}` has shape {dims:?}, expected (classes, C, 1, 1)"
            ))),
        }
    }

    /// The classes the weights were trained on: the table in the metadata's `class_table`
    /// (written by [`WeightFile::with_class_table`]) when there is one, with as many classes as
    /// the classifier; otherwise [`ClassTable::for_count`] of the classifier's count (Cityscapes'
    /// for 19).
    pub fn class_table(&self) -> Result<ClassTable> {
        let classes = self.num_classes()?;
        let Some(json) = self.metadata.get(CLASS_TABLE_KEY) else {
            return Ok(ClassTable::for_count(classes));
        };
        let corrupt = |why: String| ModelError::Corrupt {
            path: self.path.clone(),
            why: format!("metadata `{CLASS_TABLE_KEY}`: {why}"),
        };
        let table = ClassTable::from_json(json).map_err(corrupt)?;
        if table.len() != classes {
            return Err(corrupt(format!(
                "{} classes, but the classifier has {classes}",
                table.len()
            )));
        }
        Ok(table)
    }

    /// These weights with `classes` in their metadata, saved with them.
    pub fn with_class_table(self, classes: &ClassTable) -> Self {
        self.with_metadata(CLASS_TABLE_KEY, classes.to_json())
    }

    /// Writes these tensors as safetensors (step counters already dropped) with metadata naming
    /// the layout, the class count and the file they came from, through a temporary file renamed
    /// into place.
    pub fn save_safetensors(&self, dest: impl AsRef<Path>) -> Result<()> {
        self.save(dest.as_ref(), true)
    }

    /// [`Self::save_safetensors`] to a file that must not exist: if one appears there before the
    /// new file is complete, it is kept and the save fails ([`ModelError::WriteWeights`] with an
    /// [`std::io::ErrorKind::AlreadyExists`] source).
    pub fn save_safetensors_new(&self, dest: impl AsRef<Path>) -> Result<()> {
        self.save(dest.as_ref(), false)
    }

    fn save(&self, dest: &Path, replace: bool) -> Result<()> {
        let mut metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        metadata.insert("layout".into(), self.layout()?.name().into());
        metadata.insert("classes".into(), self.num_classes()?.to_string());
        if !metadata.contains_key("source") {
            let source = self.path.file_name().unwrap_or(self.path.as_os_str());
            metadata.insert("source".into(), source.to_string_lossy().into_owned());
        }
        let mut tensors = self
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = safetensors::serialize(tensors, Some(metadata))
            .map_err(|e| ModelError::Candle(e.into()))?;
        let write = |tmp: &Path| std::fs::write(tmp, &bytes);
        let written = if replace {
            write_durably(dest, write)
        } else {
            write_durably_new(dest, write)
        };
        written.map_err(|source| ModelError::WriteWeights {
            path: dest.to_path_buf(),
            cause: source,
        })
    }

    /// Checks every tensor's values as loading a network does (floating point, finite,
    /// BatchNorm variances non-negative): for callers that read the tensors themselves, such as
    /// training from `--init` weights.
    pub fn check_values(&self) -> Result<()> {
        let mut keys: Vec<&String> = self.tensors.keys().collect();
        keys.sort();
        for key in keys {
            if let Some(why) = value_problem(key, &self.tensors[key])? {
                return Err(ModelError::BadTensor {
                    path: self.path.clone(),
                    key: key.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// The number of learned values: every tensor except BatchNorm's running statistics.
    pub fn parameter_count(&self) -> usize {
        self.count_parameters(|_| true)
    }

    /// The learned values of the auxiliary heads, which only training uses: the paper's 1.11M
    /// parameters are the rest.
    pub fn auxiliary_parameter_count(&self) -> Result<usize> {
        let layout = self.layout()?;
        Ok(self.count_parameters(|key| layout.is_auxiliary(key)))
    }

    fn count_parameters(&self, include: impl Fn(&str) -> bool) -> usize {
        self.tensors
            .iter()
            .filter(|(k, _)| !BUFFER_SUFFIXES.iter().any(|s| k.ends_with(s)) && include(k))
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// Every tensor, by key, for writing elsewhere.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The tensor under `key`, a name as the file has it (its layout's, not the canonical one).
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Whether the file has a tensor under `key`, a name as the file has it.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Every tensor's key, in no particular order; BatchNorm step counters and the training state
    /// are not among them.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The number of tensors, BatchNorm step counters and the training state not included.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors (the training state aside).
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Runs `build` with a `VarBuilder` over these tensors, which asks for canonical names and
    /// reads them under their `layout` names, and turns its first missing or misshapen tensor, or
    /// any tensor it left unused, into a [`ModelError`] naming the key as the file has it.
    pub fn build<T>(
        &self,
        layout: WeightLayout,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
    ) -> Result<T> {
        let tracker = Tracker {
            file: self,
            layout,
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
    layout: WeightLayout,
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

    /// Records `name` as used and returns its tensor in the asked dtype and device, once its
    /// values are known to be weights: floats, finite, and non-negative where they are
    /// BatchNorm variances. Anything else would load and run, and label every pixel alike.
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
        if let Some(why) = value_problem(name, tensor)? {
            return Err(self.fail(ModelError::BadTensor {
                path: self.file.path.clone(),
                key: name.to_string(),
                why,
            }));
        }
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
        let name = &self.layout.file_key(name);
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
        let name = &self.layout.file_key(name);
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
        self.file.contains(&self.layout.file_key(name))
    }
}

/// What is wrong with the values of a weight tensor, if anything.
fn value_problem(name: &str, tensor: &Tensor) -> candle_core::Result<Option<String>> {
    if !tensor.dtype().is_float() {
        return Ok(Some(format!(
            "has dtype {:?}; weights are floating point",
            tensor.dtype()
        )));
    }
    let values = tensor
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Ok(Some(format!("holds {} at index {i}", values[i])));
    }
    if name.ends_with("running_var") {
        if let Some(i) = values.iter().position(|&v| v < 0.0) {
            return Ok(Some(format!(
                "holds {} at index {i}: a BatchNorm variance cannot be negative",
                values[i]
            )));
        }
    }
    Ok(None)
}

fn read_error(path: &Path, source: candle_core::Error) -> ModelError {
    ModelError::ReadWeights {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// `torch.nn.DataParallel` saves every key under `module.`; drop it when all keys have it.
fn strip_data_parallel_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    const PREFIX: &str = "module.";
    if tensors.is_empty() || !tensors.keys().all(|k| k.starts_with(PREFIX)) {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| (k[PREFIX.len()..].to_string(), v))
        .collect()
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
        let t = f
            .build(WeightLayout::Reference, DType::F32, &Device::Cpu, load_a)
            .unwrap();
        assert_eq!(t.dims(), &[2, 3]);
    }

    #[test]
    fn missing_key_is_named_with_expected_shape() {
        let err = file(&[("b", &[2, 3])])
            .build(WeightLayout::Reference, DType::F32, &Device::Cpu, load_a)
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
            .build(WeightLayout::Reference, DType::F32, &Device::Cpu, load_a)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "w.safetensors: tensor `a` has shape [3, 2], the model expects [2, 3]"
        );
    }

    #[test]
    fn layout_renames_what_the_builder_asks_for() {
        let f = file(&[("backbone.learning_to_downsample.conv.bn.bias", &[4])]);
        let t = f
            .build(WeightLayout::OpenMmlab, DType::F32, &Device::Cpu, |vb| {
                vb.get(4, "learning_to_downsample.conv.conv.1.bias")
            })
            .unwrap();
        assert_eq!(t.dims(), &[4]);
        let err = f
            .build(WeightLayout::OpenMmlab, DType::F32, &Device::Cpu, |vb| {
                vb.get(4, "learning_to_downsample.conv.conv.1.weight")
            })
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("missing tensor `backbone.learning_to_downsample.conv.bn.weight`"));
    }

    #[test]
    fn data_parallel_prefix_is_dropped_only_when_every_key_has_it() {
        let t = || Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let all = HashMap::from([("module.a".to_string(), t()), ("module.b".to_string(), t())]);
        let mut keys: Vec<_> = strip_data_parallel_prefix(all).into_keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        let some = HashMap::from([("module.a".to_string(), t()), ("b".to_string(), t())]);
        assert!(strip_data_parallel_prefix(some).contains_key("module.a"));
    }

    #[test]
    fn parameters_exclude_batch_norm_statistics() {
        let f = file(&[
            ("conv.weight", &[4, 2, 3, 3]),
            ("bn.weight", &[4]),
            ("bn.running_mean", &[4]),
            ("bn.running_var", &[4]),
        ]);
        assert_eq!(f.parameter_count(), 72 + 4);
    }

    #[test]
    fn unused_tensors_are_reported() {
        let err = file(&[("a", &[2, 3]), ("extra.weight", &[1])])
            .build(WeightLayout::Reference, DType::F32, &Device::Cpu, load_a)
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::UnexpectedTensors { keys, .. } if keys == &["extra.weight"])
        );
    }
}
