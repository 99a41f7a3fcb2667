//! Frames into ffmpeg: raw RGB on a pipe, encoded as H.264 into a temporary file beside the
//! output, which takes the output's name only once the video is whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use image::RgbImage;

use crate::error::{Result, VideoError};
use crate::ffmpeg::{file_url, own_process_group, ErrorOutput, FrameRate};

/// A video being written. Frames go in with [`VideoWriter::write`]; [`VideoWriter::finish`]
/// ends the stream and moves the file into place. Dropped unfinished, it leaves nothing behind.
pub struct VideoWriter {
    output: PathBuf,
    temp: Option<tempfile::TempPath>,
    width: u32,
    height: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: ErrorOutput,
    frames: u64,
    /// Why the encoder stopped taking frames, once it has.
    failed: Option<String>,
}

impl VideoWriter {
    pub(crate) fn start(
        ffmpeg: &Path,
        output: &Path,
        width: u32,
        height: u32,
        frame_rate: FrameRate,
    ) -> Result<Self> {
        if output.exists() {
            return Err(VideoError::Exists {
                path: output.to_path_buf(),
            });
        }
        let io_error = |e: std::io::Error| VideoError::Io {
            path: output.to_path_buf(),
            why: e.to_string(),
        };
        let dir = match output.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // The temporary file keeps the output's extension: ffmpeg picks the container by it.
        let suffix = output
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(".fastscnn-video-")
            .suffix(&suffix)
            .tempfile_in(dir)
            .map_err(io_error)?
            .into_temp_path();
        // ffmpeg creates the file itself, with the permissions any new file gets (the
        // placeholder's are private); the name stays reserved to `temp`, removed if unfinished.
        std::fs::remove_file(&temp).map_err(io_error)?;
        let mut command = Command::new(ffmpeg);
        own_process_group(&mut command)
            .args([
                "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
            ])
            .arg("-s")
            .arg(format!("{width}x{height}"))
            .arg("-framerate")
            .arg(frame_rate.to_ffmpeg())
            .args(["-i", "pipe:0", "-an"])
            // 4:2:0 chroma needs even sides: an odd row or column is padded.
            .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
            .args([
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            ]);
        if suffix.eq_ignore_ascii_case(".mp4") || suffix.eq_ignore_ascii_case(".mov") {
            // The index at the front: the video plays while it downloads.
            command.args(["-movflags", "+faststart"]);
        }
        let mut child = command
            .arg(file_url(&temp))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| VideoError::Program {
                program: ffmpeg.to_path_buf(),
                why: format!("cannot run: {e}"),
            })?;
        let stdin = child.stdin.take();
        let stderr = ErrorOutput::drain(&mut child);
        Ok(Self {
            output: output.to_path_buf(),
            temp: Some(temp),
            width,
            height,
            child,
            stdin,
            stderr,
            frames: 0,
            failed: None,
        })
    }

    /// The file the video will have once finished.
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Appends one frame, of the video's size.
    pub fn write(&mut self, frame: &RgbImage) -> Result<()> {
        if frame.dimensions() != (self.width, self.height) {
            return Err(VideoError::FrameSize {
                output: self.output.clone(),
                width: self.width,
                height: self.height,
                got_width: frame.width(),
                got_height: frame.height(),
            });
        }
        if let Some(why) = &self.failed {
            return Err(self.encode_error(why.clone()));
        }
        let stdin = self.stdin.as_mut().expect("open until finished or failed");
        if let Err(e) = stdin.write_all(frame.as_raw()) {
            // The encoder went away: its own message says why.
            self.stdin = None;
            let _ = self.child.wait();
            let why = self.stderr.message().unwrap_or_else(|| e.to_string());
            self.failed = Some(why.clone());
            return Err(self.encode_error(why));
        }
        self.frames += 1;
        Ok(())
    }

    /// Ends the video and gives it its name (never over a file that appeared meanwhile); returns
    /// that name.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some(why) = self.failed.take() {
            return Err(self.encode_error(why));
        }
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .map_err(|e| self.encode_error(e.to_string()))?;
        if !status.success() {
            let why = self
                .stderr
                .message()
                .unwrap_or_else(|| format!("ffmpeg ended with {status}"));
            return Err(self.encode_error(why));
        }
        let temp = self.temp.take().expect("present until finished");
        let io_error = |path: &Path, e: std::io::Error| VideoError::Io {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&temp, e))?;
        match temp.persist_noclobber(&self.output) {
            Ok(()) => Ok(self.output.clone()),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(VideoError::Exists {
                    path: self.output.clone(),
                })
            }
            // A file system that can neither link nor rename without replacing (FAT, some
            // network mounts): a plain rename while nothing is at the output.
            Err(e) if !self.output.exists() => {
                let temp = e.path;
                std::fs::rename(&temp, &self.output).map_err(|e| io_error(&self.output, e))?;
                let _ = temp.keep();
                Ok(self.output.clone())
            }
            Err(e) => Err(io_error(&self.output, e.error)),
        }
    }

    fn encode_error(&self, why: String) -> VideoError {
        VideoError::Encode {
            output: self.output.clone(),
            why,
        }
    }
}

impl Drop for VideoWriter {
    fn drop(&mut self) {
        if self.temp.is_some() {
            // Unfinished: stop the encoder; the temporary file goes with `temp`.
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
