//! Fast-SCNN on video and streams. ffmpeg decodes a file, a camera or a network stream into RGB
//! frames over a pipe and encodes frames into H.264 ([`Ffmpeg`], [`FrameReader`],
//! [`VideoWriter`]); [`run_pipeline`] overlaps decoding, inference and encoding on three threads
//! with bounded queues, for frames from any source: a video, a camera the program reads itself,
//! a channel.
//!
//! ```no_run
//! use fastscnn_model::{Segmenter, SegmenterOptions};
//! use fastscnn_video::{segment_frames, Ffmpeg};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let segmenter = Segmenter::from_file("fastscnn.safetensors", &SegmenterOptions::default())?;
//! let ffmpeg = Ffmpeg::locate()?;
//! let frames = ffmpeg.decode("dashcam.mp4")?;
//! let info = frames.info();
//! let (width, height) = (info.width, info.height);
//! let mut video = ffmpeg.encode("dashcam_color.mp4".as_ref(), width, height, info.frame_rate)?;
//! let (times, result) = segment_frames(&segmenter, frames, |_frame, labels| {
//!     video.write(&segmenter.colorize(&labels))
//! });
//! result?;
//! video.finish()?;
//! println!("{} frames at {:.1} fps", times.frames, times.fps());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod decoder;
mod encoder;
mod error;
mod ffmpeg;
mod pipeline;

use fastscnn_model::{LabelMap, Segmenter};
use image::RgbImage;

pub use decoder::FrameReader;
pub use encoder::VideoWriter;
pub use error::{Result, VideoError};
pub use ffmpeg::{Ffmpeg, FrameRate, VideoInfo, FFMPEG_ENV, FFPROBE_ENV};
pub use pipeline::{run_pipeline, StageTimes};

/// Frames waiting between two stages: enough to absorb one slow frame, few enough that memory
/// stays a handful of frames.
pub const QUEUE_DEPTH: usize = 2;

/// Segments every frame of `frames` with `segmenter` and hands each frame with its label map
/// to `sink`, on a thread of its own (an encoder, a writer, a robot's planner), while the next
/// frame is segmented and the one after it decoded. Returns the stage times and the first
/// error; the frames before an error have reached the sink.
pub fn segment_frames(
    segmenter: &Segmenter,
    frames: impl Iterator<Item = Result<RgbImage>> + Send,
    mut sink: impl FnMut(RgbImage, LabelMap) -> Result<()> + Send,
) -> (StageTimes, Result<()>) {
    run_pipeline(
        frames,
        |frame: RgbImage| {
            let labels = segmenter.segment(&frame).map_err(VideoError::Model)?;
            Ok((frame, labels))
        },
        |(frame, labels)| sink(frame, labels),
        QUEUE_DEPTH,
        |_| {},
    )
}

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
