//! `fastscnn segment`: images in, colour and train-id maps (and optionally logits) out.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use fastscnn_data::{colorize_train_ids, train_id_image};
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions};
use image::ImageFormat;

use crate::cli::SegmentArgs;
use fastscnn_core::atomic_write::write_atomically;

pub fn run(args: &SegmentArgs) -> Result<()> {
    if args.save_logits.is_some() && args.images.len() != 1 {
        bail!(
            "--save-logits takes exactly one input image, got {}",
            args.images.len()
        );
    }
    let stems = output_stems(&args.images)?;
    let model = FastScnn::from_file(&args.weights, &LoadOptions::default())?;
    if model.num_classes() > 255 {
        bail!(
            "{}: {} classes do not fit an 8-bit train-id map",
            args.weights.display(),
            model.num_classes()
        );
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create output folder", args.out_dir.display()))?;

    for (path, stem) in args.images.iter().zip(&stems) {
        let start = Instant::now();
        let image = load_rgb_image(path)?;
        let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu)?;
        let logits = model.forward(&input)?;
        let labels: Vec<u8> = logits
            .argmax(1)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1()?;
        let (width, height) = image.dimensions();

        let color_path = args.out_dir.join(format!("{stem}_color.png"));
        let trainid_path = args.out_dir.join(format!("{stem}_trainid.png"));
        write_png(&color_path, |p| {
            colorize_train_ids(&labels, width, height).save_with_format(p, ImageFormat::Png)
        })?;
        let trainid = train_id_image(&labels, width, height)
            .context("label map size differs from the image")?;
        write_png(&trainid_path, |p| {
            trainid.save_with_format(p, ImageFormat::Png)
        })?;
        if let Some(logits_path) = &args.save_logits {
            save_logits(logits_path, &logits)?;
        }
        println!(
            "{} -> {}, {} ({:.0} ms)",
            path.display(),
            color_path.display(),
            trainid_path.display(),
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
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

fn write_png(dest: &Path, save: impl FnOnce(&Path) -> image::ImageResult<()>) -> Result<()> {
    write_atomically(dest, |tmp| {
        save(tmp).with_context(|| format!("{}: cannot write", dest.display()))
    })
}

fn save_logits(dest: &Path, logits: &Tensor) -> Result<()> {
    let tensors = HashMap::from([("logits".to_string(), logits.to_dtype(DType::F32)?)]);
    write_atomically(dest, |tmp| {
        candle_core::safetensors::save(&tensors, tmp)
            .with_context(|| format!("{}: cannot write", dest.display()))
    })
}
