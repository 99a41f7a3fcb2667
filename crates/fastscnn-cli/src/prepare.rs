//! `fastscnn prepare`: train-id label files for a Cityscapes copy; for a folder dataset, whose
//! masks already hold class indices, a check of its classes and pairs and a report.

use anyhow::{bail, Result};
use fastscnn_data::folder::MASKS_FOLDER;
use fastscnn_data::prepare::{label_id_files, label_splits, prepare_train_ids, PrepareReport};
use fastscnn_data::{Dataset, DatasetFormat, DiscoverOptions};

use crate::cli::PrepareArgs;
use crate::progress;

pub fn run(args: &PrepareArgs) -> Result<()> {
    let format = match args.dataset_format {
        Some(format) => format,
        None => DatasetFormat::detect(&args.dataset_root)?,
    };
    if format == DatasetFormat::Folder {
        return check_folder(args);
    }
    let splits = if args.splits.is_empty() {
        label_splits(&args.dataset_root)?
    } else {
        args.splits.clone()
    };
    let mut files = Vec::new();
    for split in &splits {
        files.extend(label_id_files(&args.dataset_root, split)?);
    }
    if files.is_empty() {
        bail!(
            "{}: no `*_gtFine_labelIds.png` in gtFine/{{{}}}",
            args.dataset_root.display(),
            splits.join(",")
        );
    }

    let bar = progress::bar(files.len(), "files");
    bar.set_message("prepare");
    let report = prepare_train_ids(&files, |_, _| bar.inc(1));
    bar.finish_and_clear();
    let PrepareReport {
        written,
        up_to_date,
    } = report?;
    println!(
        "{} label files in {}: {written} written, {up_to_date} already up to date",
        files.len(),
        splits.join(", ")
    );
    Ok(())
}

/// A folder dataset needs nothing written: its classes file is read and every split's photos
/// and masks paired and size-checked (mask values are checked when training or evaluation
/// loads them).
fn check_folder(args: &PrepareArgs) -> Result<()> {
    let dataset = Dataset::open(&args.dataset_root, Some(DatasetFormat::Folder))?;
    let splits = if args.splits.is_empty() {
        dataset.splits()?
    } else {
        args.splits.clone()
    };
    if splits.is_empty() {
        bail!("{}: no split under images/", args.dataset_root.display());
    }
    let mut counts = Vec::new();
    for split in &splits {
        // A split without masks (a test split) is listed as such.
        let labelled = args.dataset_root.join(MASKS_FOLDER).join(split).is_dir();
        let options = DiscoverOptions {
            require_labels: labelled,
            ..DiscoverOptions::default()
        };
        let found = dataset.discover(split, options)?;
        let unlabelled = if labelled { "" } else { " (no masks)" };
        counts.push(format!("{split} {}{unlabelled}", found.samples.len()));
    }
    println!(
        "folder dataset of {} classes ({}): masks already hold class indices, nothing to \
         write; images: {}",
        dataset.classes().len(),
        dataset.classes().names().join(", "),
        counts.join(", ")
    );
    Ok(())
}
