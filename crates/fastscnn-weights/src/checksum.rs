//! sha256 digests, and the digest a published checkpoint is known by.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Result, WeightsError};

/// The sha256 of the file at `path`, in lower-case hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        what: "cannot read",
        cause: source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
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

/// The sha256 a download from `url` must have, in full or as a prefix of at least 8 hex digits:
/// `given`, else the one an OpenMMLab file name ends in (`…_20210630_164853-0cec9937.pth`, the
/// first 8 digits), else none.
pub fn expected_sha256(given: Option<&str>, url: Option<&str>) -> Result<Option<String>> {
    if let Some(given) = given {
        let given = given.trim();
        if given.len() < 8 || given.len() > 64 || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WeightsError::BadChecksum(given.to_string()));
        }
        return Ok(Some(given.to_ascii_lowercase()));
    }
    let named = || {
        let stem = url?.rsplit('/').next()?.strip_suffix(".pth")?;
        let suffix = stem.rsplit_once('-')?.1;
        (suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| suffix.to_ascii_lowercase())
    };
    Ok(named())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PUBLISHED_URL;

    #[test]
    fn openmmlab_file_names_carry_their_hash_prefix() {
        let published = Some(PUBLISHED_URL);
        assert_eq!(
            expected_sha256(None, published).unwrap().as_deref(),
            Some("0cec9937")
        );
        assert_eq!(
            expected_sha256(Some("ABCDEF12"), published)
                .unwrap()
                .as_deref(),
            Some("abcdef12")
        );
        assert_eq!(
            expected_sha256(None, Some("http://host/weights.pth")).unwrap(),
            None
        );
        assert_eq!(expected_sha256(None, None).unwrap(), None);
        for bad in ["abc", "zzzzzzzz", &"a".repeat(65)] {
            assert!(
                matches!(
                    expected_sha256(Some(bad), None),
                    Err(WeightsError::BadChecksum(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_of(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let missing = sha256_of(&dir.path().join("missing")).unwrap_err();
        assert!(
            missing.to_string().contains("missing: cannot read: "),
            "{missing}"
        );
    }
}
