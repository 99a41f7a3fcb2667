use std::path::PathBuf;

/// Why weights could not be found, fetched, checked or converted. Each message names the file,
/// URL or Hub repository concerned; an I/O failure's cause is its `source`.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{url}: download failed: {why}")]
    Download { url: String, why: String },
    #[error("cannot set up the Hugging Face Hub client: {why}")]
    HubClient { why: String },
    /// `hub` names the file as `hf://OWNER/NAME@REVISION/FILE`.
    #[error("{hub}: cannot fetch from {url}: {why}")]
    Hub {
        hub: String,
        url: String,
        why: String,
    },
    #[error(
        "{hub} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; run once with \
         network access, or use a local file",
        cache.display()
    )]
    Offline { hub: String, cache: PathBuf },
    #[error(
        "{hub} resolves to {}, outside the cache's folder {}; the cache's refs are damaged",
        resolved.display(),
        folder.display()
    )]
    OutsideCache {
        hub: String,
        resolved: PathBuf,
        folder: PathBuf,
    },
    /// A Hub name that would not stay a plain relative path in the cache (`value` with control
    /// characters escaped, so the message stays one line).
    #[error("{flag} `{value}`: {why}")]
    BadName {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{origin}: sha256 is {actual}, expected {expected}; not installed")]
    Checksum {
        origin: String,
        actual: String,
        expected: String,
    },
    /// The download arrived whole but does not load; `source` says why.
    #[error("{origin}: downloaded, but not a checkpoint fastscnn reads")]
    NotACheckpoint {
        origin: String,
        source: Box<fastscnn_model::ModelError>,
    },
    #[error("--sha256 `{0}`: expected at least 8 hexadecimal digits")]
    BadChecksum(String),
    #[error("{}: already exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error(
        "no weights given and none installed at {}: pass --weights FILE or --hf-repo OWNER/NAME, \
         or run `fastscnn download`",
        path.display()
    )]
    NotInstalled { path: PathBuf },
    #[error("no home folder known: pass the weights' path, or set FASTSCNN_HOME")]
    NoHome,
    #[error(transparent)]
    Model(#[from] fastscnn_model::ModelError),
}

pub type Result<T> = std::result::Result<T, WeightsError>;
