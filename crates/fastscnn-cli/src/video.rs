//! `fastscnn segment` on videos and streams: ffmpeg decodes, the network segments, ffmpeg
//! encodes, the three overlapped (`fastscnn_video::run_pipeline`). Colour and overlay outputs
//! are H.264 videos at the source's frame rate; train-id and label-id outputs are folders of
//! numbered PNG frames.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fastscnn_core::atomic_write::write_durably_new;
use fastscnn_data::{label_id_image, train_id_image};
use fastscnn_model::{LabelMap, Segmenter};
use fastscnn_video::{
    run_pipeline, Ffmpeg, FrameRate, StageTimes, VideoError, VideoWriter, QUEUE_DEPTH,
};
use image::{ImageFormat, RgbImage};
use serde_json::json;

use crate::cli::{OutputFormat, SegmentArgs};
use crate::segment::suffix;
use crate::{interrupt, progress};

/// The extensions `segment` takes for videos (whatever ffmpeg reads in them).
pub const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "mkv", "webm", "mov", "avi"];

/// Whether `path` names a video by its extension.
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// One video's outputs: an encoder per video format, a folder per frame format.
enum Output {
    Video(OutputFormat, VideoWriter),
    Frames(OutputFormat, PathBuf),
}

/// The outputs of a video whose file stem is `stem`, checked not to exist: a video is never
/// written over.
pub fn output_paths(out_dir: &Path, stem: &str, formats: &[OutputFormat]) -> Vec<PathBuf> {
    formats
        .iter()
        .map(|&format| match format {
            OutputFormat::Color | OutputFormat::Overlay => {
                out_dir.join(format!("{stem}_{}.mp4", suffix(format)))
            }
            _ => out_dir.join(format!("{stem}_{}", suffix(format))),
        })
        .collect()
}

/// The times of every video segmented, summed.
#[derive(Debug, Default)]
pub struct Totals {
    times: StageTimes,
}

impl Totals {
    fn add(&mut self, times: &StageTimes) {
        self.times.frames += times.frames;
        self.times.wall += times.wall;
        self.times.decode += times.decode;
        self.times.infer += times.infer;
        self.times.encode += times.encode;
    }

    /// `--stats`: frames, wall fps and each stage's mean milliseconds a frame.
    pub fn write_json(&self, dest: &Path) -> Result<()> {
        let t = &self.times;
        let report = json!({
            "frames": t.frames,
            "fps": t.fps(),
            "decode_ms": t.mean_ms(t.decode),
            "infer_ms": t.mean_ms(t.infer),
            "encode_ms": t.mean_ms(t.encode),
        });
        let text = serde_json::to_string_pretty(&report)? + "\n";
        fastscnn_core::atomic_write::write_atomically(dest, |tmp| {
            std::fs::write(tmp, text).with_context(|| format!("{}: cannot write", dest.display()))
        })
    }
}

/// What a video run needs besides its input.
pub struct VideoJob<'a> {
    pub ffmpeg: &'a Ffmpeg,
    pub segmenter: &'a Segmenter,
    pub args: &'a SegmentArgs,
    pub formats: &'a [OutputFormat],
    pub alpha: f32,
}

/// Segments the video or stream `input` into outputs named after `stem`, and adds its times to
/// `totals`. A decoding error (a truncated file) ends the run with an error after the frames
/// before it are written, and the videos finished (complete and playable).
pub fn segment(job: &VideoJob, input: &str, stem: &str, totals: &mut Totals) -> Result<()> {
    let args = job.args;
    let paths = output_paths(&args.out_dir, stem, job.formats);
    for path in &paths {
        if path.exists() {
            bail!(
                "{}: already exists; remove it or choose another --out-dir",
                path.display()
            );
        }
    }
    let reader = job.ffmpeg.decode(input)?;
    let info = reader.info();
    let network_pixels = f64::from(info.width)
        * f64::from(info.height)
        * f64::from(args.input_scale)
        * f64::from(args.input_scale);
    if network_pixels > args.max_pixels as f64 {
        bail!(
            "{input}: {}x{} frames are over --max-pixels {} at --input-scale {}; segment them \
             at a smaller --input-scale, or raise --max-pixels if the machine has the memory",
            info.width,
            info.height,
            args.max_pixels,
            args.input_scale
        );
    }
    let segmenter = job
        .segmenter
        .clone()
        .with_max_pixels(u64::from(info.width) * u64::from(info.height));
    // Every Nth frame keeps its time: the videos play at the source's speed.
    let frame_rate = u32::try_from(args.every)
        .ok()
        .and_then(|every| info.frame_rate.denominator.checked_mul(every))
        .map(|denominator| FrameRate {
            denominator,
            ..info.frame_rate
        })
        .with_context(|| format!("--every {}: too large for the frame rate", args.every))?;
    let mut outputs = Vec::new();
    for (&format, path) in job.formats.iter().zip(&paths) {
        outputs.push(match format {
            OutputFormat::Color | OutputFormat::Overlay => {
                let writer = job
                    .ffmpeg
                    .encode(path, info.width, info.height, frame_rate)?;
                Output::Video(format, writer)
            }
            _ => {
                std::fs::create_dir(path)
                    .with_context(|| format!("{}: cannot create folder", path.display()))?;
                Output::Frames(format, path.clone())
            }
        });
    }

    let every = args.every as usize;
    // Ctrl-C stops taking frames; the ones taken go through and are written.
    let frames = reader
        .take_while(|_| !interrupt::requested())
        .enumerate()
        .filter(|(index, frame)| frame.is_err() || index % every == 0)
        .take(args.max_frames.unwrap_or(u64::MAX) as usize)
        .map(|(index, frame)| frame.map(|frame| (index as u64 + 1, frame)));
    let bar = progress::spinner("frames");
    bar.set_message(format!("segment {input}"));
    let (times, result) = run_pipeline(
        frames,
        |(number, frame): (u64, RgbImage)| {
            let labels = segmenter.segment(&frame).map_err(VideoError::Model)?;
            Ok((number, frame, labels))
        },
        |(number, frame, labels)| write_frame(&mut outputs, job, number, &frame, &labels),
        QUEUE_DEPTH,
        |t| {
            bar.set_position(t.processed);
            bar.set_message(format!("{input}: {:.1} frames/s", t.processed_fps()));
        },
    );
    bar.finish_and_clear();
    totals.add(&times);
    // Every output is finished, whatever happened: what was written plays. An output without
    // a frame is not kept.
    let mut written = Vec::new();
    let mut finished = Ok(());
    for output in outputs {
        match output {
            Output::Video(_, writer) if writer.frames() == 0 => drop(writer),
            Output::Video(_, writer) => match writer.finish() {
                Ok(path) => written.push(path),
                Err(e) => finished = finished.and(Err(e)),
            },
            Output::Frames(_, dir) if times.frames == 0 => {
                let _ = std::fs::remove_dir(&dir);
            }
            Output::Frames(_, dir) => written.push(dir),
        }
    }
    let written: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    println!(
        "{input} -> {}: {} frames in {:.1} s ({:.1} fps); per frame decode {:.1} ms, infer \
         {:.1} ms, encode {:.1} ms",
        if written.is_empty() {
            "nothing".to_string()
        } else {
            written.join(", ")
        },
        times.frames,
        times.wall.as_secs_f64(),
        times.fps(),
        times.mean_ms(times.decode),
        times.mean_ms(times.infer),
        times.mean_ms(times.encode),
    );
    if interrupt::requested() && result.is_ok() {
        finished?;
        bail!(
            "{input}: interrupted (Ctrl-C) after {} frame(s); they are in {}",
            times.frames,
            if written.is_empty() {
                "no output".to_string()
            } else {
                written.join(", ")
            }
        );
    }
    // The first cause: the pipeline's error, or else a video that could not be finished.
    match result.and(finished) {
        Ok(()) => Ok(()),
        Err(e) if written.is_empty() => Err(e.into()),
        Err(e) => bail!(
            "{e}; the {} frame(s) before it are in {}",
            times.frames,
            written.join(", ")
        ),
    }
}

/// One frame's outputs: a frame of each video, a PNG in each folder.
fn write_frame(
    outputs: &mut [Output],
    job: &VideoJob,
    number: u64,
    frame: &RgbImage,
    labels: &LabelMap,
) -> fastscnn_video::Result<()> {
    let segmenter = job.segmenter;
    for output in outputs {
        match output {
            Output::Video(OutputFormat::Overlay, writer) => {
                let blended = segmenter
                    .overlay(frame, labels, job.alpha)
                    .map_err(VideoError::Model)?;
                writer.write(&blended)?;
            }
            Output::Video(_, writer) => writer.write(&segmenter.colorize(labels))?,
            Output::Frames(format, dir) => {
                let (w, h) = (labels.width(), labels.height());
                let image = match format {
                    OutputFormat::Labelid => label_id_image(labels.as_slice(), w, h),
                    _ => train_id_image(labels.as_slice(), w, h),
                }
                .expect("a label map of the frame's size");
                let dest = dir.join(format!("{number:06}.png"));
                write_durably_new(&dest, |tmp| image.save_with_format(tmp, ImageFormat::Png))
                    .map_err(|e| VideoError::Io {
                        path: dest.clone(),
                        why: e.to_string(),
                    })?;
            }
        }
    }
    Ok(())
}
