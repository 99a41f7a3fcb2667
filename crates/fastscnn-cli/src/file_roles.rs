//! Which files a run reads and which it writes, checked before it starts: no output may be one
//! of its inputs (a `--probs` over the weights, a colour map over the image it came from) or
//! another of its outputs, whatever spelling, `..` or symbolic link names them.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Result};

/// The file `path` names, spelled one way: walked component by component as the system will
/// once the run has created its folders, every prefix that exists made canonical (links
/// resolved, so a `..` after a link leaves the link's target) and the rest applied as written.
fn identity(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut identity = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                identity.pop();
            }
            Component::CurDir => {}
            other => identity.push(other),
        }
        if let Ok(real) = identity.canonicalize() {
            identity = real;
        }
    }
    identity
}

/// The files of one run, each with the flag or role that names it, for the message.
#[derive(Debug, Default)]
pub struct FileRoles {
    inputs: HashMap<PathBuf, (PathBuf, String)>,
    outputs: HashMap<PathBuf, (PathBuf, String)>,
}

impl FileRoles {
    pub fn input(&mut self, path: &Path, role: impl Into<String>) {
        self.inputs
            .entry(identity(path))
            .or_insert_with(|| (path.to_path_buf(), role.into()));
    }

    /// Adds an output; an error when it is an input or another output of the run.
    pub fn output(&mut self, path: &Path, role: impl Into<String>) -> Result<()> {
        let role = role.into();
        if path.is_dir() {
            bail!("{}: {role} names a folder, not a file", path.display());
        }
        let id = identity(path);
        if let Some((_, input)) = self.inputs.get(&id) {
            bail!(
                "{}: {role} would overwrite {input}, which this run reads; write it elsewhere",
                path.display()
            );
        }
        if let Some((_, other)) = self.outputs.get(&id) {
            bail!(
                "{}: {role} and {other} would write the same file",
                path.display()
            );
        }
        self.outputs.insert(id, (path.to_path_buf(), role));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_collide_with_inputs_and_each_other_however_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("w.safetensors"), b"w").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let mut roles = FileRoles::default();
        roles.input(&d.join("w.safetensors"), "the weights");
        let err = roles
            .output(&d.join("sub/../w.safetensors"), "--probs")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--probs would overwrite the weights"), "{err}");
        roles.output(&d.join("p.safetensors"), "--probs").unwrap();
        let err = roles
            .output(&d.join("sub/../p.safetensors"), "--save-logits")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--save-logits and --probs"), "{err}");
        roles.output(&d.join("new/x.png"), "a colour map").unwrap();
        assert!(roles.output(&d.join("new/x.png"), "an overlay").is_err());
        assert!(roles
            .output(&d.join("new/deeper/../x.png"), "a label map")
            .is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_link_to_an_input_is_that_input() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.png"), b"a").unwrap();
        std::os::unix::fs::symlink(d.join("a.png"), d.join("link.png")).unwrap();
        let mut roles = FileRoles::default();
        roles.input(&d.join("a.png"), "input image");
        assert!(roles.output(&d.join("link.png"), "a colour map").is_err());
    }

    /// `new/../lnk/w` once `new` exists is `lnk/w`, and `lnk` a link to the weights' folder:
    /// the link is followed even after a folder the run has yet to create.
    #[cfg(unix)]
    #[test]
    fn a_link_after_a_folder_still_to_be_created_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("b")).unwrap();
        std::fs::write(d.join("b/w.safetensors"), b"w").unwrap();
        std::os::unix::fs::symlink(d.join("b"), d.join("lnk")).unwrap();
        let mut roles = FileRoles::default();
        roles.input(&d.join("b/w.safetensors"), "--weights");
        let probs = d.join("new/../lnk/w.safetensors");
        assert!(roles.output(&probs, "--probs").is_err());
    }
}
