//! `fastscnn eval` against a confusion matrix computed here, independently of the library's
//! metrics: same network, plain counting, the Cityscapes rules for absent classes and categories.

use std::path::Path;

use candle_core::Device;
use fastscnn_core::testing::shared_dir;
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions};
use serde_json::Value;

mod common;
use common::{assert_clean_failure, fastscnn, golden, weights_with_classes};

const FRAMES: [&str; 2] = ["frankfurt_000000_000294", "frankfurt_000001_058914"];
/// Category of each train id, written out here rather than taken from the label table.
const CATEGORY: [usize; 19] = [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6];
const CLASS_NAMES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

fn iou(counts: &[Vec<u64>], c: usize) -> Option<f64> {
    let n = counts.len();
    let tp = counts[c][c];
    let fn_: u64 = (0..n).map(|p| counts[c][p]).sum::<u64>() - tp;
    let fp: u64 = (0..n).map(|g| counts[g][c]).sum::<u64>() - tp;
    let union = tp + fp + fn_;
    (union > 0).then(|| tp as f64 / union as f64)
}

fn mean(values: &[Option<f64>]) -> f64 {
    let defined: Vec<f64> = values.iter().flatten().copied().collect();
    defined.iter().sum::<f64>() / defined.len() as f64
}

fn assert_close(json: &Value, expected: Option<f64>, what: &str) {
    match expected {
        None => assert!(json.is_null(), "{what}: {json} should be null"),
        Some(v) => {
            let got = json.as_f64().unwrap_or_else(|| panic!("{what}: {json}"));
            assert!((got - v).abs() < 1e-12, "{what}: {got} != {v}");
        }
    }
}

fn run_eval(root: &Path, weights: &Path, json: &Path, extra: &[&str]) -> Value {
    fastscnn()
        .arg("eval")
        .arg("--dataset-root")
        .arg(root)
        .arg("--weights")
        .arg(weights)
        .arg("--json")
        .arg(json)
        .args(extra)
        .assert()
        .success();
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn eval_json_agrees_with_an_independent_confusion_matrix() {
    let Some(shared) = shared_dir() else { return };
    let root = shared.join("cityscapes-mini");
    let weights = shared.join("golden/fastscnn_seed0_c19.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let report = run_eval(&root, &weights, &dir.path().join("scores.json"), &[]);

    let model = FastScnn::from_file(&weights, &LoadOptions::default()).unwrap();
    let mut counts = vec![vec![0u64; 19]; 19];
    for frame in FRAMES {
        let image =
            load_rgb_image(root.join(format!("leftImg8bit/val/frankfurt/{frame}_leftImg8bit.png")))
                .unwrap();
        let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
        let prediction: Vec<u32> = model
            .predict(&input)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let label = image::open(root.join(format!(
            "gtFine/val/frankfurt/{frame}_gtFine_labelTrainIds.png"
        )))
        .unwrap()
        .into_luma8();
        for (&p, &g) in prediction.iter().zip(label.as_raw()) {
            if g != 255 {
                counts[g as usize][p as usize] += 1;
            }
        }
    }

    let class_iou: Vec<Option<f64>> = (0..19).map(|c| iou(&counts, c)).collect();
    for (c, name) in CLASS_NAMES.iter().enumerate() {
        assert_close(&report["per_class_iou"][name], class_iou[c], name);
    }
    // Classes in neither ground truth nor prediction are null and left out of the mean.
    assert!(class_iou.iter().any(Option::is_none));
    assert_close(&report["miou"], Some(mean(&class_iou)), "miou");

    let mut grouped = vec![vec![0u64; 7]; 7];
    for g in 0..19 {
        for p in 0..19 {
            grouped[CATEGORY[g]][CATEGORY[p]] += counts[g][p];
        }
    }
    let category_iou: Vec<Option<f64>> = (0..7).map(|c| iou(&grouped, c)).collect();
    assert_close(
        &report["category_miou"],
        Some(mean(&category_iou)),
        "category_miou",
    );
    assert_close(&report["per_category_iou"]["flat"], category_iou[0], "flat");

    let total: u64 = counts.iter().flatten().sum();
    let correct: u64 = (0..19).map(|c| counts[c][c]).sum();
    assert_close(
        &report["pixel_accuracy"],
        Some(correct as f64 / total as f64),
        "pixel_accuracy",
    );
    assert_eq!(report["images"], 2);
}

#[test]
fn reduced_input_scale_is_scored_at_full_label_resolution() {
    let Some(shared) = shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = run_eval(
        &shared.join("cityscapes-mini"),
        &shared.join("golden/mmseg_fastscnn_c19.pth"),
        &dir.path().join("half.json"),
        &["--input-scale", "0.5", "--workers", "0"],
    );
    assert_eq!(report["input_scale"], 0.5);
    assert_eq!(report["images"], 2);
    let accuracy = report["pixel_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5 && accuracy <= 1.0, "{accuracy}");
}

/// `--dtype f16` scores what f32 scores, within a point of mIoU and of pixel accuracy (at a
/// quarter of the frames' resolution, which keeps candle's f16 ops on the CPU quick); bf16, which
/// candle's CPU matrix product lacks, is refused naming the flag.
#[test]
fn half_precision_scores_near_f32() {
    let Some(shared) = shared_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = shared.join("cityscapes-mini");
    let weights = shared.join("golden/mmseg_fastscnn_c19.pth");
    let [f32_report, f16_report] = ["f32", "f16"].map(|dtype| {
        run_eval(
            &root,
            &weights,
            &dir.path().join(format!("{dtype}.json")),
            &["--input-scale", "0.25", "--workers", "0", "--dtype", dtype],
        )
    });
    assert_eq!(f16_report["dtype"], "f16");
    for key in ["miou", "pixel_accuracy"] {
        let (a, b) = (
            f32_report[key].as_f64().unwrap(),
            f16_report[key].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 0.01, "{key}: f32 {a}, f16 {b}");
    }
    assert_clean_failure(
        fastscnn()
            .arg("eval")
            .arg("--dataset-root")
            .arg(&root)
            .arg("--weights")
            .arg(&weights)
            .args(["--dtype", "bf16"]),
        "--dtype bf16",
    );
}

#[test]
fn bad_inputs_fail_in_one_line() {
    let Some(golden) = golden() else { return };
    let shared = golden.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = golden.join("fastscnn_seed0_c19.safetensors");
    let eval = |root: &Path, weights: &Path| {
        let mut cmd = fastscnn();
        cmd.arg("eval")
            .arg("--dataset-root")
            .arg(root)
            .arg("--weights")
            .arg(weights);
        cmd
    };
    assert_clean_failure(
        &mut eval(&dir.path().join("no-such-root"), &weights),
        "no-such-root",
    );
    let root = shared.join("cityscapes-mini");
    assert_clean_failure(eval(&root, &weights).args(["--split", "train"]), "train");
    let wide = dir.path().join("c21.safetensors");
    weights_with_classes(&golden, &wide, 21);
    assert_clean_failure(&mut eval(&root, &wide), "21 classes");
    // A usage error: clap's message and exit code 2.
    let out = eval(&root, &weights)
        .args(["--input-scale", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 is not in (0, 1]"));
}
