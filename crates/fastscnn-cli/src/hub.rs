//! Weights from the Hugging Face Hub, through the hf-hub crate and its cache, so files fetched
//! once are shared with every other Hub tool on the machine.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// The variable huggingface_hub uses to forbid network access.
const OFFLINE_VAR: &str = "HF_HUB_OFFLINE";

fn offline() -> bool {
    std::env::var(OFFLINE_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Hub names become paths in the cache (`snapshots/<commit>/<file>`, `refs/<revision>`): each
/// must be a relative path of plain names, so none reaches outside the cache. Revisions such as
/// `refs/pr/1` and files in subfolders keep their `/`.
fn check_relative(flag: &str, value: &str) -> Result<()> {
    let plain = |part: &str| {
        !part.is_empty() && part != "." && part != ".." && !part.contains(['\\', ':', '\0'])
    };
    if value.split('/').all(plain) {
        Ok(())
    } else {
        bail!("{flag} `{value}`: must be a relative path of plain names (no `..`, `.`, `\\`, `:` or empty part)")
    }
}

/// The local path of `file` at `revision` of the model repository `repo_id`: from the cache
/// when it is there, otherwise downloaded into it (unless offline).
pub fn fetch(repo_id: &str, file: &str, revision: &str) -> Result<PathBuf> {
    check_relative("--hf-file", file)?;
    check_relative("--revision", revision)?;
    if repo_id.split('/').count() != 2 {
        bail!("--hf-repo `{repo_id}`: expected OWNER/NAME");
    }
    check_relative("--hf-repo", repo_id)?;
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let cache = Cache::from_env();
    let repo_folder = cache.path().join(repo.folder_name());
    let path = if offline() {
        cached(&cache, &repo, &repo_folder, file, revision).ok_or_else(|| {
            anyhow!(
                "{repo_id}: `{file}` at `{revision}` is not in the Hugging Face cache ({}) and \
                 {OFFLINE_VAR} is set; run once with network access, or pass --weights FILE",
                cache.path().display()
            )
        })?
    } else {
        let api = ApiBuilder::from_env()
            .with_progress(std::io::stderr().is_terminal())
            .build()
            .context("cannot set up the Hugging Face Hub client")?;
        let api_repo = api.repo(repo);
        let url = api_repo.url(file);
        api_repo
            .get(file)
            .map_err(|e| anyhow!("{repo_id}: cannot fetch `{file}` from {url}: {e}"))?
    };
    inside(&path, &repo_folder).with_context(|| format!("{repo_id}: `{file}` at `{revision}`"))?;
    Ok(path)
}

/// The cached file of `revision`: through its ref (a branch or tag names a commit there), or
/// straight from the snapshot when the revision is a commit hash.
fn cached(
    cache: &Cache,
    repo: &Repo,
    repo_folder: &Path,
    file: &str,
    revision: &str,
) -> Option<PathBuf> {
    let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    if is_commit {
        let snapshot = repo_folder.join("snapshots").join(revision).join(file);
        if snapshot.is_file() {
            return Some(snapshot);
        }
    }
    cache.repo(repo.clone()).get(file)
}

/// The cache's files resolve inside the repository's folder (snapshot links point into its
/// blobs); a ref whose content is a path rather than a commit hash could lead anywhere.
fn inside(path: &Path, repo_folder: &Path) -> Result<()> {
    let resolved = path
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", path.display()))?;
    let folder = repo_folder
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", repo_folder.display()))?;
    if resolved.starts_with(&folder) {
        Ok(())
    } else {
        bail!(
            "resolves to {}, outside the cache's folder {}; the cache's refs are damaged",
            resolved.display(),
            folder.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_stay_inside_the_cache() {
        for good in [
            "model.safetensors",
            "sub/model.pth",
            "refs/pr/1",
            "main",
            "v1.0",
        ] {
            assert!(check_relative("--hf-file", good).is_ok(), "{good}");
        }
        for bad in [
            "../../x",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "",
            ".",
            "c:x",
            "a\\b",
        ] {
            let err = check_relative("--hf-file", bad).unwrap_err().to_string();
            assert!(err.starts_with("--hf-file"), "{bad}: {err}");
        }
    }
}
