//! The label table, discovery and loading against real Cityscapes files.

use std::path::{Path, PathBuf};

use fastscnn_core::testing::shared_dir;
use fastscnn_data::labels::{color_to_train_id, label_id_to_train_id_table};
use fastscnn_data::{discover, DiscoverOptions, LabelEncoding};

const FRAMES: [&str; 2] = ["frankfurt_000000_000294", "frankfurt_000001_058914"];

fn mini() -> Option<PathBuf> {
    shared_dir().map(|s| s.join("cityscapes-mini"))
}

fn gray(path: &Path) -> image::GrayImage {
    image::open(path).unwrap().into_luma8()
}

fn label_path(root: &Path, frame: &str, kind: &str) -> PathBuf {
    root.join(format!("gtFine/val/frankfurt/{frame}_gtFine_{kind}.png"))
}

#[test]
fn label_ids_map_to_the_shipped_train_ids_pixel_for_pixel() {
    let Some(root) = mini() else { return };
    let table = label_id_to_train_id_table();
    for frame in FRAMES {
        let ids = gray(&label_path(&root, frame, "labelIds"));
        let expected = gray(&label_path(&root, frame, "labelTrainIds"));
        assert_eq!(ids.dimensions(), expected.dimensions());
        let mapped: Vec<u8> = ids
            .as_raw()
            .iter()
            .map(|&id| table[id as usize].unwrap())
            .collect();
        assert!(
            mapped == *expected.as_raw(),
            "{frame}: mapped train ids differ"
        );
    }
}

#[test]
fn colour_labels_decode_to_the_shipped_train_ids() {
    let Some(root) = mini() else { return };
    let frame = "frankfurt_000001_058914";
    let colour = image::open(label_path(&root, frame, "color"))
        .unwrap()
        .into_rgb8();
    let expected = gray(&label_path(&root, frame, "labelTrainIds"));
    let decoded: Vec<u8> = colour.pixels().map(|p| color_to_train_id(p.0)).collect();
    assert!(decoded == *expected.as_raw(), "colour decoding differs");
}

#[test]
fn discovery_finds_both_val_frames_with_their_train_ids() {
    let Some(root) = mini() else { return };
    let found = discover(&root, "val", DiscoverOptions::default()).unwrap();
    assert!(found.skipped.is_empty());
    let names: Vec<&str> = found.samples.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, FRAMES);
    for sample in &found.samples {
        let label = sample.label.as_ref().unwrap();
        assert_eq!(label.encoding, LabelEncoding::TrainIds);
        let loaded = sample.load().unwrap();
        assert_eq!(
            loaded.train_ids.unwrap(),
            gray(&label_path(&root, &sample.name, "labelTrainIds"))
        );
    }
}

#[test]
fn label_ids_are_mapped_on_the_fly_when_train_ids_are_absent() {
    let Some(root) = mini() else { return };
    let copy = tempfile::tempdir().unwrap();
    let frame = "frankfurt_000000_000294";
    for rel in [
        format!("leftImg8bit/val/frankfurt/{frame}_leftImg8bit.png"),
        format!("gtFine/val/frankfurt/{frame}_gtFine_labelIds.png"),
    ] {
        let dest = copy.path().join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(root.join(&rel), dest).unwrap();
    }
    let found = discover(copy.path(), "val", DiscoverOptions::default()).unwrap();
    let sample = &found.samples[0];
    assert_eq!(
        sample.label.as_ref().unwrap().encoding,
        LabelEncoding::LabelIds
    );
    assert_eq!(
        sample.load().unwrap().train_ids.unwrap(),
        gray(&label_path(&root, frame, "labelTrainIds"))
    );
}
