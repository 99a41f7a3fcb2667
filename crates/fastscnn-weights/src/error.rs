use std::path::PathBuf;

/// Why weights could not be found, fetched, checked or converted. Each message names the file,
/// URL or Hub repository concerned; an I/O failure's cause is its `source`.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Returned when a file or folder cannot be read, created, written in or resolved.
    #[error("{}: {what}: {cause}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// What could not be done to it, e.g. `"cannot read"`.
        what: &'static str,
        /// The file system's error.
        cause: std::io::Error,
    },
    /// Returned when a URL download fails: the request, the transfer, or a body over the size
    /// limit.
    #[error("{url}: download failed: {why}")]
    Download {
        /// The URL downloaded.
        url: String,
        /// Why the download failed.
        why: String,
    },
    /// Returned when the hf-hub client cannot be built from the environment.
    #[error("cannot set up the Hugging Face Hub client: {why}")]
    HubClient {
        /// The client's error, as text.
        why: String,
    },
    /// Returned when a file cannot be fetched from the Hub.
    /// `hub` names the file as `hf://OWNER/NAME@REVISION/FILE`.
    #[error("{hub}: cannot fetch from {url}: {why}")]
    Hub {
        /// The file, as `hf://OWNER/NAME@REVISION/FILE`.
        hub: String,
        /// The URL it was fetched from.
        url: String,
        /// The client's error, as text.
        why: String,
    },
    /// Returned when `HF_HUB_OFFLINE` forbids the network and the file is not in the cache.
    #[error(
        "{hub} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; run once with \
         network access, or use a local file",
        cache.display()
    )]
    Offline {
        /// The file, as `hf://OWNER/NAME@REVISION/FILE`.
        hub: String,
        /// The Hugging Face cache folder that was looked in.
        cache: PathBuf,
    },
    /// Returned when a file from the cache resolves outside its repository's folder, as a
    /// damaged or tampered ref can make it.
    #[error(
        "{hub} resolves to {}, outside the cache's folder {}; the cache's refs are damaged",
        resolved.display(),
        folder.display()
    )]
    OutsideCache {
        /// The file, as `hf://OWNER/NAME@REVISION/FILE`.
        hub: String,
        /// The path the cached file resolves to.
        resolved: PathBuf,
        /// The repository's folder in the cache, resolved.
        folder: PathBuf,
    },
    /// A Hub name that would not stay a plain relative path in the cache (`value` with control
    /// characters escaped, so the message stays one line).
    #[error("{flag} `{value}`: {why}")]
    BadName {
        /// The command-line flag the name was given with: `--hf-repo`, `--hf-file` or
        /// `--revision`.
        flag: &'static str,
        /// The name, with control characters escaped.
        value: String,
        /// What the name breaks.
        why: &'static str,
    },
    /// Returned when a download's sha256 does not start with the expected digits; nothing is
    /// installed.
    #[error("{origin}: sha256 is {actual}, expected {expected}; not installed")]
    Checksum {
        /// The URL or `hf://` name downloaded.
        origin: String,
        /// The download's sha256, in lower-case hex.
        actual: String,
        /// The sha256, or its first 8 or more hex digits, it was checked against.
        expected: String,
    },
    /// The download arrived whole but does not load; `source` says why.
    #[error("{origin}: downloaded, but not a checkpoint fastscnn reads: {cause}")]
    NotACheckpoint {
        /// The URL or `hf://` name downloaded.
        origin: String,
        /// Why the checkpoint does not load.
        cause: Box<fastscnn_model::ModelError>,
    },
    /// Returned when a given sha256 is not 8 to 64 hexadecimal digits; holds the value given,
    /// trimmed.
    #[error("--sha256 `{0}`: expected at least 8 hexadecimal digits")]
    BadChecksum(String),
    /// Returned when a file is already at the output and replacing it was not asked for, or one
    /// appeared there while the new one was being written.
    #[error("{}: already exists; pass --force to replace it", path.display())]
    Exists {
        /// The output that already exists.
        path: PathBuf,
    },
    /// Returned when installed weights are asked for and none are at the default path.
    #[error(
        "no weights given and none installed at {}: pass --weights FILE or --hf-repo OWNER/NAME, \
         or run `fastscnn download`",
        path.display()
    )]
    NotInstalled {
        /// The default weights path, where no file is.
        path: PathBuf,
    },
    /// Returned when installed weights are asked for and no home folder is known to hold them:
    /// neither `FASTSCNN_HOME`, `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("no home folder known: pass the weights' path, or set FASTSCNN_HOME")]
    NoHome,
    /// Returned when a checkpoint cannot be read, does not build a Fast-SCNN, or cannot be
    /// written as safetensors.
    #[error(transparent)]
    Model(#[from] fastscnn_model::ModelError),
}

/// The result of this crate's fallible functions.
pub type Result<T> = std::result::Result<T, WeightsError>;
