use std::path::PathBuf;

/// Why a video could not be read or written. Every variant names the file, stream or program
/// concerned and carries its cause in its message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VideoError {
    /// ffmpeg (or ffprobe) is not installed where it was looked for.
    #[error(
        "{program} not found (looked for {}): install ffmpeg (Debian and Ubuntu: \
         `apt install ffmpeg`; macOS: `brew install ffmpeg`) or set {env} to the program",
        looked.display()
    )]
    Missing {
        /// `ffmpeg` or `ffprobe`.
        program: &'static str,
        /// The path or name looked for.
        looked: PathBuf,
        /// The environment variable that names the program.
        env: &'static str,
    },
    /// The program could not be started or talked to.
    #[error("{}: {why}", program.display())]
    Program {
        /// The program.
        program: PathBuf,
        /// What failed.
        why: String,
    },
    /// The input has no video stream ffprobe can describe, or is not a video at all.
    #[error("{input}: not a video ffmpeg reads: {why}")]
    Probe {
        /// The file, device or URL.
        input: String,
        /// What ffprobe said.
        why: String,
    },
    /// Decoding stopped before the end of the input (a truncated or corrupt file, a stream that
    /// went away): the frames before it were delivered.
    #[error("{input}: decoding stopped after {frames} frame(s): {why}")]
    Decode {
        /// The file, device or URL.
        input: String,
        /// Frames decoded and delivered before the failure.
        frames: u64,
        /// What ffmpeg said.
        why: String,
    },
    /// The encoder failed or refused the frames.
    #[error("{}: cannot encode: {why}", output.display())]
    Encode {
        /// The video being written.
        output: PathBuf,
        /// What ffmpeg said.
        why: String,
    },
    /// A frame of another size than the video's was handed to the encoder.
    #[error("{}: a {got_width}x{got_height} frame for a {width}x{height} video", output.display())]
    FrameSize {
        /// The video being written.
        output: PathBuf,
        /// The video's width.
        width: u32,
        /// The video's height.
        height: u32,
        /// The frame's width.
        got_width: u32,
        /// The frame's height.
        got_height: u32,
    },
    /// The output already exists (videos are never written over).
    #[error("{}: already exists", path.display())]
    Exists {
        /// The output.
        path: PathBuf,
    },
    /// The model refused a frame or failed on it.
    #[error("{0}")]
    Model(fastscnn_model::ModelError),
    /// A file could not be moved into place.
    #[error("{}: {why}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        why: String,
    },
}

/// What the fallible functions of this crate return.
pub type Result<T> = std::result::Result<T, VideoError>;
