//! The ffmpeg and ffprobe programs: found once, asked what a video is, and run as a decoder or an
//! encoder whose frames cross a pipe as raw RGB.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::decoder::FrameReader;
use crate::encoder::VideoWriter;
use crate::error::{Result, VideoError};

/// The environment variable naming the ffmpeg program, when it is not `ffmpeg` on `PATH`.
pub const FFMPEG_ENV: &str = "FASTSCNN_FFMPEG";

/// The environment variable naming the ffprobe program, when it is neither beside ffmpeg nor
/// `ffprobe` on `PATH`.
pub const FFPROBE_ENV: &str = "FASTSCNN_FFPROBE";

/// A video stream's frame rate as a fraction, as containers store it (30000/1001 for NTSC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate {
    /// Frames...
    pub numerator: u32,
    /// ...per this many seconds.
    pub denominator: u32,
}

impl FrameRate {
    /// Frames per second.
    pub fn fps(self) -> f64 {
        f64::from(self.numerator) / f64::from(self.denominator)
    }

    /// `30000/1001`, as ffmpeg reads it.
    pub fn to_ffmpeg(self) -> String {
        format!("{}/{}", self.numerator, self.denominator)
    }

    fn parse(text: &str) -> Option<Self> {
        let (n, d) = text.split_once('/')?;
        let (numerator, denominator) = (n.parse().ok()?, d.parse().ok()?);
        (numerator > 0 && denominator > 0).then_some(Self {
            numerator,
            denominator,
        })
    }
}

/// What a video's first video stream is, as its frames are decoded: upright (ffmpeg turns
/// frames by the stream's rotation, so a quarter turn swaps the stored width and height).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second: the stream's average rate, at which frames are delivered (a variable
    /// rate is resampled to it); 25 where the stream does not say (a camera's raw stream).
    pub frame_rate: FrameRate,
}

/// The ffmpeg and ffprobe programs.
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
}

impl Ffmpeg {
    /// ffmpeg from [`FFMPEG_ENV`] or `PATH`; ffprobe from [`FFPROBE_ENV`], beside that ffmpeg, or
    /// `PATH`. Each must run (`-version`); a missing one is an error saying how to install it.
    pub fn locate() -> Result<Self> {
        let ffmpeg = program("ffmpeg", FFMPEG_ENV, std::env::var_os(FFMPEG_ENV), None)?;
        let beside = ffmpeg.parent().map(|dir| dir.join(executable("ffprobe")));
        let ffprobe = program(
            "ffprobe",
            FFPROBE_ENV,
            std::env::var_os(FFPROBE_ENV),
            beside,
        )?;
        Ok(Self { ffmpeg, ffprobe })
    }

    /// The ffmpeg program.
    pub fn ffmpeg(&self) -> &Path {
        &self.ffmpeg
    }

    /// The ffprobe program.
    pub fn ffprobe(&self) -> &Path {
        &self.ffprobe
    }

    /// The first video stream of `input` (a file, a device such as `/dev/video0`, or a URL).
    pub fn probe(&self, input: &str) -> Result<VideoInfo> {
        let output = Command::new(&self.ffprobe)
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .arg("stream=width,height,avg_frame_rate,r_frame_rate:stream_side_data=rotation")
            .args(["-of", "json"])
            .arg(input_arg(input))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| VideoError::Program {
                program: self.ffprobe.clone(),
                why: format!("cannot run: {e}"),
            })?;
        let probe_error = |why: String| VideoError::Probe {
            input: input.to_string(),
            why,
        };
        if !output.status.success() {
            return Err(probe_error(first_line(&output.stderr)));
        }
        let json: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| probe_error(format!("unreadable ffprobe output: {e}")))?;
        let stream = json["streams"]
            .get(0)
            .ok_or_else(|| probe_error("no video stream".into()))?;
        let dimension = |key: &str| {
            stream[key]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v > 0)
        };
        let (Some(width), Some(height)) = (dimension("width"), dimension("height")) else {
            return Err(probe_error("the video stream has no frame size".into()));
        };
        let frame_rate = ["avg_frame_rate", "r_frame_rate"]
            .iter()
            .find_map(|key| stream[key].as_str().and_then(FrameRate::parse))
            .unwrap_or(FrameRate {
                numerator: 25,
                denominator: 1,
            });
        let rotation = stream["side_data_list"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|side| side["rotation"].as_i64())
            .unwrap_or(0);
        let (width, height) = if rotation.rem_euclid(180) == 90 {
            (height, width)
        } else {
            (width, height)
        };
        Ok(VideoInfo {
            width,
            height,
            frame_rate,
        })
    }

    /// Decodes the first video stream of `input` into upright RGB frames, which the reader hands
    /// out one by one.
    pub fn decode(&self, input: &str) -> Result<FrameReader> {
        let info = self.probe(input)?;
        FrameReader::start(&self.ffmpeg, input, info)
    }

    /// Starts writing `output` as H.264 video (MP4, or whatever container the extension names) of
    /// `width` x `height` RGB frames at `frame_rate`, without audio. Nothing is at `output`
    /// until [`VideoWriter::finish`]; an existing file is never replaced.
    pub fn encode(
        &self,
        output: &Path,
        width: u32,
        height: u32,
        frame_rate: FrameRate,
    ) -> Result<VideoWriter> {
        VideoWriter::start(&self.ffmpeg, output, width, height, frame_rate)
    }
}

/// The program `name`: `configured` (the value of `env`) when set, else `fallback` when it
/// exists, else the first `name` on `PATH`; checked to run.
fn program(
    name: &'static str,
    env: &'static str,
    configured: Option<OsString>,
    fallback: Option<PathBuf>,
) -> Result<PathBuf> {
    let missing = |looked: PathBuf| VideoError::Missing {
        program: name,
        looked,
        env,
    };
    let path = match configured.filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => fallback
            .filter(|p| p.is_file())
            .or_else(|| on_path(&executable(name)))
            .ok_or_else(|| missing(PathBuf::from(format!("{name} on PATH"))))?,
    };
    let runs = Command::new(&path)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if runs {
        Ok(path)
    } else {
        Err(missing(path))
    }
}

fn executable(name: &str) -> OsString {
    let mut file = OsString::from(name);
    if cfg!(windows) {
        file.push(".exe");
    }
    file
}

fn on_path(file: &OsString) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(file))
        .find(|candidate| candidate.is_file())
}

/// `input` as ffmpeg must be given it: an existing file as a `file:` URL, so that a name with a
/// colon is not taken for a protocol nor one starting with `-` for an option; anything else (a
/// device, a URL) as it is.
pub(crate) fn input_arg(input: &str) -> OsString {
    if Path::new(input).exists() {
        file_url(Path::new(input))
    } else {
        OsString::from(input)
    }
}

/// A local path as ffmpeg's `file:` URL.
pub(crate) fn file_url(path: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    url
}

/// Runs the program in a process group of its own, on Unix: Ctrl-C in a terminal reaches the
/// program that started it, which decides how to end (finishing its videos), and not ffmpeg,
/// which would end them on its own.
pub(crate) fn own_process_group(command: &mut Command) -> &mut Command {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command
}

/// A child's error output, read on a thread of its own so that neither of its pipes fills and
/// blocks it.
pub(crate) struct ErrorOutput(Option<std::thread::JoinHandle<Vec<u8>>>);

impl ErrorOutput {
    /// Starts reading `child`'s piped error output.
    pub(crate) fn drain(child: &mut std::process::Child) -> Self {
        let mut stderr = child.stderr.take().expect("stderr is piped");
        Self(Some(std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut text);
            text
        })))
    }

    /// What the child wrote, once it has exited; the first line of any message, `None` for
    /// silence (or when already taken).
    pub(crate) fn message(&mut self) -> Option<String> {
        let text = self.0.take().and_then(|t| t.join().ok())?;
        (!text.iter().all(u8::is_ascii_whitespace)).then(|| first_line(&text))
    }
}

/// The first non-empty line of a program's error output, or a placeholder.
pub(crate) fn first_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rates_as_containers_write_them() {
        let ntsc = FrameRate::parse("30000/1001").unwrap();
        assert!((ntsc.fps() - 29.97).abs() < 1e-2);
        assert_eq!(ntsc.to_ffmpeg(), "30000/1001");
        assert_eq!(FrameRate::parse("0/0"), None);
        assert_eq!(FrameRate::parse("25"), None);
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("ffmpeg");
        let err = program("ffmpeg", FFMPEG_ENV, Some(absent.clone().into()), None).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "ffmpeg not found (looked for {})",
                absent.display()
            )) && message.contains("apt install ffmpeg")
                && message.contains(FFMPEG_ENV),
            "{message}"
        );
        // A file that is not a program is not taken for one.
        std::fs::write(&absent, "not a program").unwrap();
        assert!(program("ffmpeg", FFMPEG_ENV, Some(absent.into()), None).is_err());
    }
}
