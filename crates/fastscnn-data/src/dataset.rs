//! Finding the frames of a Cityscapes split on disk, in the layout the dataset ships in:
//! `leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png` and
//! `gtFine/<split>/<city>/<frame>_gtFine_<kind>.png`.

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};

use crate::error::{DataError, Result};
use crate::image_io::{image_size, read_gray, read_rgb};
use crate::labels::{is_train_id, label_id_to_train_id_table, IGNORE_TRAIN_ID};

const IMAGE_SUFFIX: &str = "_leftImg8bit.png";
pub(crate) const LABEL_IDS_SUFFIX: &str = "_gtFine_labelIds.png";
pub(crate) const TRAIN_IDS_SUFFIX: &str = "_gtFine_labelTrainIds.png";

/// How a label file stores its classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelEncoding {
    /// `*_gtFine_labelTrainIds.png`: train ids 0..19 and 255, ready to use.
    TrainIds,
    /// `*_gtFine_labelIds.png`: the 34 label ids, mapped to train ids when read.
    LabelIds,
    /// A folder dataset's mask: class indices below `classes`, and `ignore` for unlabelled
    /// pixels, which becomes 255 when read, as every ignored pixel of a batch is.
    ClassIndices {
        /// The dataset's number of classes.
        classes: u8,
        /// The dataset's ignore value.
        ignore: u8,
    },
}

/// One frame's label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFile {
    /// The `*_gtFine_labelTrainIds.png` or `*_gtFine_labelIds.png` file.
    pub path: PathBuf,
    /// Whether the file holds train ids or label ids.
    pub encoding: LabelEncoding,
}

/// One frame of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// `<city>_<sequence>_<frame>`, the name every file of the frame starts with.
    pub name: String,
    /// The `*_leftImg8bit.png` file.
    pub image: PathBuf,
    /// The frame's label file; `None` where labels are not required and the frame has none.
    pub label: Option<LabelFile>,
}

/// A decoded frame: the RGB image and, when the sample has one, its train-id map.
#[derive(Debug, Clone)]
pub struct LoadedSample {
    /// The decoded image, 8-bit RGB.
    pub image: RgbImage,
    /// Train ids (0..19, 255 = ignore) of the image's size; `None` when the sample has no label.
    pub train_ids: Option<GrayImage>,
}

impl Sample {
    /// Decodes the image and the label, mapping label ids to train ids, and checks that both have
    /// the same size.
    pub fn load(&self) -> Result<LoadedSample> {
        let image = read_rgb(&self.image)?;
        let Some(label) = &self.label else {
            return Ok(LoadedSample {
                image,
                train_ids: None,
            });
        };
        let mut train_ids = read_gray(&label.path)?;
        if train_ids.dimensions() != image.dimensions() {
            return Err(DataError::SizeMismatch {
                image: self.image.clone(),
                label: label.path.clone(),
                image_size: image.dimensions(),
                label_size: train_ids.dimensions(),
            });
        }
        to_train_ids(&mut train_ids, label.encoding, &label.path)?;
        Ok(LoadedSample {
            image,
            train_ids: Some(train_ids),
        })
    }
}

/// Turns a label image into train ids in place: label ids through the official table, train ids
/// as they are. A value the encoding does not have is an error naming the first pixel holding
/// it, as cityscapesScripts refuses it, rather than a silent "ignore".
pub fn to_train_ids(labels: &mut GrayImage, encoding: LabelEncoding, path: &Path) -> Result<()> {
    let width = labels.width().max(1);
    let unknown = |index: usize, what, value| DataError::UnknownLabel {
        path: path.to_path_buf(),
        what,
        value,
        x: (index as u64 % u64::from(width)) as u32,
        y: (index as u64 / u64::from(width)) as u32,
    };
    match encoding {
        LabelEncoding::LabelIds => {
            let table = label_id_to_train_id_table();
            for (index, v) in labels.iter_mut().enumerate() {
                *v = table[usize::from(*v)].ok_or_else(|| unknown(index, "label id", *v))?;
            }
        }
        LabelEncoding::ClassIndices { classes, ignore } => {
            for (index, v) in labels.iter_mut().enumerate() {
                if *v == ignore {
                    *v = IGNORE_TRAIN_ID;
                } else if *v >= classes {
                    return Err(DataError::UnknownClass {
                        path: path.to_path_buf(),
                        value: *v,
                        classes,
                        ignore,
                        x: (index as u64 % u64::from(width)) as u32,
                        y: (index as u64 / u64::from(width)) as u32,
                    });
                }
            }
        }
        LabelEncoding::TrainIds => {
            if let Some(index) = labels.iter().position(|&v| !is_train_id(v)) {
                return Err(unknown(index, "train id", labels.as_raw()[index]));
            }
        }
    }
    Ok(())
}

/// Options of [`discover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Fail on the first broken frame (true), or leave broken frames out and report them in
    /// [`Discovery::skipped`] (false).
    pub strict: bool,
    /// Every image needs a label (training, evaluation). Without it, labels are attached where
    /// they exist, as for the test split, whose labels are not public.
    pub require_labels: bool,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        Self {
            strict: true,
            require_labels: true,
        }
    }
}

/// The frames of one split, in path order, and the frames left out when not strict.
#[derive(Debug)]
pub struct Discovery {
    /// The frames found, in path order.
    pub samples: Vec<Sample>,
    /// Why each broken frame was left out; always empty when discovery is strict.
    pub skipped: Vec<DataError>,
}

/// The splits of a dataset root that have images (`leftImg8bit/<split>`), sorted.
pub fn available_splits(root: &Path) -> Result<Vec<String>> {
    check_root(root)?;
    Ok(subfolders(&root.join("leftImg8bit"))?
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// Finds every frame of `split` under `root`. Label files are taken as train ids when
/// `*_gtFine_labelTrainIds.png` exists, otherwise as label ids. Sizes are checked from the file
/// headers, so a truncated file whose header is intact is only caught when it is loaded.
pub fn discover(root: &Path, split: &str, options: DiscoverOptions) -> Result<Discovery> {
    check_root(root)?;
    let image_split = split_folder(root, "leftImg8bit", split)?;
    let label_split = root.join("gtFine").join(split);
    if options.require_labels && !label_split.is_dir() {
        return Err(DataError::MissingSplit {
            split: split.to_string(),
            path: label_split,
        });
    }

    let mut discovery = Discovery {
        samples: Vec::new(),
        skipped: Vec::new(),
    };
    for city in subfolders(&image_split)? {
        let city_name = city.file_name().unwrap_or_default();
        for image in files_with_suffix(&city, IMAGE_SUFFIX)? {
            let file_name = image.file_name().unwrap_or_default().to_string_lossy();
            let name = file_name[..file_name.len() - IMAGE_SUFFIX.len()].to_string();
            let label_dir = label_split.join(city_name);
            match find_label(&image, &label_dir, &name, options.require_labels) {
                Ok(label) => discovery.samples.push(Sample { name, image, label }),
                Err(e) if !options.strict => discovery.skipped.push(e),
                Err(e) => return Err(e),
            }
        }
    }
    if discovery.samples.is_empty() {
        return Err(match discovery.skipped.into_iter().next() {
            // Everything was broken: the first reason says more than "empty".
            Some(first) => first,
            None => DataError::EmptySplit { path: image_split },
        });
    }
    Ok(discovery)
}

pub(crate) fn check_root(root: &Path) -> Result<()> {
    if root.is_dir() {
        Ok(())
    } else {
        Err(DataError::MissingRoot {
            path: root.to_path_buf(),
        })
    }
}

/// A split names one folder under `leftImg8bit/` and `gtFine/`: one normal path component, so
/// that no split reaches outside the dataset root.
pub fn check_split_name(split: &str) -> Result<()> {
    let mut components = Path::new(split).components();
    let one_normal = matches!(components.next(), Some(std::path::Component::Normal(_)))
        && components.next().is_none();
    if one_normal && !split.contains(['/', '\\']) {
        Ok(())
    } else {
        Err(DataError::InvalidSplit {
            split: split.to_string(),
        })
    }
}

pub(crate) fn split_folder(root: &Path, kind: &str, split: &str) -> Result<PathBuf> {
    check_split_name(split)?;
    let path = root.join(kind).join(split);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(DataError::MissingSplit {
            split: split.to_string(),
            path,
        })
    }
}

fn find_label(
    image: &Path,
    label_dir: &Path,
    name: &str,
    required: bool,
) -> Result<Option<LabelFile>> {
    let train_ids = label_dir.join(format!("{name}{TRAIN_IDS_SUFFIX}"));
    let label_ids = label_dir.join(format!("{name}{LABEL_IDS_SUFFIX}"));
    let label = if train_ids.is_file() {
        LabelFile {
            path: train_ids,
            encoding: LabelEncoding::TrainIds,
        }
    } else if label_ids.is_file() {
        LabelFile {
            path: label_ids,
            encoding: LabelEncoding::LabelIds,
        }
    } else if required {
        return Err(DataError::MissingLabel {
            image: image.to_path_buf(),
            expected: label_ids,
        });
    } else {
        return Ok(None);
    };
    check_same_size(image, &label.path)?;
    Ok(Some(label))
}

/// A label must be its image's size; both are read from the file headers.
pub(crate) fn check_same_size(image: &Path, label: &Path) -> Result<()> {
    let image_dims = image_size(image)?;
    let label_dims = image_size(label)?;
    if image_dims != label_dims {
        return Err(DataError::SizeMismatch {
            image: image.to_path_buf(),
            label: label.to_path_buf(),
            image_size: image_dims,
            label_size: label_dims,
        });
    }
    Ok(())
}

pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let read_err = |source| DataError::ReadDir {
        path: dir.to_path_buf(),
        cause: source,
    };
    let mut paths = std::fs::read_dir(dir)
        .map_err(read_err)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(read_err)?;
    paths.sort();
    Ok(paths)
}

pub(crate) fn subfolders(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

pub(crate) fn files_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::new(width, height).save(path).unwrap();
    }

    #[test]
    fn prefers_train_ids_and_falls_back_to_label_ids() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write_png(
            &r.join("leftImg8bit/val/aachen/a_1_1_leftImg8bit.png"),
            4,
            2,
        );
        write_png(
            &r.join("leftImg8bit/val/aachen/a_1_2_leftImg8bit.png"),
            4,
            2,
        );
        write_png(&r.join("gtFine/val/aachen/a_1_1_gtFine_labelIds.png"), 4, 2);
        write_png(
            &r.join("gtFine/val/aachen/a_1_1_gtFine_labelTrainIds.png"),
            4,
            2,
        );
        write_png(&r.join("gtFine/val/aachen/a_1_2_gtFine_labelIds.png"), 4, 2);
        let found = discover(r, "val", DiscoverOptions::default()).unwrap();
        let encodings: Vec<_> = found
            .samples
            .iter()
            .map(|s| (s.name.as_str(), s.label.as_ref().unwrap().encoding))
            .collect();
        assert_eq!(
            encodings,
            [
                ("a_1_1", LabelEncoding::TrainIds),
                ("a_1_2", LabelEncoding::LabelIds)
            ]
        );
        assert_eq!(available_splits(r).unwrap(), ["val"]);
    }

    #[test]
    fn unlabelled_split_is_fine_when_labels_are_optional() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write_png(&r.join("leftImg8bit/test/bonn/b_0_0_leftImg8bit.png"), 2, 2);
        let options = DiscoverOptions {
            require_labels: false,
            ..Default::default()
        };
        let found = discover(r, "test", options).unwrap();
        assert_eq!(found.samples.len(), 1);
        assert!(found.samples[0].label.is_none());
        let err = discover(r, "test", DiscoverOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::MissingSplit { .. }), "{err}");
    }
}
