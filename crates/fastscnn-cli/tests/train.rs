//! `fastscnn train` end to end on one real frame: it learns, it resumes bit for bit, and a
//! diverging run stops with its last good checkpoint intact.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::Device;
use fastscnn_core::testing::{
    assert_train_step_within_f32_bounds, is_running_statistic, max_abs_diff, shared_dir,
    train_step_differences, worst_difference,
};
use image::imageops::FilterType;

mod common;
use common::{assert_clean_failure, assert_usage_error, fastscnn, train};

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

/// `fastscnn train --resume` of the run in `out`: the recipe comes from its checkpoint.
fn resume(root: &Path, out: &Path) -> Command {
    let mut cmd = fastscnn();
    cmd.arg("train")
        .arg("--dataset-root")
        .arg(root)
        .arg("--out")
        .arg(out)
        .args(["--resume", "--workers", "0"]);
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
    resume(&root, &split).assert().success();

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

#[test]
fn stop_at_must_leave_something_to_do() {
    let Some((dir, root)) = setup() else { return };
    let out = dir.path().join("run");
    for stop_at in ["0", "7"] {
        assert_clean_failure(
            train(&root, &out).args(["--iters", "6", "--no-val", "--stop-at", stop_at]),
            &format!("--stop-at {stop_at}"),
        );
    }
    assert!(!out.join("last.safetensors").exists());
}

/// The steps a log names, in order: train.log's `step N/...` lines and metrics.jsonl's records.
#[cfg(unix)]
fn logged_steps(out: &Path) -> (Vec<u64>, Vec<u64>) {
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    let text = log
        .lines()
        .filter_map(|l| l.strip_prefix("step ")?.split('/').next()?.parse().ok())
        .collect();
    let json = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    (text, json)
}

/// `command` as a process the test can spawn and kill: its program is the binary, or the
/// target's runner (qemu for aarch64 on x86-64) with the binary among its arguments.
fn spawnable(command: &Command) -> std::process::Command {
    let mut process = std::process::Command::new(command.get_program());
    process.args(command.get_args());
    process
}

#[test]
fn one_run_per_folder_at_a_time() {
    let Some((dir, root)) = setup() else { return };
    let out = dir.path().join("run");
    let mut first = spawnable(&train(&root, &out))
        .args(["--iters", "100000", "--no-val", "--val-every", "1"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !out.join("last.safetensors").exists() {
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_clean_failure(
        train(&root, &out).args(["--iters", "5"]),
        "another `fastscnn train` is running in this folder",
    );
    assert_clean_failure(
        &mut resume(&root, &out),
        "another `fastscnn train` is running in this folder",
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The kill released the lock.
    let weights = fastscnn_model::WeightFile::open(out.join("last.safetensors")).unwrap();
    assert!(!weights.training_state().is_empty());
}

/// SIGKILL at pseudo-random instants of a run that checkpoints every step, then resume, until
/// the run is done: every kill leaves a checkpoint that resumes, and the result is the
/// uninterrupted run's, bit for bit, with each step logged once.
#[cfg(unix)]
#[test]
fn killed_at_any_instant_it_resumes_to_the_same_result() {
    let Some((dir, root)) = setup() else { return };
    let flags = [
        "--iters",
        "24",
        "--no-val",
        "--val-every",
        "1",
        "--log-every",
        "1",
    ];
    let whole = dir.path().join("whole");
    let started = std::time::Instant::now();
    train(&root, &whole).args(flags).assert().success();
    // Kills land from 2% to 32% of the uninterrupted run's time after each launch: at any step
    // whatever the machine's speed, and before a resumed run, which has fewer steps left, ends.
    let span = started.elapsed().as_millis() as u64;

    let out = dir.path().join("killed");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let (mut kills, mut launches) = (0, 0);
    loop {
        launches += 1;
        assert!(launches < 60, "the run never finished");
        let command = if out.join("last.safetensors").exists() {
            resume(&root, &out)
        } else {
            let mut fresh = train(&root, &out);
            fresh.args(flags);
            fresh
        };
        let mut child = spawnable(&command)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // xorshift.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = span / 50 + state % (span * 3 / 10).max(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(delay);
        while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if kills < 15 && child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            if out.join("last.safetensors").exists() {
                let weights = fastscnn_model::WeightFile::open(out.join("last.safetensors"))
                    .unwrap_or_else(|e| panic!("after kill {kills}: {e}"));
                assert!(!weights.training_state().is_empty());
            }
            continue;
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        break;
    }
    assert!(kills >= 3, "only {kills} kills landed");

    let a = candle_core::safetensors::load(whole.join("last.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (key, tensor) in &a {
        assert_eq!(max_abs_diff(tensor, &b[key]), 0.0, "{key} differs");
    }
    let steps: Vec<u64> = (1..=24).collect();
    assert_eq!(logged_steps(&out), (steps.clone(), steps));
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_validation_frame_that_cannot_be_read_keeps_the_training_done() {
    let Some((dir, root)) = setup() else { return };
    let label = root.join(format!(
        "gtFine/val/frankfurt/{FRAME}_gtFine_labelTrainIds.png"
    ));
    image::GrayImage::from_pixel(256, 128, image::Luma([77]))
        .save(&label)
        .unwrap();
    let out = dir.path().join("run");
    assert_clean_failure(
        train(&root, &out).args(["--iters", "4", "--val-every", "2"]),
        "step 2: validation failed (the checkpoint of step 2 is saved)",
    );
    let weights = fastscnn_model::WeightFile::open(out.join("last.safetensors")).unwrap();
    assert_eq!(weights.metadata()["step"], "2");
}

/// `fastscnn train` runs the reference implementation's step (`golden/train_step/`, its README's
/// section 6): batch 2 of the frame at its size, no augmentation, no dropout, from the golden
/// weights, held to `assert_train_step_within_f32_bounds` (loss, statistics and weights within
/// 1e-4 of the reference's, the first layers' weights within 3e-4: the library's
/// `golden_train_step` tests say why, and that in f64 the step is within 2e-6).
#[test]
fn one_step_equals_the_reference_implementation() {
    let Some(shared) = shared_dir() else { return };
    let golden = shared.join("golden");
    let step = golden.join("train_step");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cityscapes");
    let images = root.join("leftImg8bit/train/frankfurt");
    let labels = root.join("gtFine/train/frankfurt");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    for (folder, suffix) in [(&images, "leftImg8bit"), (&labels, "gtFine_labelTrainIds")] {
        let name = format!("{FRAME}_{suffix}.png");
        std::fs::copy(step.join(&name), folder.join(&name)).unwrap();
    }
    let out = dir.path().join("run");
    fastscnn()
        .arg("train")
        .arg("--dataset-root")
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .arg("--init")
        .arg(golden.join("fastscnn_seed0_c19.safetensors"))
        .args([
            "--batch-size",
            "2",
            "--crop",
            "256x512",
            "--augment",
            "none",
        ])
        .args(["--dropout", "0", "--scale-range", "1-1", "--iters", "1"])
        .args(["--no-val", "--workers", "0"])
        .assert()
        .success();

    let expected = candle_core::safetensors::load(
        step.join("one_step_lr0.045_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let want_loss = expected["loss"]
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0];
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let loss = logged[0]["loss"].as_f64().unwrap();
    let loss_error = (loss - want_loss).abs() / want_loss;
    let state = candle_core::safetensors::load(out.join("last.safetensors"), &Device::Cpu).unwrap();
    let differences = train_step_differences(&expected, &state);
    let (weight, weights) = worst_difference(&differences, |k| !is_running_statistic(k));
    eprintln!(
        "loss {loss} (reference {want_loss}, relative {loss_error:e}); weights max |diff| \
         {weights:e} ({weight})"
    );
    assert_train_step_within_f32_bounds(loss_error, &differences);

    // The run's recipe records both choices.
    let weights = fastscnn_model::WeightFile::open(out.join("last.safetensors")).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(weights.metadata().get("config").unwrap()).unwrap();
    assert_eq!(config["augment"], "none");
    assert_eq!(config["dropout"], 0.0);
}

#[test]
fn augmentation_and_dropout_are_checked() {
    let Some((dir, root)) = setup() else { return };
    let out = dir.path().join("run");
    for (flags, needle) in [
        (&["--dropout", "1"][..], "--dropout"),
        (&["--dropout=-0.1"][..], "--dropout"),
        (&["--augment", "flip"][..], "not an augmentation"),
    ] {
        assert_usage_error(
            train(&root, &out).args(["--iters", "1"]).args(flags),
            needle,
        );
    }
    // A scale range contradicts `none`, which does not rescale.
    let mut cmd = fastscnn();
    cmd.arg("train")
        .arg("--dataset-root")
        .arg(&root)
        .arg("--out")
        .arg(&out)
        .args([
            "--augment",
            "none",
            "--scale-range",
            "0.5-2",
            "--iters",
            "1",
        ]);
    assert_clean_failure(&mut cmd, "does not rescale");
    assert!(!out.join("last.safetensors").exists());
}
