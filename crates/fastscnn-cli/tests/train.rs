//! `fastscnn train` end to end on one real frame: it learns, it resumes bit for bit, and a
//! diverging run stops with its last good checkpoint intact.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::Device;
use fastscnn_core::testing::{max_abs_diff, shared_dir};
use image::imageops::FilterType;

mod common;
use common::{assert_clean_failure, fastscnn};

const FRAME: &str = "frankfurt_000001_058914";

/// A Cityscapes tree whose train and val splits both hold frankfurt_000001_058914 downscaled to
/// 256x128 (image bilinear, labels nearest): an eighth of the frame's side, so that the 300 steps
/// of the learning test take about a minute.
fn one_frame_dataset(shared: &Path, root: &Path) {
    let mini = shared.join("cityscapes-mini");
    let image =
        image::open(mini.join(format!("leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png")))
            .unwrap()
            .resize_exact(256, 128, FilterType::Triangle)
            .into_rgb8();
    let labels = image::open(mini.join(format!(
        "gtFine/val/frankfurt/{FRAME}_gtFine_labelTrainIds.png"
    )))
    .unwrap()
    .resize_exact(256, 128, FilterType::Nearest)
    .into_luma8();
    for split in ["train", "val"] {
        let images = root.join(format!("leftImg8bit/{split}/frankfurt"));
        let gt = root.join(format!("gtFine/{split}/frankfurt"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&gt).unwrap();
        image
            .save(images.join(format!("{FRAME}_leftImg8bit.png")))
            .unwrap();
        labels
            .save(gt.join(format!("{FRAME}_gtFine_labelTrainIds.png")))
            .unwrap();
    }
}

/// `fastscnn train` on `root` into `out` with the default recipe at batch 2, crop 128x256 (the
/// whole frame) and no scaling, to which a test adds flags.
fn train(root: &Path, out: &Path) -> Command {
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

fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    let shared = shared_dir()?;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cityscapes");
    one_frame_dataset(&shared, &root);
    Some((dir, root))
}

fn validation_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "validation")
        .collect()
}

#[test]
fn learns_one_frame_with_the_default_recipe() {
    let Some((dir, root)) = setup() else { return };
    let out = dir.path().join("run");
    train(&root, &out)
        .args(["--iters", "300", "--val-every", "100"])
        .assert()
        .success();
    let validations = validation_lines(&out);
    assert_eq!(validations.len(), 3);
    let accuracy = validations.last().unwrap()["pixel_accuracy"]
        .as_f64()
        .unwrap();
    // 0.93 here after 100 steps and after 300 (the margin is for other machines' arithmetic);
    // a network that has not learnt labels the frame's majority class, road, at 0.44 of its
    // labelled pixels.
    assert!(
        accuracy >= 0.88,
        "pixel accuracy {accuracy} after 300 iterations"
    );
    // The checkpoint is ordinary weights: `segment` loads it as it is.
    let image = root.join(format!("leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"));
    fastscnn()
        .arg("segment")
        .arg(&image)
        .arg("--weights")
        .arg(out.join("last.safetensors"))
        .arg("--out-dir")
        .arg(dir.path().join("seg"))
        .assert()
        .success();
    assert!(out.join("best.safetensors").is_file());
    assert!(std::fs::read_to_string(out.join("train.log"))
        .unwrap()
        .contains("step 300/300"));
}

#[test]
fn resuming_gives_the_same_weights_bit_for_bit() {
    let Some((dir, root)) = setup() else { return };
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let flags = ["--iters", "6", "--val-every", "3", "--no-val"];
    train(&root, &whole).args(flags).assert().success();
    train(&root, &split)
        .args(flags)
        .args(["--stop-at", "4"])
        .assert()
        .success();
    // A second start in the same folder is refused rather than overwriting the run.
    assert_clean_failure(train(&root, &split).args(flags), "--resume");
    train(&root, &split).arg("--resume").assert().success();

    let a = candle_core::safetensors::load(whole.join("last.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(split.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (key, tensor) in &a {
        assert_eq!(
            max_abs_diff(tensor, &b[key]),
            0.0,
            "{key} differs after resuming"
        );
    }
}

#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    let Some((dir, root)) = setup() else { return };
    let out = dir.path().join("huge");
    assert_clean_failure(
        train(&root, &out).args([
            "--iters",
            "20",
            "--lr",
            "1e12",
            "--no-val",
            "--val-every",
            "1",
        ]),
        "not finite",
    );
    // Whatever was saved before the blow-up is whole, finite and loadable.
    if out.join("last.safetensors").exists() {
        let weights = fastscnn_model::WeightFile::open(out.join("last.safetensors")).unwrap();
        let step: u64 = weights.metadata()["step"].parse().unwrap();
        assert!(step < 20);
        for (key, tensor) in weights.tensors() {
            let sum = tensor
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(sum.is_finite(), "{key} saved non-finite");
        }
        fastscnn_model::FastScnn::from_weights(&weights, &Default::default()).unwrap();
    }
}

#[test]
fn starts_from_given_weights_of_the_same_layout() {
    let Some((dir, root)) = setup() else { return };
    let golden = shared_dir().unwrap().join("golden");
    let out = dir.path().join("finetune");
    train(&root, &out)
        .args(["--iters", "1", "--no-val", "--lr", "1e-4"])
        .arg("--init")
        .arg(golden.join("fastscnn_seed0_c19.pth"))
        .assert()
        .success();
    let start =
        candle_core::safetensors::load(golden.join("fastscnn_seed0_c19.safetensors"), &Device::Cpu)
            .unwrap();
    let after = candle_core::safetensors::load(out.join("last.safetensors"), &Device::Cpu).unwrap();
    let key = "classifier.conv.1.weight";
    let moved = max_abs_diff(&start[key], &after[key]);
    assert!(
        moved > 0.0 && moved < 1e-2,
        "one small step from the given weights: {moved}"
    );

    assert_clean_failure(
        train(&root, &dir.path().join("mismatch"))
            .args(["--iters", "1", "--no-val"])
            .arg("--init")
            .arg(golden.join("mmseg_fastscnn_c19.pth")),
        "openmmlab layout",
    );
}
