//! What every CLI test needs: the binary, the shape of a clean failure, and doctored checkpoints.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};

pub fn fastscnn() -> Command {
    Command::cargo_bin("fastscnn").unwrap()
}

pub fn golden() -> Option<PathBuf> {
    fastscnn_core::testing::shared_dir().map(|s| s.join("golden"))
}

/// Runs the command expecting failure: a non-zero exit that is not a panic (101), and a single
/// line on stderr containing `needle`.
pub fn assert_clean_failure(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let code = out.status.code().unwrap();
    assert!(code != 0 && code != 101, "exit code {code}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

/// `fastscnn train` on `root` into `out` with the default recipe at batch 2, crop 128x256 (the
/// whole of the tests' 256x128 frames) and no scaling, loading on the test's thread, to which a
/// test adds flags.
pub fn train(root: &Path, out: &Path) -> Command {
    let mut cmd = fastscnn();
    cmd.arg("train")
        .arg("--dataset-root")
        .arg(root)
        .arg("--out")
        .arg(out)
        .args([
            "--batch-size",
            "2",
            "--crop",
            "128x256",
            "--scale-range",
            "1-1",
        ])
        .args(["--workers", "0"]);
    cmd
}

/// A clap usage error: exit 2, no panic, the first line naming `needle`.
pub fn assert_usage_error(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains(needle), "{first:?} lacks {needle:?}");
}

/// A copy of the PyTorch checkpoint `src` whose pickled key names have `from` replaced by `to`
/// (same length, so the pickle stays valid): a checkpoint with keys no Fast-SCNN has.
pub fn pth_with_renamed_key(src: &Path, dest: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut archive = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut writer = zip::ZipWriter::new(std::fs::File::create(dest).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut renamed = false;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            let at = bytes
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .expect("key in the pickle");
            bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
            renamed = true;
        }
        writer.start_file(name, stored).unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap();
    assert!(renamed);
}

/// The reference golden weights with the classifiers widened to `classes` outputs.
pub fn weights_with_classes(golden: &Path, dest: &Path, classes: usize) {
    let mut tensors =
        candle_core::safetensors::load(golden.join("fastscnn_seed0_c19.safetensors"), &Device::Cpu)
            .unwrap();
    for (key, shape) in [
        ("classifier.conv.1.weight", vec![classes, 128, 1, 1]),
        ("classifier.conv.1.bias", vec![classes]),
        ("auxlayer.4.weight", vec![classes, 32, 1, 1]),
        ("auxlayer.4.bias", vec![classes]),
    ] {
        tensors.insert(
            key.to_string(),
            Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let tensors: HashMap<String, Tensor> = tensors;
    candle_core::safetensors::save(&tensors, dest).unwrap();
}
