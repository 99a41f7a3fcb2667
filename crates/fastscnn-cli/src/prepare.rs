//! `fastscnn prepare`: train-id label files for a Cityscapes copy.

use anyhow::{bail, Result};
use fastscnn_data::prepare::{label_id_files, label_splits, prepare_train_ids, PrepareReport};

use crate::cli::PrepareArgs;
use crate::progress;

pub fn run(args: &PrepareArgs) -> Result<()> {
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
