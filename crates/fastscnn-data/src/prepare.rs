//! Writing `*_gtFine_labelTrainIds.png` beside every `*_gtFine_labelIds.png`, as cityscapesScripts'
//! `createTrainIdLabelImgs` does, so training reads train ids directly instead of mapping each
//! label on every load.

use std::path::{Path, PathBuf};

use fastscnn_core::atomic_write::write_atomically;
use image::ImageFormat;
use rayon::prelude::*;

use crate::dataset::{
    files_with_suffix, split_folder, subfolders, to_train_ids, LabelEncoding, LABEL_IDS_SUFFIX,
    TRAIN_IDS_SUFFIX,
};
use crate::error::{DataError, Result};
use crate::image_io::read_gray;

/// What happened to one label file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// The train-id file was missing or differed, and was written.
    Written,
    /// The train-id file already held exactly these pixels and was left untouched.
    UpToDate,
}

/// How many files were written and how many were already up to date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// Train-id files written.
    pub written: usize,
    /// Train-id files that already held the right pixels.
    pub up_to_date: usize,
}

/// The splits that have labels (`gtFine/<split>`), sorted.
pub fn label_splits(root: &Path) -> Result<Vec<String>> {
    if !root.is_dir() {
        return Err(DataError::MissingRoot {
            path: root.to_path_buf(),
        });
    }
    let gt = root.join("gtFine");
    if !gt.is_dir() {
        return Err(DataError::MissingLabelFolder { path: gt });
    }
    Ok(subfolders(&gt)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect())
}

/// Every `*_gtFine_labelIds.png` of `split`, in path order.
pub fn label_id_files(root: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for city in subfolders(&split_folder(root, "gtFine", split)?)? {
        files.extend(files_with_suffix(&city, LABEL_IDS_SUFFIX)?);
    }
    Ok(files)
}

/// Where the train ids of a `*_gtFine_labelIds.png` go.
pub fn train_ids_path(label_ids: &Path) -> PathBuf {
    let name = label_ids
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .replace(LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX);
    label_ids.with_file_name(name)
}

/// Converts `files` in parallel, calling `on_file` as each finishes. Stops at the first error;
/// files finished before it stay, each complete.
pub fn prepare_train_ids(
    files: &[PathBuf],
    on_file: impl Fn(&Path, PrepareOutcome) + Sync,
) -> Result<PrepareReport> {
    let outcomes: Vec<PrepareOutcome> = files
        .par_iter()
        .map(|path| {
            let outcome = prepare_one(path)?;
            on_file(path, outcome);
            Ok(outcome)
        })
        .collect::<Result<_>>()?;
    let written = outcomes
        .iter()
        .filter(|&&o| o == PrepareOutcome::Written)
        .count();
    Ok(PrepareReport {
        written,
        up_to_date: outcomes.len() - written,
    })
}

fn prepare_one(label_ids: &Path) -> Result<PrepareOutcome> {
    let mut train_ids = read_gray(label_ids)?;
    to_train_ids(&mut train_ids, LabelEncoding::LabelIds, label_ids)?;

    let dest = train_ids_path(label_ids);
    // Equal pixels, not timestamps, decide: copies and archives do not keep modification times.
    if dest.is_file() && read_gray(&dest).is_ok_and(|existing| existing == train_ids) {
        return Ok(PrepareOutcome::UpToDate);
    }
    write_atomically(&dest, |tmp| {
        train_ids
            .save_with_format(tmp, ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
    .map_err(|source| DataError::Write {
        path: dest.clone(),
        cause: source,
    })?;
    Ok(PrepareOutcome::Written)
}
