//! Files from the Hugging Face Hub, through the hf-hub crate and its cache, so that a file fetched
//! once is shared with every other Hub tool on the machine.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::{Result, WeightsError};

/// The variable huggingface_hub reads to forbid network access; set to `1`, `true`, `yes` or
/// `on`, only the cache is read.
pub const OFFLINE_VAR: &str = "HF_HUB_OFFLINE";

fn offline() -> bool {
    std::env::var(OFFLINE_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A file of a model repository on the Hub, at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    repo: String,
    file: String,
    revision: String,
}

impl HubFile {
    /// Checks the names, which become paths in the cache (`snapshots/<commit>/<file>`,
    /// `refs/<revision>`) and parts of URLs: each must be a relative path of plain names, so that
    /// none reaches outside the cache, without the characters a URL gives a meaning (`?`, `#`,
    /// `%`) or control characters. Revisions such as `refs/pr/1` and files in subfolders keep
    /// their `/`. The repository's owner and name are the Hub's: letters, digits, `.`, `_` and
    /// `-`, no `--` (the cache's separator, which would map two repositories to one folder).
    pub fn new(repo: &str, file: &str, revision: &str) -> Result<Self> {
        check_relative("--hf-file", file)?;
        check_relative("--revision", revision)?;
        let bad_repo = |why| WeightsError::BadName {
            flag: "--hf-repo",
            value: repo.escape_debug().to_string(),
            why,
        };
        if repo.split('/').count() != 2 {
            return Err(bad_repo("expected OWNER/NAME"));
        }
        check_relative("--hf-repo", repo)?;
        let hub_name = |part: &str| {
            part.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !part.contains("--")
        };
        if !repo.split('/').all(hub_name) {
            return Err(bad_repo(
                "owner and name take letters, digits, `.`, `_` and `-` (no `--`)",
            ));
        }
        Ok(Self {
            repo: repo.to_string(),
            file: file.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repository, as `OWNER/NAME`.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The file's path inside the repository.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The branch, tag or commit the file is taken at.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The local path of the file: from the cache when it is there, otherwise downloaded into
    /// it, unless [`OFFLINE_VAR`] forbids the network. Honours `HF_HOME` and `HF_ENDPOINT`.
    ///
    /// The path returned is checked to lie inside the repository's cache folder. The hf-hub
    /// crate writes the cache's refs and blobs from the server's answers before that check, so
    /// `HF_ENDPOINT` must name a server trusted as much as the Hub itself.
    pub fn fetch(&self) -> Result<PathBuf> {
        let repo = Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone());
        let cache = Cache::from_env();
        let repo_folder = cache.path().join(repo.folder_name());
        let path = if offline() {
            self.cached(&cache, &repo, &repo_folder)
                .ok_or_else(|| WeightsError::Offline {
                    hub: self.to_string(),
                    cache: cache.path().clone(),
                })?
        } else {
            let hub_error = |url: String, why: String| WeightsError::Hub {
                hub: self.to_string(),
                url,
                why,
            };
            let api = ApiBuilder::from_env()
                .with_progress(std::io::stderr().is_terminal())
                .build()
                .map_err(|e| WeightsError::HubClient { why: e.to_string() })?;
            let api_repo = api.repo(repo);
            let url = api_repo.url(&self.file);
            api_repo
                .get(&self.file)
                .map_err(|e| hub_error(url, e.to_string()))?
        };
        self.inside(&path, &repo_folder)?;
        Ok(path)
    }

    /// The cached file of the revision: through its ref (a branch or tag names a commit there),
    /// or straight from the snapshot when the revision is a commit hash.
    fn cached(&self, cache: &Cache, repo: &Repo, repo_folder: &Path) -> Option<PathBuf> {
        let revision = &self.revision;
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        if is_commit {
            let snapshot = repo_folder
                .join("snapshots")
                .join(revision)
                .join(&self.file);
            if snapshot.is_file() {
                return Some(snapshot);
            }
        }
        cache.repo(repo.clone()).get(&self.file)
    }

    /// The cache's files resolve inside the repository's folder (snapshot links point into its
    /// blobs); a ref whose content is a path rather than a commit hash could lead anywhere.
    fn inside(&self, path: &Path, repo_folder: &Path) -> Result<()> {
        let resolve = |path: &Path| {
            path.canonicalize().map_err(|source| WeightsError::Io {
                path: path.to_path_buf(),
                what: "cannot resolve",
                cause: source,
            })
        };
        let (resolved, folder) = (resolve(path)?, resolve(repo_folder)?);
        if resolved.starts_with(&folder) {
            Ok(())
        } else {
            Err(WeightsError::OutsideCache {
                hub: self.to_string(),
                resolved,
                folder,
            })
        }
    }
}

impl std::fmt::Display for HubFile {
    /// `hf://OWNER/NAME@REVISION/FILE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf://{}@{}/{}", self.repo, self.revision, self.file)
    }
}

fn check_relative(flag: &'static str, value: &str) -> Result<()> {
    let plain = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && !part.contains(['\\', ':', '?', '#', '%'])
            && !part.chars().any(char::is_control)
    };
    if value.split('/').all(plain) {
        Ok(())
    } else {
        Err(WeightsError::BadName {
            flag,
            value: value.escape_debug().to_string(),
            why: "must be a relative path of plain names (no `..`, `.` or empty part, no `\\`, \
                  `:`, `?`, `#`, `%` or control character)",
        })
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
            assert!(HubFile::new("a/b", good, "main").is_ok(), "{good}");
            assert!(HubFile::new("a/b", "f", good).is_ok(), "{good}");
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
            "a?b",
            "a#b",
            "a%2e",
            "line\nbreak",
        ] {
            let err = HubFile::new("a/b", bad, "main").unwrap_err().to_string();
            assert!(err.starts_with("--hf-file"), "{bad}: {err}");
            let err = HubFile::new("a/b", "f", bad).unwrap_err().to_string();
            assert!(err.starts_with("--revision"), "{bad}: {err}");
        }
        for bad in ["ab", "a/b/c", "../b", "a/..", "a--b/c", "a/b c", "a/b!"] {
            let err = HubFile::new(bad, "f", "main").unwrap_err().to_string();
            assert!(err.starts_with("--hf-repo"), "{bad}: {err}");
        }
        assert_eq!(
            HubFile::new("a/b", "w/m.pth", "v1").unwrap().to_string(),
            "hf://a/b@v1/w/m.pth"
        );
    }
}
