//! `fastscnn prepare` end to end on a copy of the Cityscapes samples.

use std::path::Path;
use std::time::SystemTime;

use fastscnn_core::testing::shared_dir;

mod common;
use common::{assert_clean_failure, fastscnn};

const CITY: &str = "gtFine/val/frankfurt";
const FRAMES: [&str; 2] = ["frankfurt_000000_000294", "frankfurt_000001_058914"];

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn writes_the_shipped_train_ids_then_leaves_them_alone() {
    let Some(shared) = shared_dir() else { return };
    let mini = shared.join("cityscapes-mini");
    let root = tempfile::tempdir().unwrap();
    let city = root.path().join(CITY);
    std::fs::create_dir_all(&city).unwrap();
    for frame in FRAMES {
        let name = format!("{frame}_gtFine_labelIds.png");
        std::fs::copy(mini.join(CITY).join(&name), city.join(&name)).unwrap();
    }

    let first = fastscnn()
        .args(["prepare", "--dataset-root"])
        .arg(root.path())
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&first.get_output().stdout).into_owned();
    assert!(
        stdout.contains("2 written, 0 already up to date"),
        "{stdout}"
    );
    let mut times = Vec::new();
    for frame in FRAMES {
        let name = format!("{frame}_gtFine_labelTrainIds.png");
        let ours = image::open(city.join(&name)).unwrap().into_luma8();
        let shipped = image::open(mini.join(CITY).join(&name))
            .unwrap()
            .into_luma8();
        assert!(ours == shipped, "{name} differs from the shipped file");
        times.push(modified(&city.join(&name)));
    }

    let second = fastscnn()
        .args(["prepare", "--split", "val", "--dataset-root"])
        .arg(root.path())
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&second.get_output().stdout).into_owned();
    assert!(
        stdout.contains("0 written, 2 already up to date"),
        "{stdout}"
    );
    for (frame, before) in FRAMES.iter().zip(times) {
        let path = city.join(format!("{frame}_gtFine_labelTrainIds.png"));
        assert_eq!(modified(&path), before, "{frame} was rewritten");
    }
    // Nothing else (no temporary files) was left in the folder.
    assert_eq!(std::fs::read_dir(&city).unwrap().count(), 4);
}

#[test]
fn bad_trees_fail_with_one_line() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nowhere");
    assert_clean_failure(
        fastscnn().args(["prepare", "--dataset-root"]).arg(&missing),
        "dataset root does not exist",
    );
    assert_clean_failure(
        fastscnn()
            .args(["prepare", "--dataset-root"])
            .arg(root.path()),
        "neither a Cityscapes root (leftImg8bit/, gtFine/) nor a folder dataset",
    );
    let cityscapes = ["prepare", "--dataset-format", "cityscapes"];
    assert_clean_failure(
        fastscnn()
            .args(cityscapes)
            .args(["--split", "train", "--dataset-root"])
            .arg(root.path()),
        "split `train` not found",
    );
    assert_clean_failure(
        fastscnn()
            .args(cityscapes)
            .arg("--dataset-root")
            .arg(root.path()),
        "gtFine: no label folder",
    );

    let city = root.path().join(CITY);
    std::fs::create_dir_all(&city).unwrap();
    let fake = city.join("frankfurt_000000_000001_gtFine_labelIds.png");
    std::fs::write(&fake, "not a png").unwrap();
    assert_clean_failure(
        fastscnn()
            .args(["prepare", "--dataset-root"])
            .arg(root.path()),
        &format!("{}: cannot read image", fake.display()),
    );
}

#[test]
fn a_split_without_label_files_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(CITY)).unwrap();
    assert_clean_failure(
        fastscnn()
            .args(["prepare", "--dataset-root"])
            .arg(root.path()),
        "no `*_gtFine_labelIds.png`",
    );
}
