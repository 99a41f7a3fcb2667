//! `cargo xtask download`: published weights, fetched, checked, converted and installed where
//! `fastscnn` finds them without `--weights`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::convert;

/// OpenMMLab's Cityscapes-trained Fast-SCNN (70.96% mIoU on val, 512x1024 crops, 160k
/// iterations). Its file name ends in the first 8 hex digits of its sha256, as all OpenMMLab
/// checkpoints do.
pub const PUBLISHED_URL: &str = "https://download.openmmlab.com/mmsegmentation/v0.5/fast_scnn/fast_scnn_lr0.12_8x4_160k_cityscapes/fast_scnn_lr0.12_8x4_160k_cityscapes_20210630_164853-0cec9937.pth";

/// Where the checkpoint comes from.
pub enum Origin {
    Url(String),
    Hub {
        repo: String,
        file: String,
        revision: String,
    },
}

/// The sha256 a download must have: given in full or as a prefix, or read from an OpenMMLab
/// file name (`…-0cec9937.pth`).
pub fn expected_sha256(given: Option<&str>, origin: &Origin) -> Option<String> {
    if let Some(given) = given {
        return Some(given.to_ascii_lowercase());
    }
    let Origin::Url(url) = origin else {
        return None;
    };
    let stem = url.rsplit('/').next()?.strip_suffix(".pth")?;
    let suffix = stem.rsplit_once('-')?.1;
    (suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| suffix.to_ascii_lowercase())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Streams `url` into `dest`.
fn fetch_url(url: &str, dest: &Path) -> Result<()> {
    let response = ureq::get(url)
        .call()
        .map_err(|e| anyhow!("{url}: download failed: {e}"))?;
    let mut reader = response.into_reader();
    let mut file =
        File::create(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    std::io::copy(&mut reader, &mut file).with_context(|| format!("{url}: download failed"))?;
    file.flush()?;
    Ok(())
}

fn fetch_hub(repo: &str, file: &str, revision: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    let repo_handle = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let url = repo_handle.url(file);
    repo_handle
        .get(file)
        .map_err(|e| anyhow!("{repo}: cannot fetch `{file}` from {url}: {e}"))
}

/// Fetches `origin`, checks its sha256 when one is known, and installs it at `output` as
/// safetensors. Returns the line to print.
pub fn download(origin: &Origin, sha256: Option<&str>, output: &Path) -> Result<String> {
    let folder = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)
        .with_context(|| format!("{}: cannot create folder", folder.display()))?;
    // A URL download lands beside the output and is removed whatever happens next.
    let scratch = tempfile_path(folder);
    let _cleanup = RemoveOnDrop(scratch.clone());
    let (local, source) = match origin {
        Origin::Url(url) => {
            eprintln!("downloading {url}");
            fetch_url(url, &scratch)?;
            (scratch.clone(), url.clone())
        }
        Origin::Hub {
            repo,
            file,
            revision,
        } => (
            fetch_hub(repo, file, revision)?,
            format!("hf://{repo}@{revision}/{file}"),
        ),
    };
    let actual = sha256_of(&local)?;
    let check = match expected_sha256(sha256, origin) {
        Some(expected) if actual.starts_with(&expected) && expected.len() >= 8 => {
            format!("sha256 {actual} (matches {expected})")
        }
        Some(expected) => bail!("{source}: sha256 is {actual}, expected {expected}; not installed"),
        None => format!("sha256 {actual} (none published to check against)"),
    };
    let weights = convert::convert(&local, output, Some(&source))?;
    Ok(format!(
        "{}\n{check}",
        convert::summary(&weights, &source, output)?
    ))
}

fn tempfile_path(folder: &Path) -> PathBuf {
    folder.join(format!(".download.{}.tmp", std::process::id()))
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
    fn openmmlab_file_names_carry_their_hash_prefix() {
        let published = Origin::Url(PUBLISHED_URL.into());
        assert_eq!(
            expected_sha256(None, &published).as_deref(),
            Some("0cec9937")
        );
        assert_eq!(
            expected_sha256(Some("ABCDEF12"), &published).as_deref(),
            Some("abcdef12")
        );
        let plain = Origin::Url("http://host/weights.pth".into());
        assert_eq!(expected_sha256(None, &plain), None);
        let hub = Origin::Hub {
            repo: "a/b".into(),
            file: "model.safetensors".into(),
            revision: "main".into(),
        };
        assert_eq!(expected_sha256(None, &hub), None);
    }

    #[test]
    fn hashes_files() {
        let dir = std::env::temp_dir().join(format!("xtask-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_of(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
