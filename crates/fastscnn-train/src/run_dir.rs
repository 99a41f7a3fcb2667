//! A run folder, owned by one training process at a time: an advisory lock on `.lock`, which the
//! operating system releases when the process ends however it ends, so a killed run never
//! leaves the folder stuck. The owner clears what a killed writer left (temporary files) and the
//! log lines of steps after the checkpoint it resumes from, which the resumed run writes again.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use fastscnn_core::atomic_write::write_atomically;

use crate::checkpoint::{BEST, LAST, LAST_STATE};
use crate::error::{Result, TrainError};

const LOCK: &str = ".lock";
/// The logs, one line per event, each line naming its step.
pub const LOGS: [&str; 2] = ["train.log", "metrics.jsonl"];

/// The lock on a run folder, held for as long as this value lives.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates the folder if need be and takes its lock; an error if another process holds it.
    pub fn claim(path: &Path) -> Result<Self> {
        let write_error = |source| TrainError::Write {
            path: path.to_path_buf(),
            cause: source,
        };
        std::fs::create_dir_all(path).map_err(write_error)?;
        let lock_path = path.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| TrainError::Write {
                path: lock_path.clone(),
                cause: source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    why: "another `fastscnn train` is running in this folder".into(),
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(TrainError::Write {
                    path: lock_path,
                    cause: source,
                })
            }
        }
        let dir = Self {
            path: path.to_path_buf(),
            _lock: lock,
        };
        dir.refuse_links()?;
        dir.remove_temporaries()?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files a run writes are its own: a link in their place would have the logs appended
    /// to, or a checkpoint renamed over, a file elsewhere (perhaps one the run reads).
    fn refuse_links(&self) -> Result<()> {
        for name in LOGS.iter().chain(&[LAST, LAST_STATE, BEST]) {
            let path = self.path.join(name);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(TrainError::Checkpoint {
                    path,
                    why: "is a link; the files of a run folder must be its own".into(),
                });
            }
        }
        Ok(())
    }

    /// Removes the hidden `.<name>.<pid>-<thread>.tmp` files an interrupted atomic write leaves;
    /// with the lock held, no live writer owns one.
    fn remove_temporaries(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.path).map_err(|source| TrainError::Write {
            path: self.path.clone(),
            cause: source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_file() {
                std::fs::remove_file(entry.path()).map_err(|source| TrainError::Write {
                    path: entry.path(),
                    cause: source,
                })?;
            }
        }
        Ok(())
    }

    /// Drops the log lines of steps after `step` (and any line a kill cut short), so that a run
    /// resumed from the checkpoint at `step` logs each step once.
    pub fn trim_logs(&self, step: u64) -> Result<()> {
        for log in LOGS {
            let path = self.path.join(log);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let kept: String = text
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n') && line_step(line).is_some_and(|s| s <= step))
                .collect();
            if kept.len() != text.len() {
                write_atomically(&path, |tmp| std::fs::write(tmp, &kept))
                    .map_err(|cause| TrainError::Write { path, cause })?;
            }
        }
        Ok(())
    }
}

/// The step a log line is about: `step N/...` or `step N validation...` in train.log, the `step`
/// field in metrics.jsonl.
fn line_step(line: &str) -> Option<u64> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return value.get("step")?.as_u64();
    }
    let word = line.strip_prefix("step ")?.split_whitespace().next()?;
    word.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_at_a_time_and_the_lock_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunDir::claim(&run).unwrap();
        let err = RunDir::claim(&run).unwrap_err().to_string();
        assert!(err.contains("another `fastscnn train`"), "{err}");
        drop(first);
        RunDir::claim(&run).unwrap();
    }

    #[test]
    fn temporaries_are_cleared_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".last.safetensors.123-1.tmp",
            "last.safetensors",
            "notes.tmp",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        RunDir::claim(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".lock", "last.safetensors", "notes.tmp"]);
    }

    #[cfg(unix)]
    #[test]
    fn links_in_place_of_the_run_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("label.png"), b"x").unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::symlink(dir.path().join("label.png"), run.join("train.log")).unwrap();
        let err = RunDir::claim(&run).unwrap_err().to_string();
        assert!(err.contains("train.log: is a link"), "{err}");
    }

    #[test]
    fn logs_keep_the_steps_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::claim(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("train.log"),
            "step 1/6 loss 1\nstep 2/6 loss 1\nstep 2 validation: mIoU 0.1\nstep 3/6 loss 1\nstep 4/",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"kind\":\"train\",\"step\":2}\n{\"kind\":\"train\",\"step\":3}\n",
        )
        .unwrap();
        run.trim_logs(2).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("train.log")).unwrap(),
            "step 1/6 loss 1\nstep 2/6 loss 1\nstep 2 validation: mIoU 0.1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap(),
            "{\"kind\":\"train\",\"step\":2}\n"
        );
    }
}
