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
/// The most dimensions a tensor record may have: the network's weights have at most four.
const MAX_DIMS: usize = 8;

/// The bytes the archive's tensors may take: together no more than their distinct storage
/// entries hold, so that records pointing at one storage many times cannot each make a copy
/// of it.
#[derive(Default)]
struct ByteBudget {
    holds: HashMap<String, u64>,
    needed: u64,
}

impl ByteBudget {
    fn take(&mut self, entry: &str, holds: u64, needed: u64) -> std::result::Result<(), String> {
        self.holds.insert(entry.to_string(), holds);
        self.needed = self.needed.saturating_add(needed);
        let available = self.holds.values().fold(0u64, |a, &b| a.saturating_add(b));
        if self.needed > available {
            return Err(format!(
                "the tensors so far need {} bytes, more than the {available} their storages \
                 hold: records reading the same storage more than once",
                self.needed
            ));
        }
        Ok(())
    }
}

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
        cause: source.into(),
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
    let mut budget = ByteBudget::default();
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
            let tensor = read_tensor(&mut archive, &mut budget, file_len, prefix, args)
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
        _ => Err(format!(
            "{what} is {}, not a non-negative integer",
            value.brief()
        )),
    }
}

fn dims(value: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    let Value::Tuple(items) = value else {
        return Err(format!("{what} is {}, not a tuple", value.brief()));
    };
    if items.len() > MAX_DIMS {
        return Err(format!(
            "{what} has {} dimensions, more than any weight's {MAX_DIMS}",
            items.len()
        ));
    }
    items
        .iter()
        .map(|v| non_negative(v, what).map(|v| v as usize))
        .collect()
}

fn storage_dtype(class: &Value) -> std::result::Result<DType, String> {
    let Value::Global { module, name } = class else {
        return Err(format!("storage type {} is not a class", class.brief()));
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
                "storage type {}, which fastscnn does not read",
                class.brief()
            ))
        }
    })
}

/// Reads the tensor `_rebuild_tensor_v2(storage, offset, size, stride, ...)` describes.
fn read_tensor(
    archive: &mut Archive,
    budget: &mut ByteBudget,
    file_len: u64,
    prefix: &str,
    args: &Value,
) -> std::result::Result<Tensor, String> {
    let Value::Tuple(args) = args else {
        return Err(format!(
            "a tensor record whose arguments are {}",
            args.brief()
        ));
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
        return Err(format!("a storage reference {}", storage.brief()));
    };
    if kind.as_str() != Some("storage") {
        return Err(format!("a storage reference of kind {}", kind.brief()));
    }
    let dtype = storage_dtype(class)?;
    let key = key
        .as_str()
        .ok_or_else(|| format!("a storage key {}", key.brief()))?;
    let offset = non_negative(offset, "the storage offset")?;
    let shape = dims(size, "the size")?;
    let stride = dims(stride, "the stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in length"
        ));
    }
    // The product of the non-zero sides bounds every stride below, so none of them overflows
    // (and a tensor with no elements still gets strides candle can compute).
    let sides = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .filter(|&n| n <= isize::MAX as u64)
        .ok_or_else(|| format!("shape {shape:?} has more elements than can be counted"))?;
    let numel = if shape.contains(&0) { 0 } else { sides };
    let element = dtype.size_in_bytes() as u64;
    let product = |sides: &[usize]| sides.iter().fold(1usize, |a, &d| a.saturating_mul(d));
    let row_major: Vec<usize> = (0..shape.len()).map(|i| product(&shape[i + 1..])).collect();
    let column_major: Vec<usize> = (0..shape.len()).map(|i| product(&shape[..i])).collect();
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
    // can make that many; a stored entry's bytes are its compressed ones.
    let ratio = match entry.compression() {
        zip::CompressionMethod::Stored => 1,
        _ => MAX_DEFLATE_RATIO,
    };
    let holds = entry
        .size()
        .min(entry.compressed_size().min(file_len).saturating_mul(ratio));
    if needed > holds {
        return Err(format!(
            "shape {shape:?} needs {needed} bytes, its data `{entry_name}` holds {holds}"
        ));
    }
    budget.take(&entry_name, holds, numel * element)?;
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A pickled int below 2^63 (LONG1, eight bytes, little-endian).
    fn int(v: u64) -> Vec<u8> {
        let mut bytes = vec![0x8a, 8];
        bytes.extend(v.to_le_bytes());
        bytes
    }

    fn tuple(items: &[u64]) -> Vec<u8> {
        let mut bytes = vec![b'('];
        for &v in items {
            bytes.extend(int(v));
        }
        bytes.push(b't');
        bytes
    }

    /// A state_dict pickle of `(key, storage, size, stride)` float tensor records, as torch
    /// writes them (without the OrderedDict and the hooks).
    fn state_dict(records: &[(&str, &str, &[u64], &[u64])]) -> Vec<u8> {
        let mut p = b"\x80\x02}(".to_vec();
        for (key, storage, size, stride) in records {
            p.push(b'X');
            p.extend((key.len() as u32).to_le_bytes());
            p.extend(key.as_bytes());
            p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
            p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX");
            p.extend((storage.len() as u32).to_le_bytes());
            p.extend(storage.as_bytes());
            p.extend(b"X\x03\x00\x00\x00cpuK\x04tQK\x00");
            p.extend(tuple(size));
            p.extend(tuple(stride));
            p.extend(b"\x89}tR");
        }
        p.extend(b"u.");
        p
    }

    /// A `.pth` archive of `pickle` and storages `0` and `1` of four floats each.
    fn archive(dir: &Path, pickle: &[u8]) -> std::path::PathBuf {
        let path = dir.join("model.pth");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(pickle).unwrap();
        for storage in ["0", "1"] {
            zip.start_file(format!("archive/data/{storage}"), stored)
                .unwrap();
            zip.write_all(&[0u8; 16]).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    fn read(records: &[(&str, &str, &[u64], &[u64])]) -> Result<HashMap<String, Tensor>> {
        let dir = tempfile::tempdir().unwrap();
        read_state_dict(&archive(dir.path(), &state_dict(records)))
    }

    #[test]
    fn tensors_of_their_own_storages_are_read() {
        let tensors = read(&[("a", "0", &[2, 2], &[2, 1]), ("b", "1", &[4], &[1])]).unwrap();
        assert_eq!(tensors["a"].dims(), [2, 2]);
        assert_eq!(tensors["b"].dims(), [4]);
    }

    #[test]
    fn records_reading_one_storage_twice_are_refused() {
        let err = read(&[("a", "0", &[4], &[1]), ("b", "0", &[4], &[1])]).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn sides_beyond_counting_are_refused_even_beside_a_zero() {
        let huge = 1u64 << 40;
        let err = read(&[("a", "0", &[0, huge, huge], &[1, 1, 1])]).unwrap_err();
        assert!(err.to_string().contains("more elements than"), "{err}");
        let many = [1u64; 9];
        let err = read(&[("a", "0", &many, &many)]).unwrap_err();
        assert!(err.to_string().contains("dimensions"), "{err}");
    }
}
