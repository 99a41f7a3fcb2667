//! Writing files so that a crash, a kill or a full disk never leaves a half-written file under the
//! final name: write beside it under a temporary name, then rename, which is atomic on one file
//! system. Outputs, prepared labels and checkpoints all go through here.

use std::io;
use std::path::{Path, PathBuf};

/// Runs `write` on a temporary path in the destination's folder, then renames it into place. On
/// failure the temporary file is removed and the destination is untouched. A killed process
/// leaves the old file or the new one; after a power cut, the file system may hold either or an
/// empty file: what must survive that goes through [`write_durably`].
pub fn write_atomically<E: From<io::Error>>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    write_then_rename(dest, false, write)
}

/// [`write_atomically`], with the new file's data flushed to the disk before the rename and the
/// rename itself flushed after it (the folder, where the system allows): after a power cut the
/// destination is the old file or the whole new one. For checkpoints, which a run resumes from.
pub fn write_durably<E: From<io::Error>>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    write_then_rename(dest, true, write)
}

/// [`write_durably`] for a destination that must not exist: the new file is linked into place,
/// which fails with [`io::ErrorKind::AlreadyExists`] if a file appeared there meanwhile, so a file
/// someone else made is never replaced. Where the file system has no hard links, the check that
/// the destination is absent and the rename are two steps, and a file made between the two is
/// replaced.
pub fn write_durably_new<E: From<io::Error>>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_path(dest);
    let result = write(&tmp).and_then(|()| {
        let failed = |what: &str, e: io::Error| {
            let message = format!("{}: cannot {what}: {e}", dest.display());
            E::from(io::Error::new(e.kind(), message))
        };
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| failed("flush it to disk", e))?;
        match std::fs::hard_link(&tmp, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(failed("replace a file that exists", e))
            }
            Err(_)
                if dest
                    .symlink_metadata()
                    .is_err_and(|e| e.kind() == io::ErrorKind::NotFound) =>
            {
                std::fs::rename(&tmp, dest).map_err(|e| failed("move into place", e))?
            }
            Err(e) => {
                return Err(failed(
                    "replace a file that exists",
                    io::Error::new(io::ErrorKind::AlreadyExists, e),
                ))
            }
        }
        sync_folder(dest);
        Ok(())
    });
    let _ = std::fs::remove_file(&tmp);
    result
}

fn write_then_rename<E: From<io::Error>>(
    dest: &Path,
    durable: bool,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_path(dest);
    let failed = |what: &str, e: io::Error| {
        let message = format!("{}: cannot {what}: {e}", dest.display());
        E::from(io::Error::new(e.kind(), message))
    };
    let result = write(&tmp).and_then(|()| {
        if durable {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| failed("flush it to disk", e))?;
        }
        std::fs::rename(&tmp, dest).map_err(|e| failed("move into place", e))?;
        if durable {
            sync_folder(dest);
        }
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Flushes the entry of `file` in its folder. Only Unix opens a folder to flush it; the rename
/// has happened either way, so a failure here loses nothing but the guarantee.
fn sync_folder(file: &Path) {
    #[cfg(unix)]
    if let Some(folder) = file.parent() {
        let folder = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let _ = std::fs::File::open(folder).and_then(|f| f.sync_all());
    }
    #[cfg(not(unix))]
    let _ = file;
}

/// A hidden name beside `dest`, unique per process and thread so that parallel writers of
/// different files in one folder never collide.
fn temporary_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    dest.with_file_name(format!(".{name}.{}-{thread}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fastscnn-atomic-{}-{}",
            std::process::id(),
            temporary_path(Path::new("x")).display()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn failed_write_leaves_destination_and_no_temporary() {
        let dir = scratch();
        let dest = dir.join("out.png");
        std::fs::write(&dest, b"old").unwrap();
        let err = write_atomically(&dest, |tmp| {
            std::fs::write(tmp, b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_file_never_replaces_one_that_exists() {
        let dir = scratch();
        let dest = dir.join("weights.safetensors");
        write_durably_new(&dest, |tmp| std::fs::write(tmp, b"first")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        let err = write_durably_new(&dest, |tmp| std::fs::write(tmp, b"second")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn successful_write_replaces_destination() {
        let dir = scratch();
        let dest = dir.join("out.png");
        write_atomically(&dest, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
