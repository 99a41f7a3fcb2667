//! `cargo xtask convert` end to end.

use std::path::Path;

use assert_cmd::Command;
use candle_core::Device;
use fastscnn_core::testing::{argmax_agreement, max_abs_diff, shared_dir};
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions, WeightFile};

fn xtask() -> Command {
    Command::cargo_bin("xtask").unwrap()
}

/// The converted OpenMMLab checkpoint reproduces the fixture's logits.
fn assert_openmmlab_parity(golden: &Path, weights: &Path) {
    let model = FastScnn::from_file(weights, &LoadOptions::default()).unwrap();
    let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
    let expected = candle_core::safetensors::load(
        golden.join("mmseg_c19_256x512_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let stages = model.forward_stages(&input, false).unwrap();
    let d = max_abs_diff(&stages.logits, &expected["logits"]);
    assert!(d <= 1e-3, "logits max |diff| {d}");
    assert!(argmax_agreement(&stages.logits, &expected["logits"]) >= 0.999);
}

fn assert_same_tensors(a: &WeightFile, b: &WeightFile) {
    assert_eq!(a.len(), b.len());
    for (key, tensor) in a.tensors() {
        assert_eq!(max_abs_diff(tensor, b.get(key).unwrap()), 0.0, "{key}");
    }
}

#[test]
fn convert_keeps_every_tensor_and_records_where_it_came_from() {
    let Some(shared) = shared_dir() else { return };
    let golden = shared.join("golden");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mmseg.safetensors");
    let source = golden.join("mmseg_fastscnn_c19.pth");
    let assert = xtask()
        .arg("convert")
        .arg(&source)
        .arg(&out)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(stdout.contains("openmmlab layout, 19 classes"), "{stdout}");

    let converted = WeightFile::open(&out).unwrap();
    assert_eq!(converted.metadata()["layout"], "openmmlab");
    assert_eq!(converted.metadata()["classes"], "19");
    assert_eq!(converted.metadata()["source"], "mmseg_fastscnn_c19.pth");
    assert!(converted
        .keys()
        .all(|k| !k.ends_with("num_batches_tracked")));
    assert_same_tensors(&converted, &WeightFile::open(&source).unwrap());
    assert_openmmlab_parity(&golden, &out);

    // The reference checkpoint converts to the tensors of the shipped safetensors.
    let reference = dir.path().join("reference.safetensors");
    xtask()
        .arg("convert")
        .arg(golden.join("fastscnn_seed0_c19.pth"))
        .arg(&reference)
        .assert()
        .success();
    assert_same_tensors(
        &WeightFile::open(&reference).unwrap(),
        &WeightFile::open(golden.join("fastscnn_seed0_c19.safetensors")).unwrap(),
    );
}

#[test]
fn convert_refuses_what_is_not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "hello\n").unwrap();
    let out = dir.path().join("out.safetensors");
    let output = xtask()
        .arg("convert")
        .arg(&text)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("notes.pth"), "{stderr}");
    assert!(!out.exists());
}
