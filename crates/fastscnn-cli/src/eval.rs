//! `fastscnn eval`: the Cityscapes benchmark's numbers for a checkpoint on a labelled split.

use std::path::Path;

use anyhow::{bail, Context, Result};
use fastscnn_core::atomic_write::write_atomically;
use fastscnn_data::{Dataset, DiscoverOptions, Loader, LoaderConfig};
use fastscnn_model::ExecutionContext;
use fastscnn_train::{evaluate, Evaluation};
use serde_json::{json, Map, Value};

use crate::cli::EvalArgs;
use crate::file_roles::FileRoles;
use crate::{device, progress, weights};

pub fn run(args: &EvalArgs, context: &ExecutionContext) -> Result<()> {
    let device = device::select(args.device)?;
    let (model, weights_path) = weights::load_model(&args.weights, &device, args.dtype, context)?;
    weights::check_isa_applies(args.execution.isa, &model)?;
    let dataset = Dataset::open(&args.dataset_root, args.dataset_format)?;
    if model.num_classes() != dataset.classes().len() {
        bail!(
            "{}: the weights classify {} classes, but the dataset's labels have {}",
            weights_path.display(),
            model.num_classes(),
            dataset.classes().len()
        );
    }
    if model.classes().names() != dataset.classes().names() {
        eprintln!(
            "note: {} classifies {}, the dataset's labels are {}; the scores use the dataset's \
             names",
            weights_path.display(),
            model.classes().names().join(", "),
            dataset.classes().names().join(", ")
        );
    }
    let discovery = dataset.discover(&args.split, DiscoverOptions::default())?;
    if let Some(dest) = &args.json {
        let mut roles = FileRoles::default();
        roles.input(&weights_path, "the weights");
        for sample in &discovery.samples {
            roles.input(&sample.image, "an image of the split");
            if let Some(label) = &sample.label {
                roles.input(&label.path, "a label of the split");
            }
        }
        roles.output(dest, "--json")?;
    }
    let images = discovery.samples.len();
    let config = LoaderConfig {
        workers: args.workers,
        normalization: model.config().normalization,
        ..LoaderConfig::evaluation(1, args.input_scale)
    };
    let loader = Loader::new(discovery.samples, config)?;

    let bar = progress::bar(images, "images");
    bar.set_message(format!("eval {}", args.split));
    let evaluation = evaluate(&model, &loader, dataset.classes(), &device, || bar.inc(1))?;
    bar.finish_and_clear();

    print!("{}", table(&evaluation));
    if let Some(dest) = &args.json {
        let report = report(
            &evaluation,
            &args.split,
            args.input_scale,
            args.dtype.name(),
            &weights_path,
        );
        let text = serde_json::to_string_pretty(&report)? + "\n";
        write_atomically(dest, |tmp| {
            std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", dest.display()))
        })?;
    }
    Ok(())
}

/// An IoU as the benchmark prints it: a percentage, or `n/a` for a class in neither ground truth
/// nor prediction.
fn percent(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

/// The scores as a table: the classes, Cityscapes' categories when the classes are its, the
/// pixel accuracy and speed.
fn table(e: &Evaluation) -> String {
    let width = e
        .classes
        .names()
        .iter()
        .map(|n| n.chars().count() + 2)
        .max()
        .unwrap_or(0)
        .max(16);
    let mut out = String::new();
    let mut row = |name: &str, value: String| out.push_str(&format!("{name:<width$}{value:>8}\n"));
    row("class", "IoU".into());
    for (name, iou) in e.named_class_iou() {
        row(name, percent(iou));
    }
    row("mIoU", percent(e.mean_iou()));
    row("", String::new());
    if let (Some(categories), Some(mean)) = (e.named_category_iou(), e.category_mean_iou()) {
        row("category", "IoU".into());
        for (name, iou) in categories {
            row(name, percent(iou));
        }
        row("category mIoU", percent(mean));
        row("", String::new());
    }
    row("pixel accuracy", percent(e.pixel_accuracy()));
    row("images", e.images.to_string());
    row("fps", format!("{:.2}", e.fps()));
    out
}

/// NaN (a class in neither ground truth nor prediction) becomes `null`.
fn number(v: f64) -> Value {
    if v.is_nan() {
        Value::Null
    } else {
        json!(v)
    }
}

fn named(values: Vec<(&str, f64)>) -> Value {
    Value::Object(
        values
            .into_iter()
            .map(|(name, v)| (name.to_string(), number(v)))
            .collect::<Map<_, _>>(),
    )
}

/// The JSON of `--json`: the scores, and how they were made (`dtype`: `--dtype`'s value).
fn report(e: &Evaluation, split: &str, input_scale: f32, dtype: &str, weights: &Path) -> Value {
    let mut report = json!({
        "miou": number(e.mean_iou()),
        "pixel_accuracy": number(e.pixel_accuracy()),
        "classes": e.classes.names(),
        "per_class_iou": named(e.named_class_iou()),
        "images": e.images,
        "fps": e.fps(),
        "split": split,
        "input_scale": input_scale,
        "dtype": dtype,
        "weights": weights.display().to_string(),
    });
    // Cityscapes' categories, for its classes only.
    if let (Some(categories), Some(mean)) = (e.named_category_iou(), e.category_mean_iou()) {
        report["category_miou"] = number(mean);
        report["per_category_iou"] = named(categories);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastscnn_data::{ClassTable, NUM_TRAIN_CLASSES};
    use fastscnn_train::ConfusionMatrix;
    use std::time::Duration;

    fn road_only() -> Evaluation {
        let mut confusion = ConfusionMatrix::new(NUM_TRAIN_CLASSES, 255);
        confusion.update(&[0u8, 0, 1], &[0u8, 0, 0]).unwrap();
        Evaluation {
            confusion,
            classes: ClassTable::cityscapes(),
            images: 1,
            model_time: Duration::from_secs(1),
        }
    }

    #[test]
    fn absent_classes_are_null_in_json_and_na_in_the_table() {
        let report = report(&road_only(), "val", 1.0, "f32", Path::new("w.safetensors"));
        assert!((report["miou"].as_f64().unwrap() - (2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(report["per_class_iou"]["sidewalk"], json!(0.0));
        assert!(report["per_class_iou"]["train"].is_null());
        assert_eq!(report["per_category_iou"]["flat"], json!(1.0));
        assert!(report["per_category_iou"]["sky"].is_null());
        let table = table(&road_only());
        assert!(table.contains("road               66.67"), "{table}");
        assert!(table.contains("train                n/a"), "{table}");
    }
}
