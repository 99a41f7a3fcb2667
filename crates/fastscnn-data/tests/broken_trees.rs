//! Broken dataset trees give errors that name the path and the problem, strict or counted.

use std::path::{Path, PathBuf};

use fastscnn_data::{discover, DataError, DiscoverOptions};
use image::{GrayImage, RgbImage};

const IMAGE: &str = "leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png";
const LABEL: &str = "gtFine/train/ulm/ulm_000000_000019_gtFine_labelIds.png";
const OTHER_IMAGE: &str = "leftImg8bit/train/ulm/ulm_000001_000019_leftImg8bit.png";
const OTHER_LABEL: &str = "gtFine/train/ulm/ulm_000001_000019_gtFine_labelIds.png";

/// A valid two-frame tree of 16x8 frames.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for rel in [IMAGE, OTHER_IMAGE] {
        write(dir.path(), rel, |p| RgbImage::new(16, 8).save(p));
    }
    for rel in [LABEL, OTHER_LABEL] {
        write(dir.path(), rel, |p| GrayImage::new(16, 8).save(p));
    }
    dir
}

fn write(root: &Path, rel: &str, save: impl FnOnce(&Path) -> image::ImageResult<()>) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    save(&path).unwrap();
    path
}

fn strict(root: &Path) -> Result<fastscnn_data::Discovery, DataError> {
    discover(root, "train", DiscoverOptions::default())
}

fn lenient(root: &Path) -> fastscnn_data::Discovery {
    let options = DiscoverOptions {
        strict: false,
        ..Default::default()
    };
    discover(root, "train", options).unwrap()
}

#[test]
fn missing_root_and_split_name_the_folder() {
    let dir = tree();
    let gone = dir.path().join("nowhere");
    let err = strict(&gone).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: dataset root does not exist", gone.display())
    );
    let err = discover(dir.path(), "val", DiscoverOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::MissingSplit { .. }));
    assert!(
        err.to_string()
            .contains(&format!("leftImg8bit{}val", std::path::MAIN_SEPARATOR)),
        "{err}"
    );
}

#[test]
fn empty_split_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("leftImg8bit/train/ulm")).unwrap();
    std::fs::create_dir_all(dir.path().join("gtFine/train/ulm")).unwrap();
    let err = strict(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { .. }), "{err}");
    assert!(err.to_string().contains("no images"), "{err}");
}

#[test]
fn image_without_label_fails_strict_and_is_counted_otherwise() {
    let dir = tree();
    std::fs::remove_file(dir.path().join(LABEL)).unwrap();
    let err = strict(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::MissingLabel { .. }), "{message}");
    assert!(message.starts_with(&dir.path().join(IMAGE).display().to_string()));
    assert!(message.contains("ulm_000000_000019_gtFine_labelIds.png"));

    let found = lenient(dir.path());
    assert_eq!(found.samples.len(), 1);
    assert_eq!(found.skipped.len(), 1);
    assert_eq!(found.samples[0].name, "ulm_000001_000019");
}

#[test]
fn label_of_another_size_names_both_files() {
    let dir = tree();
    write(dir.path(), LABEL, |p| GrayImage::new(8, 8).save(p));
    let err = strict(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::SizeMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: label is 8x8 but its image {} is 16x8",
            dir.path().join(LABEL).display(),
            dir.path().join(IMAGE).display()
        )
    );
    assert_eq!(lenient(dir.path()).skipped.len(), 1);
}

#[test]
fn truncated_png_fails_at_discovery_or_at_load_naming_the_file() {
    let dir = tree();
    let image = dir.path().join(IMAGE);
    let bytes = std::fs::read(&image).unwrap();

    // The header survives: discovery passes, decoding the pixels fails.
    std::fs::write(&image, &bytes[..bytes.len() - 20]).unwrap();
    let found = strict(dir.path()).unwrap();
    let err = found.samples[0].load().unwrap_err();
    assert!(matches!(err, DataError::ReadImage { .. }), "{err}");
    let message = err.to_string();
    let head = format!("{}: cannot read image: ", image.display());
    assert!(
        message.starts_with(&head) && message.len() > head.len(),
        "the file and then the decoder's cause: {message}"
    );

    // The header is cut: discovery itself fails.
    std::fs::write(&image, &bytes[..10]).unwrap();
    let err = strict(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::ReadImage { .. }), "{err}");
    assert_eq!(lenient(dir.path()).skipped.len(), 1);
}

#[test]
fn colour_label_where_ids_are_expected_is_refused() {
    let dir = tree();
    let label = write(dir.path(), LABEL, |p| RgbImage::new(16, 8).save(p));
    let found = strict(dir.path()).unwrap();
    let err = found.samples[0].load().unwrap_err();
    assert!(matches!(err, DataError::LabelFormat { .. }), "{err}");
    assert!(err.to_string().starts_with(&label.display().to_string()));
}
