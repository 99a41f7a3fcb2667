//! Installing published weights: fetched, checked against their sha256, converted to
//! safetensors and written where the commands find them.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{convert, expected_sha256, sha256_of, Converted, HubFile, Result, WeightsError};

/// OpenMMLab's Cityscapes-trained Fast-SCNN (70.96% mIoU on val, 512x1024 crops, 160k
/// iterations). Its file name ends in the first 8 hex digits of its sha256, as all OpenMMLab
/// checkpoints do.
pub const PUBLISHED_URL: &str = "https://download.openmmlab.com/mmsegmentation/v0.5/fast_scnn/fast_scnn_lr0.12_8x4_160k_cityscapes/fast_scnn_lr0.12_8x4_160k_cityscapes_20210630_164853-0cec9937.pth";

/// The most a URL download may bring, in bytes: a Fast-SCNN checkpoint is 5–20 MB (with its
/// optimiser state); a server that sends more is not sending one, and would fill the disk.
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Url(String),
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

/// Whether [`install`] may replace a file already at its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse: the file may be the user's own weights.
    Never,
    /// Replace it (atomically: the old file stays whole until the new one is complete).
    Existing,
}

/// What [`install`] installed.
#[derive(Debug)]
pub struct Installed {
    pub converted: Converted,
    /// The download's sha256.
    pub sha256: String,
    /// The sha256 (or prefix) it was checked against, when one was known.
    pub expected: Option<String>,
}

impl fmt::Display for Installed {
    /// The conversion's line, then the checksum's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.converted)?;
        match &self.expected {
            Some(expected) => write!(f, "sha256 {} (matches {expected})", self.sha256),
            None => write!(
                f,
                "sha256 {} (none published to check against)",
                self.sha256
            ),
        }
    }
}

/// Fetches `origin`, checks its sha256 against `sha256` (in full or its first 8+ hex digits; for
/// an OpenMMLab URL, the digits its name ends in), and installs it at `output` as safetensors.
/// Nothing is written at `output` unless every check passed; a URL's download goes to a file
/// beside `output` that is removed whatever happens.
pub fn install(
    origin: &Origin,
    sha256: Option<&str>,
    output: &Path,
    replace: Replace,
) -> Result<Installed> {
    if replace == Replace::Never && output.symlink_metadata().is_ok() {
        return Err(WeightsError::Exists {
            path: output.to_path_buf(),
        });
    }
    let url = match origin {
        Origin::Url(url) => Some(url.as_str()),
        Origin::Hub(_) => None,
    };
    let expected = expected_sha256(sha256, url)?;
    let folder = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(|source| WeightsError::Io {
        path: folder.to_path_buf(),
        what: "cannot create folder",
        source,
    })?;
    let scratch = RemoveOnDrop(folder.join(format!(
        ".{}.download-{}",
        output
            .file_name()
            .map_or("weights".into(), |n| n.to_string_lossy()),
        std::process::id()
    )));
    let local = match origin {
        Origin::Url(url) => {
            fetch_url(url, &scratch.0)?;
            scratch.0.clone()
        }
        Origin::Hub(file) => file.fetch()?,
    };
    let source = origin.to_string();
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
    let converted = convert(&local, output, Some(&source)).map_err(|e| match e {
        WeightsError::Model(model) => WeightsError::NotACheckpoint {
            origin: source.clone(),
            source: Box::new(model),
        },
        other => other,
    })?;
    Ok(Installed {
        converted,
        sha256: actual,
        expected,
    })
}

/// Streams `url` into `dest`, at most [`MAX_DOWNLOAD_BYTES`].
fn fetch_url(url: &str, dest: &Path) -> Result<()> {
    let failed = |why: String| WeightsError::Download {
        url: url.to_string(),
        why,
    };
    let response = ureq::get(url).call().map_err(|e| failed(e.to_string()))?;
    let mut file = File::create(dest).map_err(|source| WeightsError::Io {
        path: dest.to_path_buf(),
        what: "cannot create",
        source,
    })?;
    let mut body = response.into_reader().take(MAX_DOWNLOAD_BYTES + 1);
    let copied = std::io::copy(&mut body, &mut file).map_err(|e| failed(e.to_string()))?;
    if copied > MAX_DOWNLOAD_BYTES {
        return Err(failed(format!(
            "more than {} MiB, not a Fast-SCNN checkpoint",
            MAX_DOWNLOAD_BYTES >> 20
        )));
    }
    file.flush().map_err(|source| WeightsError::Io {
        path: dest.to_path_buf(),
        what: "cannot write",
        source,
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
