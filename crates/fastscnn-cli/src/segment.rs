//! `fastscnn segment`: images in; colour maps, overlays, train-id and label-id maps, and
//! optionally probabilities or logits out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use fastscnn_core::atomic_write::write_atomically;
use fastscnn_data::augment::resize_image;
use fastscnn_data::{colorize_train_ids, label_id_image, overlay_train_ids, train_id_image};
use fastscnn_model::{image_to_tensor, load_rgb_image};
use image::{ImageFormat, RgbImage};

use crate::cli::{OutputFormat, SegmentArgs};
use crate::{device, inputs, progress, weights};

const CONCRETE_FORMATS: [OutputFormat; 4] = [
    OutputFormat::Color,
    OutputFormat::Overlay,
    OutputFormat::Trainid,
    OutputFormat::Labelid,
];

pub fn run(args: &SegmentArgs) -> Result<()> {
    let images = inputs::expand(&args.inputs)?;
    for (flag, given) in [
        ("--probs", args.probs.is_some()),
        ("--save-logits", args.save_logits.is_some()),
    ] {
        if given && images.len() != 1 {
            bail!("{flag} takes exactly one input image, got {}", images.len());
        }
    }
    let stems = output_stems(&images)?;
    let formats = formats(&args.format);
    let device = device::select(args.device)?;
    let (model, weights_path) = weights::load_model(&args.weights, &device)?;
    if model.num_classes() > 255 {
        bail!(
            "{}: {} classes do not fit an 8-bit label map",
            weights_path.display(),
            model.num_classes()
        );
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create output folder", args.out_dir.display()))?;

    let bar = progress::bar(images.len(), "images");
    bar.set_message("segment");
    let start = Instant::now();
    for (path, stem) in images.iter().zip(&stems) {
        let image = load_rgb_image(path)?;
        let (width, height) = image.dimensions();
        let scaled;
        let network_input = if args.input_scale < 1.0 {
            scaled = resize_image(&image, args.input_scale);
            &scaled
        } else {
            &image
        };
        let input = image_to_tensor(network_input, &model.config().normalization, &device)?;
        let (h, w) = (height as usize, width as usize);
        // Logits are only kept at full resolution when they are to be written.
        let logits = if args.probs.is_some() || args.save_logits.is_some() {
            Some(model.logits_at(&input, h, w)?)
        } else {
            None
        };
        let labels = match &logits {
            Some(logits) => logits.argmax(1)?,
            None => model.predict_at(&input, h, w)?,
        };
        let labels: Vec<u8> = labels.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;

        let mut written = Vec::new();
        for format in &formats {
            let dest = args.out_dir.join(format!("{stem}_{}.png", suffix(*format)));
            write_label_image(&dest, *format, &image, &labels, args.overlay_alpha)?;
            written.push(dest);
        }
        if let (Some(dest), Some(logits)) = (&args.probs, &logits) {
            let probs = candle_nn::ops::softmax(logits, 1)?;
            save_tensor(dest, "probs", &probs)?;
            written.push(dest.clone());
        }
        if let (Some(dest), Some(logits)) = (&args.save_logits, &logits) {
            save_tensor(dest, "logits", logits)?;
            written.push(dest.clone());
        }
        let written: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        bar.suspend(|| println!("{} -> {}", path.display(), written.join(", ")));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{} image(s) in {seconds:.2} s ({:.2} images/s)",
        images.len(),
        images.len() as f64 / seconds
    );
    Ok(())
}

/// The formats asked for, `all` expanded, each once, in a fixed order.
fn formats(asked: &[OutputFormat]) -> Vec<OutputFormat> {
    CONCRETE_FORMATS
        .into_iter()
        .filter(|f| asked.contains(f) || asked.contains(&OutputFormat::All))
        .collect()
}

fn suffix(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Color => "color",
        OutputFormat::Overlay => "overlay",
        OutputFormat::Trainid => "trainid",
        OutputFormat::Labelid => "labelid",
        OutputFormat::All => unreachable!("expanded by `formats`"),
    }
}

fn write_label_image(
    dest: &Path,
    format: OutputFormat,
    image: &RgbImage,
    labels: &[u8],
    alpha: f32,
) -> Result<()> {
    let (w, h) = image.dimensions();
    let size_error =
        || anyhow::anyhow!("{}: label map size differs from the image", dest.display());
    write_atomically(dest, |tmp| {
        let saved = match format {
            OutputFormat::Color => {
                colorize_train_ids(labels, w, h).save_with_format(tmp, ImageFormat::Png)
            }
            OutputFormat::Overlay => overlay_train_ids(image, labels, alpha)
                .ok_or_else(size_error)?
                .save_with_format(tmp, ImageFormat::Png),
            OutputFormat::Trainid => train_id_image(labels, w, h)
                .ok_or_else(size_error)?
                .save_with_format(tmp, ImageFormat::Png),
            OutputFormat::Labelid => label_id_image(labels, w, h)
                .ok_or_else(size_error)?
                .save_with_format(tmp, ImageFormat::Png),
            OutputFormat::All => unreachable!("expanded by `formats`"),
        };
        saved.with_context(|| format!("{}: cannot write", dest.display()))
    })
}

/// The file stem of every input, refusing two inputs that would overwrite each other's outputs.
fn output_stems(images: &[PathBuf]) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    images
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .with_context(|| format!("{}: not a file name", path.display()))?
                .to_string_lossy()
                .into_owned();
            if !seen.insert(stem.clone()) {
                bail!(
                    "{}: another input has the same name `{stem}`, their outputs would overwrite each other",
                    path.display()
                );
            }
            Ok(stem)
        })
        .collect()
}

fn save_tensor(dest: &Path, key: &str, tensor: &Tensor) -> Result<()> {
    let tensors = HashMap::from([(key.to_string(), tensor.to_dtype(DType::F32)?)]);
    write_atomically(dest, |tmp| {
        candle_core::safetensors::save(&tensors, tmp)
            .with_context(|| format!("{}: cannot write", dest.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_to_every_format_once() {
        assert_eq!(
            formats(&[OutputFormat::All, OutputFormat::Color]),
            CONCRETE_FORMATS
        );
        assert_eq!(
            formats(&[
                OutputFormat::Labelid,
                OutputFormat::Color,
                OutputFormat::Labelid
            ]),
            [OutputFormat::Color, OutputFormat::Labelid]
        );
    }
}
