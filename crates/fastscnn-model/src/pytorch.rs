//! PyTorch `torch.save` archives, read without Python and without trusting them: the zip's
//! `data.pkl` parsed into plain values by [`crate::pickle`], the state_dict found in them (the
//! object itself, or its `state_dict` or `model` entry), and each tensor record read from its
//! storage entry once its shape, strides and size are checked against the bytes there.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::pickle::{self, Value};

type Archive = zip::ZipArchive<BufReader<File>>;

/// The largest pickle read: a state_dict's is kilobytes.
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// The largest number of bytes deflate makes of one compressed byte.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Every tensor of the archive's state_dict, by key. Entries that are not tensors (metadata,
/// step counts as numbers) are left out; a tensor record that cannot be read is an error naming
/// it.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let corrupt = |why: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(|source| ModelError::ReadWeights {
        path: path.to_path_buf(),
        source: source.into(),
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| corrupt(format!("not a readable zip archive ({e})")))?;
    let pickles: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    if pickles.is_empty() {
        return Err(corrupt(
            "a zip archive without `data.pkl`: not a PyTorch checkpoint".into(),
        ));
    }
    let mut tensors = HashMap::new();
    for name in pickles {
        let bytes =
            read_pickle(&mut archive, &name).map_err(|why| corrupt(format!("`{name}`: {why}")))?;
        let value = pickle::parse(&bytes).map_err(|e| corrupt(format!("`{name}`: {e}")))?;
        let Some(entries) = state_dict(&value) else {
            continue;
        };
        let prefix = &name[..name.len() - "data.pkl".len()];
        for (key, record) in entries {
            let (Some(key), Some(args)) = (key.as_str(), tensor_args(record)) else {
                continue;
            };
            let tensor = read_tensor(&mut archive, file_len, prefix, args)
                .map_err(|why| corrupt(format!("tensor `{key}`: {why}")))?;
            tensors.insert(key.to_string(), tensor);
        }
    }
    if tensors.is_empty() {
        return Err(corrupt(
            "a PyTorch archive without tensors: neither a state_dict nor a dict holding one under \
             `state_dict` or `model`"
                .into(),
        ));
    }
    Ok(tensors)
}

fn read_pickle(archive: &mut Archive, name: &str) -> std::result::Result<Vec<u8>, String> {
    let entry = archive.by_name(name).map_err(|e| e.to_string())?;
    if entry.size() > MAX_PICKLE_BYTES {
        return Err(format!(
            "{} bytes, more than any checkpoint's",
            entry.size()
        ));
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The entries of the dict holding the tensors: the pickled object when it holds tensor
/// records, else its `state_dict` or `model` entry (mmsegmentation, most trainers).
fn state_dict(value: &Value) -> Option<&[(Value, Value)]> {
    if let Some(entries) = holding_tensors(value) {
        return Some(entries);
    }
    let Value::Dict(entries) = value.unbuilt() else {
        return None;
    };
    ["state_dict", "model"].into_iter().find_map(|key| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .and_then(|(_, v)| holding_tensors(v))
    })
}

/// The entries of `value` when it is a dict holding at least one tensor record.
fn holding_tensors(value: &Value) -> Option<&[(Value, Value)]> {
    match value.unbuilt() {
        Value::Dict(entries) if entries.iter().any(|(_, v)| tensor_args(v).is_some()) => {
            Some(entries.as_slice())
        }
        _ => None,
    }
}

/// The arguments of `torch._utils._rebuild_tensor_v2` when `value` is a tensor record, directly
/// or wrapped as a parameter (`_rebuild_parameter`) or a tensor subclass
/// (`_rebuild_from_type_v2`).
fn tensor_args(value: &Value) -> Option<&Value> {
    let Value::Call { callable, args } = value.unbuilt() else {
        return None;
    };
    if callable.is_global("torch._utils", "_rebuild_tensor_v2") {
        return Some(args);
    }
    let Value::Tuple(inner) = args.as_ref() else {
        return None;
    };
    if callable.is_global("torch._utils", "_rebuild_parameter")
        || callable.is_global("torch._utils", "_rebuild_parameter_with_state")
    {
        return inner.first().and_then(tensor_args);
    }
    if callable.is_global("torch._tensor", "_rebuild_from_type_v2") {
        if let [function, _, function_args, ..] = inner.as_slice() {
            if function.is_global("torch._utils", "_rebuild_tensor_v2") {
                return Some(function_args);
            }
        }
    }
    None
}

fn non_negative(value: &Value, what: &str) -> std::result::Result<u64, String> {
    match value.as_int() {
        Some(v) if v >= 0 => Ok(v as u64),
        _ => Err(format!("{what} is {value:?}, not a non-negative integer")),
    }
}

fn dims(value: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    let Value::Tuple(items) = value else {
        return Err(format!("{what} is {value:?}, not a tuple"));
    };
    items
        .iter()
        .map(|v| non_negative(v, what).map(|v| v as usize))
        .collect()
}

fn storage_dtype(class: &Value) -> std::result::Result<DType, String> {
    let Value::Global { module, name } = class else {
        return Err(format!("storage type {class:?} is not a class"));
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("torch", "FloatStorage") => DType::F32,
        ("torch", "DoubleStorage") => DType::F64,
        ("torch", "HalfStorage") => DType::F16,
        ("torch", "BFloat16Storage") => DType::BF16,
        ("torch", "ByteStorage") => DType::U8,
        ("torch", "LongStorage") => DType::I64,
        _ => {
            return Err(format!(
                "storage type {module}.{name}, which fastscnn does not read"
            ))
        }
    })
}

/// Reads the tensor `_rebuild_tensor_v2(storage, offset, size, stride, ...)` describes.
fn read_tensor(
    archive: &mut Archive,
    file_len: u64,
    prefix: &str,
    args: &Value,
) -> std::result::Result<Tensor, String> {
    let Value::Tuple(args) = args else {
        return Err(format!("a tensor record whose arguments are {args:?}"));
    };
    let [storage, offset, size, stride, ..] = args.as_slice() else {
        return Err(format!(
            "a tensor record with {} arguments, not 4 or more",
            args.len()
        ));
    };
    let Value::Persistent(storage) = storage else {
        return Err("a tensor record without its storage".into());
    };
    let storage_parts = match storage.as_ref() {
        Value::Tuple(parts) => parts.as_slice(),
        _ => &[],
    };
    let [kind, class, key, _location, _numel, ..] = storage_parts else {
        return Err(format!("a storage reference {storage:?}"));
    };
    if kind.as_str() != Some("storage") {
        return Err(format!("a storage reference of kind {kind:?}"));
    }
    let dtype = storage_dtype(class)?;
    let key = key
        .as_str()
        .ok_or_else(|| format!("a storage key {key:?}"))?;
    let offset = non_negative(offset, "the storage offset")?;
    let shape = dims(size, "the size")?;
    let stride = dims(stride, "the stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in length"
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .ok_or_else(|| format!("shape {shape:?} has more elements than can be counted"))?;
    let element = dtype.size_in_bytes() as u64;
    let row_major: Vec<usize> = (0..shape.len())
        .map(|i| shape[i + 1..].iter().product())
        .collect();
    let column_major: Vec<usize> = (0..shape.len())
        .map(|i| shape[..i].iter().product())
        .collect();
    let fortran = numel > 1 && stride != row_major && stride == column_major;
    if numel > 1 && stride != row_major && !fortran {
        return Err(format!(
            "strides {stride:?} of shape {shape:?} are not contiguous"
        ));
    }

    let entry_name = format!("{prefix}data/{key}");
    let entry = archive
        .by_name(&entry_name)
        .map_err(|e| format!("its data `{entry_name}`: {e}"))?;
    let needed = offset
        .checked_add(numel)
        .and_then(|n| n.checked_mul(element))
        .unwrap_or(u64::MAX);
    // What the entry can hold: its stated size, if its compressed bytes (which lie in the file)
    // can make that many.
    let holds = entry.size().min(
        entry
            .compressed_size()
            .min(file_len)
            .saturating_mul(MAX_DEFLATE_RATIO),
    );
    if needed > holds {
        return Err(format!(
            "shape {shape:?} needs {needed} bytes, its data `{entry_name}` holds {holds}"
        ));
    }
    let mut reader = entry;
    std::io::copy(
        &mut (&mut reader).take(offset * element),
        &mut std::io::sink(),
    )
    .map_err(|e| format!("its data `{entry_name}`: {e}"))?;
    let mut bytes = vec![0u8; (numel * element) as usize];
    reader
        .read_exact(&mut bytes)
        .map_err(|e| format!("its data `{entry_name}`: {e}"))?;
    let error = |e: candle_core::Error| e.to_string();
    if fortran {
        let reversed: Vec<usize> = shape.iter().rev().copied().collect();
        let tensor =
            Tensor::from_raw_buffer(&bytes, dtype, &reversed, &Device::Cpu).map_err(error)?;
        let order: Vec<usize> = (0..shape.len()).rev().collect();
        tensor
            .permute(order)
            .and_then(|t| t.contiguous())
            .map_err(error)
    } else {
        Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu).map_err(error)
    }
}
