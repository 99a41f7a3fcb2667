//! A dataset of its own classes end to end: a folder dataset made from a real Cityscapes frame
//! whose classes are Cityscapes' seven categories (own names, own colours, own ignore value) is
//! prepared, trained on, evaluated and segmented with those classes; 19-class weights fine-tune
//! to it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fastscnn_core::testing::shared_dir;
use fastscnn_data::labels::{train_id_categories, CATEGORY_NAMES};
use fastscnn_data::{ClassInfo, ClassTable};
use image::imageops::FilterType;

mod common;
use common::{assert_clean_failure, fastscnn, golden, train};

const FRAME: &str = "frankfurt_000001_058914";

/// The mask value of unlabelled pixels: not 255, so that the remapping is exercised.
const IGNORE: u8 = 200;

/// The seven categories, in colours of their own.
fn categories() -> ClassTable {
    let colours = [
        [200, 0, 200],
        [90, 90, 90],
        [250, 250, 0],
        [0, 180, 0],
        [0, 120, 255],
        [255, 0, 0],
        [0, 0, 120],
    ];
    let classes = CATEGORY_NAMES
        .iter()
        .zip(colours)
        .map(|(name, color)| ClassInfo {
            name: format!("{name} stuff"),
            color,
        })
        .collect();
    ClassTable::new(classes, IGNORE).unwrap()
}

/// `ROOT/images/{train,val}/city/<frame>.jpg` (the frame at 256x128) and
/// `ROOT/masks/{train,val}/city/<frame>.png`: each train id's category, [`IGNORE`] elsewhere;
/// and `ROOT/classes.json`.
fn folder_dataset(shared: &Path, root: &Path) {
    let mini = shared.join("cityscapes-mini");
    let image =
        image::open(mini.join(format!("leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png")))
            .unwrap()
            .resize_exact(256, 128, FilterType::Triangle)
            .into_rgb8();
    let mut mask = image::open(mini.join(format!(
        "gtFine/val/frankfurt/{FRAME}_gtFine_labelTrainIds.png"
    )))
    .unwrap()
    .resize_exact(256, 128, FilterType::Nearest)
    .into_luma8();
    let category = train_id_categories();
    for v in mask.iter_mut() {
        *v = category.get(usize::from(*v)).map_or(IGNORE, |&c| c as u8);
    }
    for split in ["train", "val"] {
        let images = root.join(format!("images/{split}/city"));
        let masks = root.join(format!("masks/{split}/city"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&masks).unwrap();
        image.save(images.join(format!("{FRAME}.jpg"))).unwrap();
        mask.save(masks.join(format!("{FRAME}.png"))).unwrap();
    }
    std::fs::write(root.join("classes.json"), categories().to_json()).unwrap();
}

fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    let shared = shared_dir()?;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("categories");
    folder_dataset(&shared, &root);
    Some((dir, root))
}

#[test]
fn trains_evaluates_and_segments_with_its_own_classes() {
    let Some((dir, root)) = setup() else { return };
    let prepared = fastscnn()
        .arg("prepare")
        .arg("--dataset-root")
        .arg(&root)
        .assert()
        .success();
    let report = String::from_utf8(prepared.get_output().stdout.clone()).unwrap();
    assert!(
        report.contains("folder dataset of 7 classes") && report.contains("images: train 1, val 1"),
        "{report}"
    );

    let out = dir.path().join("run");
    train(&root, &out)
        .args(["--iters", "100", "--val-every", "100"])
        .assert()
        .success();
    let weights = out.join("last.safetensors");
    let validation: serde_json::Value = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["kind"] == "validation")
        .unwrap();
    let accuracy = validation["pixel_accuracy"].as_f64().unwrap();
    // A network that has not learnt labels every pixel flat (road, sidewalk), at 0.44 of the
    // labelled pixels.
    assert!(
        accuracy >= 0.85,
        "pixel accuracy {accuracy} after 100 iterations"
    );

    // The checkpoint carries the classes: eval's table and JSON name them.
    let json = dir.path().join("eval.json");
    let eval = fastscnn()
        .arg("eval")
        .arg("--dataset-root")
        .arg(&root)
        .args(["--split", "val", "--workers", "0"])
        .arg("--weights")
        .arg(&weights)
        .arg("--json")
        .arg(&json)
        .assert()
        .success();
    let table = String::from_utf8(eval.get_output().stdout.clone()).unwrap();
    assert!(
        table.contains("construction stuff") && !table.contains("category mIoU"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names: Vec<String> = categories().names().iter().map(|n| n.to_string()).collect();
    assert_eq!(report["classes"], serde_json::json!(names));
    assert!(
        report["per_class_iou"]["sky stuff"].as_f64().is_some(),
        "{report}"
    );
    assert!(report.get("per_category_iou").is_none());

    // segment's colour map is drawn in the dataset's colours.
    let image = root.join(format!("images/val/city/{FRAME}.jpg"));
    let seg = dir.path().join("seg");
    fastscnn()
        .arg("segment")
        .arg(&image)
        .arg("--weights")
        .arg(&weights)
        .arg("--out-dir")
        .arg(&seg)
        .args(["--format", "color"])
        .assert()
        .success();
    let colours: HashSet<[u8; 3]> = categories().classes().iter().map(|c| c.color).collect();
    let drawn = image::open(seg.join(format!("{FRAME}_color.png")))
        .unwrap()
        .into_rgb8();
    let used: HashSet<[u8; 3]> = drawn.pixels().map(|p| p.0).collect();
    assert!(used.is_subset(&colours), "{used:?}");
    assert!(used.len() >= 3, "{used:?}");

    // info prints the table.
    let info = fastscnn()
        .arg("info")
        .arg("--weights")
        .arg(&weights)
        .assert()
        .success();
    let info = String::from_utf8(info.get_output().stdout.clone()).unwrap();
    assert!(
        info.contains("class table from the weights' metadata, ignore value 200")
            && info.contains("#00b400  nature stuff"),
        "{info}"
    );
}

#[test]
fn nineteen_class_weights_fine_tune_to_seven() {
    let Some((dir, root)) = setup() else { return };
    let golden = golden().unwrap().join("fastscnn_seed0_c19.safetensors");
    let out = dir.path().join("run");
    let run = train(&root, &out)
        .arg("--init")
        .arg(&golden)
        .args(["--iters", "2", "--no-val", "--lr", "1e-3"])
        .assert()
        .success();
    let stderr = String::from_utf8(run.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("other classes than the dataset's 7; re-initialised")
            && stderr.contains("classifier.conv.1.weight"),
        "{stderr}"
    );
    let tuned = fastscnn_model::WeightFile::open(out.join("last.safetensors")).unwrap();
    assert_eq!(tuned.num_classes().unwrap(), 7);
    assert_eq!(tuned.class_table().unwrap(), categories());
    // Everything but the classifying layers came from the golden weights: the first
    // convolution moved by two small steps only.
    let init = fastscnn_model::WeightFile::open(&golden).unwrap();
    let key = "learning_to_downsample.conv.conv.0.weight";
    let diff =
        fastscnn_core::testing::max_abs_diff(tuned.get(key).unwrap(), init.get(key).unwrap());
    assert!(diff < 1e-2, "{key} moved by {diff}");
}

#[test]
fn broken_folder_datasets_fail_in_one_line() {
    let Some((dir, root)) = setup() else { return };
    // A split without masks is fine for prepare, which says so.
    let test_split = root.join("images/test");
    std::fs::create_dir_all(&test_split).unwrap();
    std::fs::copy(
        root.join(format!("images/val/city/{FRAME}.jpg")),
        test_split.join("a.jpg"),
    )
    .unwrap();
    let prepared = fastscnn()
        .arg("prepare")
        .arg("--dataset-root")
        .arg(&root)
        .assert()
        .success();
    let report = String::from_utf8(prepared.get_output().stdout.clone()).unwrap();
    assert!(
        report.contains("test 1 (no masks), train 1, val 1"),
        "{report}"
    );

    let orphan = root.join("masks/train/city/lost.png");
    std::fs::copy(root.join(format!("masks/train/city/{FRAME}.png")), &orphan).unwrap();
    assert_clean_failure(
        fastscnn().arg("prepare").arg("--dataset-root").arg(&root),
        "lost.png: a mask without an image",
    );
    std::fs::remove_file(&orphan).unwrap();
    std::fs::write(root.join("classes.json"), "[{\"name\": \"a\"}]").unwrap();
    assert_clean_failure(
        train(&root, &dir.path().join("run")).args(["--iters", "1"]),
        "classes.json: class 0: `color` must be [r, g, b]",
    );
}
