//! Installing published weights: fetched, checked against their sha256, converted to
//! safetensors and written where the commands find them.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastscnn_model::WeightFile;

use crate::convert::{checked, write};
use crate::{expected_sha256, sha256_of, Converted, HubFile, Replace, Result, WeightsError};

/// OpenMMLab's Cityscapes-trained Fast-SCNN (70.96% mIoU on val, 512x1024 crops, 160k
/// iterations). Its file name ends in the first 8 hex digits of its sha256, as all OpenMMLab
/// checkpoints do.
pub const PUBLISHED_URL: &str = "https://download.openmmlab.com/mmsegmentation/v0.5/fast_scnn/fast_scnn_lr0.12_8x4_160k_cityscapes/fast_scnn_lr0.12_8x4_160k_cityscapes_20210630_164853-0cec9937.pth";

/// The most a URL download may bring, in bytes: a Fast-SCNN checkpoint is 5–20 MB (with its
/// optimiser state); a server that sends more is not sending one, and would fill the disk.
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// How long a URL download waits to connect, and then for each read, before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file downloaded over HTTP(S).
    Url(String),
    /// A file of a Hub repository, through the Hugging Face cache.
    Hub(HubFile),
}

impl Origin {
    /// [`PUBLISHED_URL`].
    pub fn published() -> Self {
        Origin::Url(PUBLISHED_URL.to_string())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Url(url) => f.write_str(url),
            Origin::Hub(file) => file.fmt(f),
        }
    }
}

/// What [`install`] did.
#[derive(Debug)]
pub enum Installed {
    /// Fetched, checked and written.
    Fresh {
        /// The conversion written at the output.
        converted: Box<Converted>,
        /// The download's sha256.
        sha256: String,
        /// The sha256 (or prefix) it was checked against, when one was known.
        expected: Option<String>,
    },
    /// The output already held weights installed from the same origin: nothing was fetched.
    Already {
        /// The weights file that already held them.
        output: PathBuf,
        /// The URL or `hf://` name it was installed from.
        origin: String,
    },
}

impl fmt::Display for Installed {
    /// The conversion's line, then the checksum's; or that the weights were there already.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Installed::Fresh {
                converted,
                sha256,
                expected,
            } => {
                writeln!(f, "{converted}")?;
                match expected {
                    Some(expected) => write!(f, "sha256 {sha256} (matches {expected})"),
                    None => write!(f, "sha256 {sha256} (none published to check against)"),
                }
            }
            Installed::Already { output, origin } => write!(
                f,
                "{} already holds {origin}; nothing fetched (--force fetches it again)",
                output.display()
            ),
        }
    }
}

/// Fetches `origin`, checks its sha256 against `sha256` (in full or its first 8+ hex digits; for
/// an OpenMMLab URL, the digits its name ends in), and installs it at `output` as safetensors.
///
/// Nothing is written at `output` unless every check passed. With [`Replace::Never`] a file at
/// `output` is left alone: when it holds weights installed from the same origin that is success
/// ([`Installed::Already`], `sha256` unused: the file was checked when it was installed),
/// otherwise an error, also if the file appears during the download.
/// A URL's download goes to a temporary file beside `output`, removed whatever happens.
pub fn install(
    origin: &Origin,
    sha256: Option<&str>,
    output: &Path,
    replace: Replace,
) -> Result<Installed> {
    let url = match origin {
        Origin::Url(url) => Some(url.as_str()),
        Origin::Hub(_) => None,
    };
    let expected = expected_sha256(sha256, url)?;
    let source = origin.to_string();
    if replace == Replace::Never && output.symlink_metadata().is_ok() {
        let installed_from = WeightFile::open(output)
            .ok()
            .and_then(|w| w.metadata().get("source").cloned());
        if installed_from.as_deref() == Some(source.as_str()) {
            return Ok(Installed::Already {
                output: output.to_path_buf(),
                origin: source,
            });
        }
        return Err(WeightsError::Exists {
            path: output.to_path_buf(),
        });
    }
    let folder = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(|source| WeightsError::Io {
        path: folder.to_path_buf(),
        what: "cannot create folder",
        cause: source,
    })?;
    // Kept until the end: the temporary file of a URL download is removed when it drops.
    let mut download = None;
    let local = match origin {
        Origin::Url(url) => download
            .insert(fetch_url(url, folder)?)
            .path()
            .to_path_buf(),
        Origin::Hub(file) => file.fetch()?,
    };
    let actual = sha256_of(&local)?;
    if let Some(expected) = &expected {
        if !actual.starts_with(expected.as_str()) {
            return Err(WeightsError::Checksum {
                origin: source,
                actual,
                expected: expected.clone(),
            });
        }
    }
    let weights = checked(&local, Some(&source)).map_err(|model| WeightsError::NotACheckpoint {
        origin: source.clone(),
        cause: Box::new(model),
    })?;
    let converted = write(weights, source, output, replace)?;
    drop(download);
    Ok(Installed::Fresh {
        converted: Box::new(converted),
        sha256: actual,
        expected,
    })
}

/// Streams `url` into a new temporary file in `folder` (a fresh name, never an existing file), at
/// most [`MAX_DOWNLOAD_BYTES`].
fn fetch_url(url: &str, folder: &Path) -> Result<tempfile::NamedTempFile> {
    let failed = |why: String| WeightsError::Download {
        url: url.to_string(),
        why,
    };
    let io = |what, source| WeightsError::Io {
        path: folder.to_path_buf(),
        what,
        cause: source,
    };
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build();
    let response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let mut file = tempfile::Builder::new()
        .prefix(".fastscnn-download-")
        .tempfile_in(folder)
        .map_err(|e| io("cannot create a temporary file in", e))?;
    let mut body = response.into_reader().take(MAX_DOWNLOAD_BYTES + 1);
    let copied = std::io::copy(&mut body, &mut file).map_err(|e| failed(e.to_string()))?;
    if copied > MAX_DOWNLOAD_BYTES {
        return Err(failed(format!(
            "more than {} MiB, not a Fast-SCNN checkpoint",
            MAX_DOWNLOAD_BYTES >> 20
        )));
    }
    file.flush().map_err(|e| io("cannot write in", e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_output_is_kept_unless_replacing_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("mine.safetensors");
        std::fs::write(&output, b"the user's own weights").unwrap();
        // Refused before any network access: the URL does not resolve.
        let origin = Origin::Url("http://invalid.invalid/w.pth".into());
        let err = install(&origin, None, &output, Replace::Never).unwrap_err();
        assert!(matches!(err, WeightsError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("mine.safetensors"), "{err}");
        assert_eq!(std::fs::read(&output).unwrap(), b"the user's own weights");
        // A bad checksum is refused before any network access too.
        let err = install(&origin, Some("xyz"), &output, Replace::Existing).unwrap_err();
        assert!(matches!(err, WeightsError::BadChecksum(_)), "{err}");
        assert_eq!(std::fs::read(&output).unwrap(), b"the user's own weights");
    }
}
