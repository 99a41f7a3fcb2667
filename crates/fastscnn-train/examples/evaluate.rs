//! Scores weights on a split of a dataset (Cityscapes' layout, or a folder dataset with its
//! `classes.json`): per-class IoU and their mean, as cityscapesScripts computes them.
//!
//! ```sh
//! cargo run --release -p fastscnn-train --example evaluate -- WEIGHTS ROOT [SPLIT]
//! ```

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use fastscnn_data::{Dataset, DiscoverOptions, Loader, LoaderConfig};
use fastscnn_model::{Device, FastScnn, LoadOptions};
use fastscnn_train::evaluate;

/// Errors end the program with their one-line message, not their `Debug` form.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (weights, root, split) = match args.as_slice() {
        [weights, root] => (weights, root, "val"),
        [weights, root, split] => (weights, root, split.as_str()),
        _ => return Err("usage: evaluate WEIGHTS ROOT [SPLIT]".into()),
    };
    let model = FastScnn::from_file(weights, &LoadOptions::default())?;
    let dataset = Dataset::open(Path::new(root), None)?;
    let discovery = dataset.discover(split, DiscoverOptions::default())?;
    // One image a batch at full resolution, decoded by two threads ahead of the network.
    let config = LoaderConfig {
        workers: 2,
        normalization: model.config().normalization,
        ..LoaderConfig::evaluation(1, 1.0)
    };
    let loader = Loader::new(discovery.samples, config)?;
    let evaluation = evaluate(&model, &loader, dataset.classes(), &Device::Cpu, || {})?;
    // A class absent from both the labels and the predictions has no IoU (NaN): not scored.
    for (name, iou) in evaluation.named_class_iou() {
        if iou.is_nan() {
            println!("{name:>15}    n/a");
        } else {
            println!("{name:>15} {:6.2}", 100.0 * iou);
        }
    }
    println!(
        "{:>15} {:6.2} ({} images, {:.2} images/s in the network)",
        "mIoU",
        100.0 * evaluation.mean_iou(),
        evaluation.images,
        evaluation.fps()
    );
    Ok(())
}
