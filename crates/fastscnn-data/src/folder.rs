//! A dataset of any classes in a plain layout, for data that is not Cityscapes:
//!
//! ```text
//! ROOT/classes.json                          the classes (see `classes`)
//! ROOT/images/<split>/**/<name>.png|jpg|jpeg the photos, in any sub-folders
//! ROOT/masks/<split>/**/<name>.png           one 8-bit single-channel mask per photo, at the
//!                                            same relative path: a class index per pixel
//! ```

use std::path::{Path, PathBuf};

use crate::classes::ClassTable;
use crate::dataset::{
    check_root, check_same_size, read_dir_sorted, split_folder, DiscoverOptions, Discovery,
    LabelEncoding, LabelFile, Sample,
};
use crate::error::{DataError, Result};

/// The classes file at the root of a folder dataset.
pub const CLASSES_FILE: &str = "classes.json";

/// The folder of a split's images under the root.
pub const IMAGES_FOLDER: &str = "images";

/// The folder of a split's masks under the root.
pub const MASKS_FOLDER: &str = "masks";

/// The image extensions a folder dataset's photos may have (any case).
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Sub-folders deeper than this are refused: a symbolic link loop would otherwise never end.
const MAX_DEPTH: usize = 16;

/// The splits of a folder dataset that have images (`images/<split>`), sorted.
pub fn folder_splits(root: &Path) -> Result<Vec<String>> {
    check_root(root)?;
    Ok(read_dir_sorted(&root.join(IMAGES_FOLDER))?
        .into_iter()
        .filter(|p| p.is_dir() && !is_hidden(p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// Finds every photo of `split` and its mask, whose values are checked against `classes` when
/// the mask is loaded. A mask must exist for every photo when labels are required, and a mask
/// without a photo is an error (both left out, and reported, when not strict). Sizes are checked
/// from the file headers.
pub fn discover_folder(
    root: &Path,
    split: &str,
    classes: &ClassTable,
    options: DiscoverOptions,
) -> Result<Discovery> {
    check_root(root)?;
    let image_split = split_folder(root, IMAGES_FOLDER, split)?;
    let mask_split = root.join(MASKS_FOLDER).join(split);
    if options.require_labels && !mask_split.is_dir() {
        return Err(DataError::MissingSplit {
            split: split.to_string(),
            path: mask_split,
        });
    }
    let encoding = LabelEncoding::ClassIndices {
        classes: classes.len() as u8,
        ignore: classes.ignore_index(),
    };

    let mut images = Vec::new();
    walk(&image_split, &image_split, 0, &mut |path, relative| {
        if has_image_extension(path) {
            images.push((relative.with_extension(""), path.to_path_buf()));
        }
    })?;
    // Sorted by name: a photo and its namesake with another extension are neighbours.
    images.sort();
    let mut discovery = Discovery {
        samples: Vec::new(),
        skipped: Vec::new(),
    };
    let keep = |result: Result<Sample>, discovery: &mut Discovery| match result {
        Ok(sample) => {
            discovery.samples.push(sample);
            Ok(())
        }
        Err(e) if !options.strict => {
            discovery.skipped.push(e);
            Ok(())
        }
        Err(e) => Err(e),
    };
    for (index, (name, image)) in images.iter().enumerate() {
        if let Some((previous, first)) = index.checked_sub(1).map(|i| &images[i]) {
            if previous == name {
                let ambiguous = DataError::AmbiguousImage {
                    first: first.clone(),
                    second: image.clone(),
                };
                keep(Err(ambiguous), &mut discovery)?;
                continue;
            }
        }
        // The name keeps every dot but the extension's: `cam.0001.jpg` is `cam.0001.png`.
        let mut mask = mask_split.join(name).into_os_string();
        mask.push(".png");
        let mask = PathBuf::from(mask);
        let sample =
            find_mask(image, &mask, options.require_labels, encoding).map(|label| Sample {
                name: name_of(name),
                image: image.clone(),
                label,
            });
        keep(sample, &mut discovery)?;
    }
    if mask_split.is_dir() {
        let mut orphans = Vec::new();
        walk(&mask_split, &mask_split, 0, &mut |path, relative| {
            let is_png = path.extension().is_some_and(|e| e == "png");
            let stem = relative.with_extension("");
            if is_png
                && images
                    .binary_search_by(|(name, _)| name.cmp(&stem))
                    .is_err()
            {
                orphans.push(DataError::MaskWithoutImage {
                    mask: path.to_path_buf(),
                    expected: image_split.join(&stem),
                });
            }
        })?;
        for orphan in orphans {
            keep(Err(orphan), &mut discovery)?;
        }
    }
    if discovery.samples.is_empty() {
        return Err(match discovery.skipped.into_iter().next() {
            Some(first) => first,
            None => DataError::NoImages { path: image_split },
        });
    }
    Ok(discovery)
}

/// Every file under `dir` (sorted, recursively), with its path relative to `base`.
fn walk(dir: &Path, base: &Path, depth: usize, visit: &mut dyn FnMut(&Path, &Path)) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(DataError::TooDeep {
            path: dir.to_path_buf(),
            depth: MAX_DEPTH,
        });
    }
    for path in read_dir_sorted(dir)?.into_iter().filter(|p| !is_hidden(p)) {
        if path.is_dir() {
            walk(&path, base, depth + 1, visit)?;
        } else if path.is_file() {
            let relative = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
            visit(&path, &relative);
        }
    }
    Ok(())
}

/// Names starting with a dot (`.ipynb_checkpoints/`, macOS' `._x.png`) are not the dataset's.
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// A sample's name: its path under the split without extension, `/`-separated on every system.
fn name_of(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn find_mask(
    image: &Path,
    mask: &Path,
    required: bool,
    encoding: LabelEncoding,
) -> Result<Option<LabelFile>> {
    if !mask.is_file() {
        return if required {
            Err(DataError::MissingLabel {
                image: image.to_path_buf(),
                expected: mask.to_path_buf(),
            })
        } else {
            Ok(None)
        };
    }
    check_same_size(image, mask)?;
    Ok(Some(LabelFile {
        path: mask.to_path_buf(),
        encoding,
    }))
}

/// Where a dataset's images, labels and classes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    /// Cityscapes as it ships: `leftImg8bit/`, `gtFine/`, its 19 train classes.
    Cityscapes,
    /// `images/`, `masks/` and `classes.json` ([`discover_folder`]).
    Folder,
}

impl DatasetFormat {
    /// Every format, by name.
    pub const ALL: [DatasetFormat; 2] = [DatasetFormat::Cityscapes, DatasetFormat::Folder];

    /// The format's name: `cityscapes` or `folder`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::Cityscapes => "cityscapes",
            DatasetFormat::Folder => "folder",
        }
    }

    /// The format of the dataset at `root`: Cityscapes where `leftImg8bit/` or `gtFine/` is
    /// (preparing needs only the labels), a folder dataset where `images/` or `classes.json` is.
    pub fn detect(root: &Path) -> Result<Self> {
        check_root(root)?;
        if root.join("leftImg8bit").is_dir() || root.join("gtFine").is_dir() {
            Ok(DatasetFormat::Cityscapes)
        } else if root.join(IMAGES_FOLDER).is_dir() || root.join(CLASSES_FILE).exists() {
            Ok(DatasetFormat::Folder)
        } else {
            Err(DataError::UnknownLayout {
                path: root.to_path_buf(),
            })
        }
    }
}

impl std::str::FromStr for DatasetFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DatasetFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown dataset format `{s}` (cityscapes or folder)"))
    }
}

/// A dataset root in either format, with its classes: what training, evaluation and preparation
/// start from.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    format: DatasetFormat,
    classes: ClassTable,
}

impl Dataset {
    /// The dataset at `root`, in `format` or the one detected; a folder dataset's
    /// `classes.json` is read and checked here.
    pub fn open(root: &Path, format: Option<DatasetFormat>) -> Result<Self> {
        let format = match format {
            Some(format) => {
                check_root(root)?;
                format
            }
            None => DatasetFormat::detect(root)?,
        };
        let classes = match format {
            DatasetFormat::Cityscapes => ClassTable::cityscapes(),
            DatasetFormat::Folder => ClassTable::read(&root.join(CLASSES_FILE))?,
        };
        Ok(Self {
            root: root.to_path_buf(),
            format,
            classes,
        })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dataset's format.
    pub fn format(&self) -> DatasetFormat {
        self.format
    }

    /// The classes its labels use.
    pub fn classes(&self) -> &ClassTable {
        &self.classes
    }

    /// The splits that have images, sorted.
    pub fn splits(&self) -> Result<Vec<String>> {
        match self.format {
            DatasetFormat::Cityscapes => crate::dataset::available_splits(&self.root),
            DatasetFormat::Folder => folder_splits(&self.root),
        }
    }

    /// The samples of `split`.
    pub fn discover(&self, split: &str, options: DiscoverOptions) -> Result<Discovery> {
        match self.format {
            DatasetFormat::Cityscapes => crate::dataset::discover(&self.root, split, options),
            DatasetFormat::Folder => discover_folder(&self.root, split, &self.classes, options),
        }
    }
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, RgbImage};

    use super::*;
    use crate::classes::ClassInfo;

    fn three_classes() -> ClassTable {
        let class = |name: &str| ClassInfo {
            name: name.into(),
            color: [1, 2, 3],
        };
        ClassTable::new(vec![class("a"), class("b"), class("c")], 9).unwrap()
    }

    fn photo(path: &Path, width: u32, height: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::new(width, height).save(path).unwrap();
    }

    fn mask(path: &Path, values: &[u8], width: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let height = values.len() as u32 / width;
        GrayImage::from_raw(width, height, values.to_vec())
            .unwrap()
            .save(path)
            .unwrap();
    }

    /// A root with classes.json and two photos (one in a sub-folder, one a JPEG) with masks.
    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::write(r.join(CLASSES_FILE), three_classes().to_json()).unwrap();
        photo(&r.join("images/train/x.png"), 2, 2);
        photo(&r.join("images/train/day/y.0001.JPG"), 2, 2);
        photo(&r.join("images/train/day/._y.0001.JPG"), 2, 2);
        photo(&r.join("images/.cache/train/z.png"), 2, 2);
        mask(&r.join("masks/train/x.png"), &[0, 1, 2, 9], 2);
        mask(&r.join("masks/train/day/y.0001.png"), &[2, 2, 9, 0], 2);
        dir
    }

    #[test]
    fn photos_in_sub_folders_find_their_masks_and_ignore_becomes_255() {
        let dir = root();
        let dataset = Dataset::open(dir.path(), None).unwrap();
        assert_eq!(dataset.format(), DatasetFormat::Folder);
        assert_eq!(dataset.classes(), &three_classes());
        assert_eq!(dataset.splits().unwrap(), ["train"]);
        let found = dataset
            .discover("train", DiscoverOptions::default())
            .unwrap();
        let names: Vec<_> = found.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["day/y.0001", "x"]);
        let loaded = found.samples[1].load().unwrap();
        assert_eq!(loaded.train_ids.unwrap().as_raw(), &[0, 1, 2, 255]);
    }

    #[test]
    fn broken_folders_say_which_file_and_what() {
        let dir = root();
        let r = dir.path();
        let strict = DiscoverOptions::default();
        let dataset = Dataset::open(r, None).unwrap();

        // A mask value that is neither a class nor the ignore value, found when loading.
        mask(&r.join("masks/train/x.png"), &[0, 1, 3, 9], 2);
        let found = dataset.discover("train", strict).unwrap();
        let err = found.samples[1].load().unwrap_err().to_string();
        assert!(
            err.contains("pixel (0, 1) holds 3, neither a class (0 to 2)"),
            "{err}"
        );

        // A photo without its mask; leniently, the other photo is kept.
        std::fs::remove_file(r.join("masks/train/x.png")).unwrap();
        let err = dataset.discover("train", strict).unwrap_err().to_string();
        assert!(err.contains("x.png: no label for this image"), "{err}");
        let lenient = DiscoverOptions {
            strict: false,
            ..strict
        };
        let found = dataset.discover("train", lenient).unwrap();
        assert_eq!((found.samples.len(), found.skipped.len()), (1, 1));

        // A mask without its photo.
        mask(&r.join("masks/train/x.png"), &[0, 1, 2, 9], 2);
        mask(&r.join("masks/train/z.png"), &[0, 1, 2, 9], 2);
        let err = dataset.discover("train", strict).unwrap_err().to_string();
        assert!(err.contains("z.png: a mask without an image"), "{err}");
        std::fs::remove_file(r.join("masks/train/z.png")).unwrap();

        // Two photos, one name.
        photo(&r.join("images/train/x.jpeg"), 2, 2);
        let err = dataset.discover("train", strict).unwrap_err().to_string();
        assert!(
            err.contains("two images with one name share a mask"),
            "{err}"
        );
        std::fs::remove_file(r.join("images/train/x.jpeg")).unwrap();

        // A mask of another size.
        mask(&r.join("masks/train/x.png"), &[0, 1, 2], 3);
        let err = dataset.discover("train", strict).unwrap_err().to_string();
        assert!(err.contains("label is 3x1 but its image"), "{err}");

        // An RGB mask.
        photo(&r.join("masks/train/x.png"), 2, 2);
        let found = dataset.discover("train", strict).unwrap();
        let err = found.samples[1].load().unwrap_err().to_string();
        assert!(err.contains("8-bit single-channel"), "{err}");

        // No classes file.
        std::fs::remove_file(r.join(CLASSES_FILE)).unwrap();
        let err = Dataset::open(r, None).unwrap_err().to_string();
        assert!(err.contains("classes.json: cannot read"), "{err}");
    }

    #[test]
    fn the_format_is_told_from_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let err = DatasetFormat::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("neither a Cityscapes root"), "{err}");
        std::fs::create_dir(dir.path().join("leftImg8bit")).unwrap();
        assert_eq!(
            DatasetFormat::detect(dir.path()).unwrap(),
            DatasetFormat::Cityscapes
        );
        assert_eq!("folder".parse(), Ok(DatasetFormat::Folder));
        assert!("coco".parse::<DatasetFormat>().is_err());
    }
}
