//! `fastscnn segment`: images in; colour maps, overlays, train-id and label-id maps, and
//! optionally probabilities or logits out.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use fastscnn_core::atomic_write::write_atomically;
use fastscnn_data::{label_id_image, train_id_image, ClassTable, Palette, NUM_TRAIN_CLASSES};
use fastscnn_model::{
    image_to_tensor, load_rgb_image_within, resize_image, ExecutionContext, Segmenter,
};
use image::{ImageFormat, RgbImage};

use crate::cli::{OutputFormat, SegmentArgs};
use crate::file_roles::FileRoles;
use crate::{device, inputs, interrupt, progress, video, weights};

const CONCRETE_FORMATS: [OutputFormat; 4] = [
    OutputFormat::Color,
    OutputFormat::Overlay,
    OutputFormat::Trainid,
    OutputFormat::Labelid,
];

pub fn run(args: &SegmentArgs, context: &ExecutionContext) -> Result<()> {
    let (videos, images): (Vec<PathBuf>, Vec<PathBuf>) = if args.inputs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        inputs::expand(&args.inputs)?
            .into_iter()
            .partition(|p| video::is_video(p))
    };
    for (flag, given) in [
        ("--probs", args.probs.is_some()),
        ("--save-logits", args.save_logits.is_some()),
    ] {
        if given && (images.len() != 1 || !videos.is_empty() || args.stream.is_some()) {
            bail!(
                "{flag} takes exactly one input image, got {} image(s) and {} video(s)",
                images.len(),
                videos.len() + usize::from(args.stream.is_some())
            );
        }
    }
    let has_video = !videos.is_empty() || args.stream.is_some();
    // ffmpeg is given paths as text: a name that is not UTF-8 is refused before any work.
    if let Some(path) = videos.iter().find(|p| p.to_str().is_none()) {
        bail!(
            "{}: not a UTF-8 path, which ffmpeg is given",
            path.display()
        );
    }
    for (flag, given) in [
        ("--every", args.every != 1),
        ("--max-frames", args.max_frames.is_some()),
        ("--stats", args.stats.is_some()),
    ] {
        if given && !has_video {
            bail!("{flag}: no video or --stream to take frames of");
        }
    }
    let stems = output_stems(&images)?;
    let video_stems = output_stems(&videos)?;
    if let Some(stem) = video_stems.iter().find(|s| stems.contains(s)) {
        bail!("an image and a video are both named `{stem}`, their outputs would be confused");
    }
    let formats = formats(&args.format);
    if args.overlay_alpha.is_some() && !formats.contains(&OutputFormat::Overlay) {
        bail!("--overlay-alpha: no overlay is written; add --format overlay");
    }
    let alpha = args.overlay_alpha.unwrap_or(0.5);
    let device = device::select(args.device)?;
    let (model, weights_path) = weights::load_model(&args.weights, &device, args.dtype, context)?;
    weights::check_isa_applies(args.execution.isa, &model)?;
    let classes = model.num_classes();
    // 255 is "ignore" in a train-id map.
    if classes > 255 {
        bail!(
            "{}: {classes} classes do not fit an 8-bit label map",
            weights_path.display()
        );
    }
    if model.classes() != &ClassTable::cityscapes() && formats.contains(&OutputFormat::Labelid) {
        bail!(
            "{}: --format labelid writes Cityscapes label ids, but the weights' {classes} classes \
             are not Cityscapes' {NUM_TRAIN_CLASSES}",
            weights_path.display()
        );
    }
    // The colours the weights carry, or Cityscapes' or distinct generated ones.
    let palette = model.classes().palette();

    let mut roles = FileRoles::default();
    roles.input(&weights_path, "the weights");
    for path in &images {
        roles.input(path, format!("input {}", path.display()));
    }
    for stem in &stems {
        for format in &formats {
            let dest = output_path(&args.out_dir, stem, *format);
            roles.output(&dest, format!("the {} output", suffix(*format)))?;
        }
    }
    for path in &videos {
        roles.input(path, format!("input {}", path.display()));
    }
    let stream_stem = args.stream.as_ref().map(|_| "stream".to_string());
    for stem in video_stems.iter().chain(&stream_stem) {
        for dest in video::output_paths(&args.out_dir, stem, &formats) {
            roles.output(&dest, format!("the output {}", dest.display()))?;
        }
    }
    if let Some(dest) = &args.stats {
        roles.output(dest, "--stats")?;
    }
    // ffmpeg is found before any work is done, so that its absence is said at once.
    let ffmpeg = if has_video {
        Some(fastscnn_video::Ffmpeg::locate()?)
    } else {
        None
    };
    for (flag, dest) in [
        ("--probs", &args.probs),
        ("--save-logits", &args.save_logits),
    ] {
        if let Some(dest) = dest {
            roles.output(dest, flag)?;
        }
    }
    let keep_scores = args.probs.is_some() || args.save_logits.is_some();
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create output folder", args.out_dir.display()))?;

    if let Some(ffmpeg) = &ffmpeg {
        interrupt::install();
        let segmenter = Segmenter::new(model.clone())?.with_input_scale(args.input_scale)?;
        let job = video::VideoJob {
            ffmpeg,
            segmenter: &segmenter,
            args,
            formats: &formats,
            alpha,
        };
        let mut totals = video::Totals::default();
        for (path, stem) in videos.iter().zip(&video_stems) {
            let input = path.to_str().expect("checked to be UTF-8 above");
            video::segment(&job, input, stem, &mut totals)?;
        }
        if let Some(spec) = &args.stream {
            video::segment(&job, spec, "stream", &mut totals)?;
        }
        if let Some(dest) = &args.stats {
            totals.write_json(dest)?;
        }
    }
    if images.is_empty() {
        return Ok(());
    }

    let bar = progress::bar(images.len(), "images");
    bar.set_message("segment");
    let start = Instant::now();
    for (done, (path, stem)) in images.iter().zip(&stems).enumerate() {
        // Ctrl-C is caught when videos are segmented too: it ends the images there.
        if interrupt::requested() {
            bail!("interrupted (Ctrl-C) after {done} image(s)");
        }
        let image = load_rgb_image_within(
            path,
            decode_budget(args.max_pixels, args.input_scale, keep_scores),
        )
        .map_err(|e| with_scale_hint(e, args.max_pixels, args.input_scale, keep_scores))?;
        let (width, height) = image.dimensions();
        let scaled;
        let network_input = if args.input_scale < 1.0 {
            scaled = resize_image(&image, args.input_scale);
            &scaled
        } else {
            &image
        };
        let (logits, labels) =
            segment_one(&model, &device, network_input, (height, width), keep_scores)
                .with_context(|| path.display().to_string())?;

        let mut written = Vec::new();
        for format in &formats {
            let dest = output_path(&args.out_dir, stem, *format);
            write_label_image(&dest, *format, &image, &labels, alpha, &palette)?;
            written.push(dest);
        }
        if let (Some(dest), Some(logits)) = (&args.probs, &logits) {
            // In f32 whatever the network's dtype: the file holds f32.
            let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, 1)?;
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

/// The label map of one image at its full size, and the scores too when they are kept.
fn segment_one(
    model: &fastscnn_model::FastScnn,
    device: &candle_core::Device,
    network_input: &RgbImage,
    (height, width): (u32, u32),
    keep_scores: bool,
) -> Result<(Option<Tensor>, Vec<u8>)> {
    let input = image_to_tensor(network_input, &model.config().normalization, device)?
        .to_dtype(model.dtype())?;
    let (h, w) = (height as usize, width as usize);
    // Logits are only kept at full resolution when they are to be written.
    let logits = if keep_scores {
        Some(model.logits_at(&input, h, w)?)
    } else {
        None
    };
    let labels = match &logits {
        Some(logits) => logits.argmax(1)?,
        None => model.predict_at(&input, h, w)?,
    };
    let labels: Vec<u8> = labels.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
    Ok((logits, labels))
}

/// The most pixels an image may have for the network to run on `max_pixels` of them at
/// `input_scale`, up to [`MAX_DECODE_FACTOR`] times `max_pixels`: the decoded image and its
/// full-size label images are memory too. The scores written at full size bound it at
/// `max_pixels` itself.
fn decode_budget(max_pixels: u64, input_scale: f32, keep_scores: bool) -> u64 {
    if keep_scores {
        return max_pixels;
    }
    let scaled = max_pixels as f64 / (f64::from(input_scale) * f64::from(input_scale));
    (scaled as u64).min(max_pixels.saturating_mul(MAX_DECODE_FACTOR))
}

/// How far a reduced `--input-scale` raises the decoding budget: the paper's quarter scale.
const MAX_DECODE_FACTOR: u64 = 16;

/// An image over the budget is told the larger of the paper's scales (½, ¼) that fits it.
fn with_scale_hint(
    error: fastscnn_model::ModelError,
    max_pixels: u64,
    input_scale: f32,
    keep_scores: bool,
) -> anyhow::Error {
    let fastscnn_model::ModelError::Image(fastscnn_data::DataError::TooManyPixels {
        width,
        height,
        ..
    }) = &error
    else {
        return error.into();
    };
    let pixels = u64::from(*width) * u64::from(*height);
    let fits = [0.5f32, 0.25]
        .into_iter()
        .filter(|&s| s < input_scale)
        .find(|&s| pixels <= decode_budget(max_pixels, s, false));
    let hint = match (keep_scores, fits) {
        (true, _) => "--probs and --save-logits write full-size scores; raise --max-pixels if \
                      the machine has the memory"
            .to_string(),
        (false, Some(scale)) => format!(
            "segment it with --input-scale {scale}, or raise --max-pixels if the machine has the \
             memory"
        ),
        (false, None) => "raise --max-pixels if the machine has the memory".to_string(),
    };
    anyhow::anyhow!("{error} (--max-pixels {max_pixels}); {hint}")
}

fn output_path(out_dir: &Path, stem: &str, format: OutputFormat) -> PathBuf {
    out_dir.join(format!("{stem}_{}.png", suffix(format)))
}

/// The formats asked for, `all` expanded, each once, in a fixed order.
fn formats(asked: &[OutputFormat]) -> Vec<OutputFormat> {
    CONCRETE_FORMATS
        .into_iter()
        .filter(|f| asked.contains(f) || asked.contains(&OutputFormat::All))
        .collect()
}

/// The name endings of the label images, after `<stem>_`.
pub const OUTPUT_SUFFIXES: [&str; 4] = ["color", "overlay", "trainid", "labelid"];

/// An output format's name ending, after `<stem>_`.
pub(crate) fn suffix(format: OutputFormat) -> &'static str {
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
    palette: &Palette,
) -> Result<()> {
    let (w, h) = image.dimensions();
    let size_error =
        || anyhow::anyhow!("{}: label map size differs from the image", dest.display());
    write_atomically(dest, |tmp| {
        let saved = match format {
            OutputFormat::Color => palette
                .colorize(labels, w, h)
                .save_with_format(tmp, ImageFormat::Png),
            OutputFormat::Overlay => palette
                .overlay(image, labels, alpha)
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

/// Written as the label images are, so that the file gets the same permissions.
fn save_tensor(dest: &Path, key: &str, tensor: &Tensor) -> Result<()> {
    let tensor = tensor.to_dtype(DType::F32)?;
    let bytes = safetensors::serialize([(key, &tensor)], None)
        .with_context(|| format!("{}: cannot serialise", dest.display()))?;
    write_atomically(dest, |tmp| {
        std::fs::write(tmp, &bytes).with_context(|| format!("{}: cannot write", dest.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_suffixes_are_the_formats_names() {
        let names: Vec<&str> = CONCRETE_FORMATS.iter().map(|f| suffix(*f)).collect();
        assert_eq!(names, OUTPUT_SUFFIXES);
    }

    #[test]
    fn the_budget_grows_with_the_inverse_square_of_the_scale() {
        assert_eq!(decode_budget(100, 1.0, false), 100);
        assert_eq!(decode_budget(100, 0.5, false), 400);
        assert_eq!(decode_budget(100, 0.5, true), 100);
        assert_eq!(decode_budget(100, 0.01, false), 1600);
    }

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
