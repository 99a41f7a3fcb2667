//! What `segment` is given: files, folders and glob patterns, turned into a list of images.

use std::path::{Path, PathBuf};

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use crate::segment::OUTPUT_SUFFIXES;

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Each input in order: a file as itself, a folder as the images directly inside it (sorted), a
/// pattern as the files it matches (sorted). A folder without images or a pattern without
/// matches is an error, so a typo never passes as "nothing to do".
pub fn expand(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_dir() {
            let found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{input}: cannot list folder"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image(p))
                .collect();
            let found = without_earlier_outputs(found);
            if found.is_empty() {
                bail!("{input}: folder holds no .png, .jpg or .jpeg image");
            }
            images.extend(found);
        } else if path.exists() || !input.contains(['*', '?', '[']) {
            // A plain path; if it does not exist, reading it names it.
            images.push(path.to_path_buf());
        } else {
            let matches = glob::glob(input).with_context(|| format!("{input}: bad pattern"))?;
            let mut found: Vec<PathBuf> = matches
                .filter_map(|m| m.ok())
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                bail!("{input}: pattern matches no file");
            }
            found.sort();
            images.extend(found);
        }
    }
    Ok(images)
}

/// The images of one folder, sorted, without the label images an earlier `segment` into that
/// folder wrote: `<stem>_color.png` and the rest, where `<stem>` is another image of the folder.
/// Segmenting a folder into itself twice then reads the same images both times.
fn without_earlier_outputs(mut found: Vec<PathBuf>) -> Vec<PathBuf> {
    found.sort();
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned());
    let stems: HashSet<String> = found.iter().filter_map(|p| stem(p)).collect();
    found
        .into_iter()
        .filter(|p| {
            let Some(name) = stem(p) else { return true };
            let is_output = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
                && OUTPUT_SUFFIXES.iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .and_then(|rest| rest.strip_suffix('_'))
                        .is_some_and(|source| stems.contains(source))
                });
            !is_output
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_folders_and_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["b.png", "a.JPG", "notes.txt"] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        std::fs::create_dir(d.join("empty")).unwrap();
        let s = |p: &Path| p.to_string_lossy().into_owned();

        assert_eq!(expand(&[s(d)]).unwrap(), [d.join("a.JPG"), d.join("b.png")]);
        assert_eq!(expand(&[s(&d.join("*.png"))]).unwrap(), [d.join("b.png")]);
        assert_eq!(
            expand(&[s(&d.join("notes.txt"))]).unwrap(),
            [d.join("notes.txt")]
        );
        assert!(expand(&[s(&d.join("empty"))])
            .unwrap_err()
            .to_string()
            .contains("no .png"));
        for name in [
            "b_color.png",
            "b_trainid.png",
            "orphan_color.png",
            "a_overlay.jpg",
        ] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        assert_eq!(
            expand(&[s(d)]).unwrap(),
            [
                d.join("a.JPG"),
                d.join("a_overlay.jpg"),
                d.join("b.png"),
                d.join("orphan_color.png")
            ],
            "outputs of b skipped, files that only look like outputs kept"
        );
        assert!(expand(&[s(&d.join("*.bmp"))])
            .unwrap_err()
            .to_string()
            .contains("matches no file"));
    }
}
