//! `fastscnn segment` end to end: golden parity through the binary, and bad input.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use fastscnn_core::testing::{
    argmax_agreement, argmax_labels, max_abs_diff, relative_max_diff, shared_dir,
};

mod common;
use common::{assert_clean_failure, fastscnn};

/// `fastscnn segment IMAGE --weights WEIGHTS --out-dir OUT_DIR`, to which a test may add flags.
fn segment_with(image: &Path, weights: &Path, out_dir: &Path) -> Command {
    let mut cmd = fastscnn();
    cmd.arg("segment")
        .arg(image)
        .arg("--weights")
        .arg(weights)
        .arg("--out-dir")
        .arg(out_dir);
    cmd
}

fn golden() -> Option<PathBuf> {
    shared_dir().map(|s| s.join("golden"))
}

/// The golden frame segmented into `dir/out` with `extra` flags and `--save-logits`: the logits
/// written, and PyTorch's.
fn golden_logits(golden: &Path, dir: &Path, extra: &[&str]) -> (Tensor, Tensor) {
    let logits_path = dir.join("logits.safetensors");
    segment_with(
        &golden.join("seed0_c19_256x512_input0.png"),
        &weights_arg(golden),
        &dir.join("out"),
    )
    .args(extra)
    .arg("--save-logits")
    .arg(&logits_path)
    .assert()
    .success();
    let logits =
        |path: &Path| candle_core::safetensors::load(path, &Device::Cpu).unwrap()["logits"].clone();
    (
        logits(&logits_path),
        logits(&golden.join("seed0_c19_256x512_expected.safetensors")),
    )
}

#[test]
fn golden_logits_through_the_binary() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ours, expected) = golden_logits(&golden, dir.path(), &[]);
    let (ours, expected) = (&ours, &expected);
    assert_eq!(ours.dims(), &[1, 19, 256, 512]);
    let diff = max_abs_diff(ours, expected);
    assert!(diff <= 1e-3, "max |diff| {diff}");

    let agreement = argmax_agreement(ours, expected);
    assert!(agreement >= 0.999, "argmax agreement {agreement}");
    let a = argmax_labels(ours);

    // The train-id map is the argmax of the saved logits; the colour map follows the palette.
    let trainid = image::open(dir.path().join("out/seed0_c19_256x512_input0_trainid.png"))
        .unwrap()
        .into_luma8();
    assert_eq!(trainid.dimensions(), (512, 256));
    assert!(trainid
        .as_raw()
        .iter()
        .zip(&a)
        .all(|(&t, &l)| t as u32 == l));
    let color = image::open(dir.path().join("out/seed0_c19_256x512_input0_color.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(color.dimensions(), (512, 256));
    for (c, &t) in color.pixels().zip(trainid.as_raw()) {
        assert_eq!(c.0, fastscnn_data::labels::train_id_color(t));
    }
    // A real scene: several classes, not one constant prediction.
    let classes: std::collections::HashSet<u8> = trainid.as_raw().iter().copied().collect();
    assert!(classes.len() >= 4, "only {classes:?}");
}

/// `--dtype f16` on the CPU: the bound of the model's half-precision test (logits within 1.5e-2
/// of their largest value, argmax ≥ 99.5% PyTorch's), logits written as f32, and the label map the
/// argmax of the logits written.
#[test]
fn half_precision_logits_stay_near_pytorch() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ours, expected) = golden_logits(
        &golden,
        dir.path(),
        &["--dtype", "f16", "--format", "trainid"],
    );
    let (ours, expected) = (&ours, &expected);
    assert_eq!(ours.dtype(), candle_core::DType::F32);
    let diff = relative_max_diff(ours, expected);
    assert!(diff <= 1.5e-2, "relative diff {diff}");
    let agreement = argmax_agreement(ours, expected);
    assert!(agreement >= 0.995, "argmax agreement {agreement}");
    let trainid = image::open(dir.path().join("out/seed0_c19_256x512_input0_trainid.png"))
        .unwrap()
        .into_luma8();
    let labels = argmax_labels(ours);
    assert_eq!(trainid.as_raw().len(), labels.len());
    assert!(trainid
        .as_raw()
        .iter()
        .zip(&labels)
        .all(|(&t, &l)| t as u32 == l));
}

#[test]
fn odd_sized_images_keep_their_resolution() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = image::open(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let small = img.resize_exact(500, 250, image::imageops::FilterType::Triangle);
    small.save(dir.path().join("small.png")).unwrap();
    segment_with(
        &dir.path().join("small.png"),
        &weights_arg(&golden),
        dir.path(),
    )
    .arg("--save-logits")
    .arg(dir.path().join("small_logits.safetensors"))
    .assert()
    .success();
    let logits =
        candle_core::safetensors::load(dir.path().join("small_logits.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(logits["logits"].dims(), &[1, 19, 250, 500]);
    let trainid = image::open(dir.path().join("small_trainid.png")).unwrap();
    assert_eq!((trainid.width(), trainid.height()), (500, 250));
}

fn weights_arg(golden: &Path) -> PathBuf {
    golden.join("fastscnn_seed0_c19.safetensors")
}

#[test]
fn missing_image_is_one_line_naming_it() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    assert_clean_failure(
        &mut segment_with(&missing, &weights_arg(&golden), dir.path()),
        "nope.png",
    );
}

#[test]
fn text_file_named_png_is_rejected() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.png");
    std::fs::write(&fake, "this is not an image\n").unwrap();
    assert_clean_failure(
        &mut segment_with(&fake, &weights_arg(&golden), dir.path()),
        "fake.png",
    );
    assert!(!dir.path().join("fake_color.png").exists());
}

#[test]
fn bad_weights_are_rejected_with_the_file_named() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = golden.join("seed0_c19_256x512_input0.png");

    // Missing file.
    assert_clean_failure(
        fastscnn()
            .arg("segment")
            .arg(&image)
            .arg("--weights")
            .arg(dir.path().join("absent.safetensors")),
        "absent.safetensors",
    );

    // Truncated safetensors.
    let bytes = std::fs::read(weights_arg(&golden)).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(
        &mut segment_with(&image, &truncated, dir.path()),
        "truncated.safetensors",
    );

    // Weights that are not Fast-SCNN, and weights with one tensor of the wrong shape.
    let mut tensors = candle_core::safetensors::load(weights_arg(&golden), &Device::Cpu).unwrap();
    let other = dir.path().join("other.safetensors");
    let unrelated = std::collections::HashMap::from([(
        "fc.weight".to_string(),
        Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&unrelated, &other).unwrap();
    assert_clean_failure(
        &mut segment_with(&image, &other, dir.path()),
        "other.safetensors",
    );
    let key = "global_feature_extractor.ppm.out.conv.0.weight";
    tensors.insert(
        key.to_string(),
        Tensor::zeros((128, 128, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let misshapen = dir.path().join("misshapen.safetensors");
    candle_core::safetensors::save(&tensors, &misshapen).unwrap();
    assert_clean_failure(&mut segment_with(&image, &misshapen, dir.path()), key);
}

#[test]
fn save_logits_needs_exactly_one_image() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = golden.join("seed0_c19_256x512_input0.png");
    assert_clean_failure(
        fastscnn()
            .arg("segment")
            .arg(&image)
            .arg(&image)
            .arg("--weights")
            .arg(weights_arg(&golden))
            .arg("--save-logits")
            .arg(dir.path().join("l.safetensors")),
        "--save-logits",
    );
}

#[test]
fn openmmlab_checkpoint_with_every_format_and_probabilities() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let probs_path = dir.path().join("probs.safetensors");
    segment_with(
        &golden.join("seed0_c19_256x512_input0.png"),
        &golden.join("mmseg_fastscnn_c19.pth"),
        dir.path(),
    )
    .args(["--format", "all", "--overlay-alpha", "1"])
    .arg("--probs")
    .arg(&probs_path)
    .assert()
    .success();

    let probs = candle_core::safetensors::load(&probs_path, &Device::Cpu).unwrap();
    let probs = &probs["probs"];
    assert_eq!(probs.dims(), &[1, 19, 256, 512]);
    let expected = candle_core::safetensors::load(
        golden.join("mmseg_c19_256x512_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let agreement = argmax_agreement(probs, &expected["logits"]);
    assert!(agreement >= 0.999, "argmax agreement {agreement}");

    let stem = "seed0_c19_256x512_input0";
    let open = |kind: &str| image::open(dir.path().join(format!("{stem}_{kind}.png"))).unwrap();
    let trainid = open("trainid").into_luma8();
    let labelid = open("labelid").into_luma8();
    let color = open("color").into_rgb8();
    let overlay = open("overlay").into_rgb8();
    assert_eq!(
        trainid.as_raw(),
        &argmax_labels(probs)
            .iter()
            .map(|&l| l as u8)
            .collect::<Vec<_>>()
    );
    for (&t, &l) in trainid.as_raw().iter().zip(labelid.as_raw()) {
        assert_eq!(l, fastscnn_data::labels::train_id_to_label_id(t));
    }
    // With alpha 1 the overlay is the colour map itself.
    assert_eq!(overlay, color);
}

#[test]
fn folders_and_patterns_expand_to_their_images() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let img = image::open(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let small = img.resize_exact(128, 64, image::imageops::FilterType::Triangle);
    for name in ["a.png", "b.png", "c.jpg"] {
        small.save(frames.join(name)).unwrap();
    }
    std::fs::write(frames.join("readme.txt"), "not an image").unwrap();

    let out = dir.path().join("from-folder");
    fastscnn()
        .arg("segment")
        .arg(&frames)
        .arg("--weights")
        .arg(weights_arg(&golden))
        .arg("--out-dir")
        .arg(&out)
        .args(["--format", "trainid"])
        .assert()
        .success();
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["a_trainid.png", "b_trainid.png", "c_trainid.png"]);

    let out = dir.path().join("from-pattern");
    fastscnn()
        .arg("segment")
        .arg(frames.join("*.png").to_string_lossy().as_ref())
        .arg("--weights")
        .arg(weights_arg(&golden))
        .arg("--out-dir")
        .arg(&out)
        .args(["--format", "labelid"])
        .assert()
        .success();
    assert!(out.join("a_labelid.png").exists() && out.join("b_labelid.png").exists());
    assert!(!out.join("c_labelid.png").exists());

    assert_clean_failure(
        fastscnn()
            .arg("segment")
            .arg(frames.join("*.bmp").to_string_lossy().as_ref())
            .arg("--weights")
            .arg(weights_arg(&golden)),
        "matches no file",
    );
}

#[test]
fn reduced_input_scale_keeps_the_image_size() {
    let Some(golden) = golden() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = golden.join("seed0_c19_256x512_input0.png");
    for scale in ["0.5", "0.25"] {
        let out = dir.path().join(scale);
        segment_with(&image, &weights_arg(&golden), &out)
            .args(["--input-scale", scale, "--format", "trainid"])
            .assert()
            .success();
        let trainid = image::open(out.join("seed0_c19_256x512_input0_trainid.png")).unwrap();
        assert_eq!((trainid.width(), trainid.height()), (512, 256));
    }
}
