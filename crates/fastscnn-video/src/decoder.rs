//! Frames out of ffmpeg: the first video stream decoded to raw 8-bit RGB on a pipe, one frame
//! at a time, so memory holds a frame, not a video.

use std::io::{ErrorKind, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use image::RgbImage;

use crate::error::{Result, VideoError};
use crate::ffmpeg::{input_arg, own_process_group, ErrorOutput, VideoInfo};

/// The frames of a video, in order, as upright RGB images; an iterator whose last item is an
/// error when decoding stopped early (a truncated or corrupt file), after every frame decoded.
/// Dropping it stops ffmpeg.
pub struct FrameReader {
    input: String,
    info: VideoInfo,
    child: Child,
    stdout: ChildStdout,
    stderr: ErrorOutput,
    frames: u64,
    done: bool,
}

impl FrameReader {
    pub(crate) fn start(ffmpeg: &Path, input: &str, info: VideoInfo) -> Result<Self> {
        // At `-v error` ffmpeg says nothing of a sound file: anything it says is a damaged one,
        // reported once the frames it could decode are delivered (stopping at the first error,
        // `-xerror`, would lose the frames still in the decoder).
        // `-r`: frames at the probed average rate, the rate the outputs are encoded at; a
        // variable-rate source is resampled to it rather than to its highest rate.
        let mut child = own_process_group(&mut Command::new(ffmpeg))
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(input_arg(input))
            .args([
                "-map", "0:v:0", "-an", "-sn", "-f", "rawvideo", "-pix_fmt", "rgb24",
            ])
            .arg("-r")
            .arg(info.frame_rate.to_ffmpeg())
            .arg("pipe:1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| VideoError::Program {
                program: ffmpeg.to_path_buf(),
                why: format!("cannot run: {e}"),
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = ErrorOutput::drain(&mut child);
        Ok(Self {
            input: input.to_string(),
            info,
            child,
            stdout,
            stderr,
            frames: 0,
            done: false,
        })
    }

    /// The stream's size and frame rate.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    /// Frames delivered so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The end of the stream: ffmpeg's exit, an error if it failed.
    fn finish(&mut self) -> Result<()> {
        self.done = true;
        let status = self
            .child
            .wait()
            .map_err(|e| self.decode_error(e.to_string()))?;
        let message = self.stderr.message();
        if !status.success() || message.is_some() {
            let why = message.unwrap_or_else(|| format!("ffmpeg ended with {status}"));
            return Err(self.decode_error(why));
        }
        Ok(())
    }

    fn decode_error(&self, why: String) -> VideoError {
        VideoError::Decode {
            input: self.input.clone(),
            frames: self.frames,
            why,
        }
    }
}

impl Iterator for FrameReader {
    type Item = Result<RgbImage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (width, height) = (self.info.width, self.info.height);
        let mut pixels = vec![0u8; 3 * width as usize * height as usize];
        let mut filled = 0;
        while filled < pixels.len() {
            match self.stdout.read(&mut pixels[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.finish();
                    return Some(Err(self.decode_error(e.to_string())));
                }
            }
        }
        if filled == 0 {
            return self.finish().err().map(Err);
        }
        if filled < pixels.len() {
            let cut = self.finish().err();
            return Some(Err(cut.unwrap_or_else(|| {
                self.decode_error(format!("the last frame is cut short ({filled} bytes)"))
            })));
        }
        self.frames += 1;
        Some(Ok(
            RgbImage::from_raw(width, height, pixels).expect("a frame of width * height pixels")
        ))
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        if !self.done {
            // Stopped early (--max-frames, an error downstream): ffmpeg need not decode the rest.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
