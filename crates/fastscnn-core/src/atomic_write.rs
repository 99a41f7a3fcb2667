//! Writing files so that a crash, a kill or a full disk never leaves a half-written file under the
//! final name: write beside it under a temporary name, then rename, which is atomic on one file
//! system. Outputs, prepared labels and checkpoints all go through here.

use std::io;
use std::path::{Path, PathBuf};

/// Runs `write` on a temporary path in the destination's folder, then renames it into place. On
/// failure the temporary file is removed and the destination is untouched.
pub fn write_atomically<E: From<io::Error>>(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_path(dest);
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, dest).map_err(|e| {
            let message = format!("{}: cannot move into place: {e}", dest.display());
            E::from(io::Error::new(e.kind(), message))
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    fn successful_write_replaces_destination() {
        let dir = scratch();
        let dest = dir.join("out.png");
        write_atomically(&dest, |tmp| std::fs::write(tmp, b"new")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
