//! The classes a dataset is labelled with and a model predicts: a name and a colour for each
//! class index, and the mask value that means "not labelled" (ignored by the loss and the
//! metrics). Cityscapes' 19 train classes are one such table; a folder dataset brings its own
//! in `classes.json`, and a checkpoint carries the table it was trained on.
//!
//! `classes.json` is a list of `{"name": …, "color": [r, g, b]}` in index order, or an object
//! `{"classes": [ … ], "ignore_index": 255}` when the ignore value is not 255.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{DataError, Result};
use crate::labels::{train_class_names, train_id_color, IGNORE_TRAIN_ID, NUM_TRAIN_CLASSES};
use crate::palette::{voc_colour, Palette};

/// One class: what it is called and the colour it is drawn in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    /// The class's name, as tables and reports print it.
    pub name: String,
    /// Its colour in colour maps and overlays, RGB.
    pub color: [u8; 3],
}

/// The classes of a dataset or a model, in index order, and the ignore value of its masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassTable {
    classes: Vec<ClassInfo>,
    ignore_index: u8,
}

/// The most classes a dataset's table holds ([`ClassTable::new`], `classes.json`): class indices
/// are bytes, and the loader marks ignored pixels with 255 whatever a dataset's own ignore value
/// is.
pub const MAX_CLASSES: usize = 255;

impl ClassTable {
    /// A table of `classes` in index order whose masks mark unlabelled pixels with
    /// `ignore_index`. 1 to [`MAX_CLASSES`] classes with distinct, non-empty names; the ignore
    /// value is not a class index.
    pub fn new(classes: Vec<ClassInfo>, ignore_index: u8) -> Result<Self> {
        check_classes(&classes, ignore_index).map_err(|why| DataError::InvalidConfig {
            what: "class table",
            why,
        })?;
        Ok(Self {
            classes,
            ignore_index,
        })
    }

    /// Cityscapes' 19 train classes with their official colours; 255 is ignored.
    pub fn cityscapes() -> Self {
        let classes = train_class_names()
            .iter()
            .enumerate()
            .map(|(id, name)| ClassInfo {
                name: (*name).to_string(),
                color: train_id_color(id as u8),
            })
            .collect();
        Self {
            classes,
            ignore_index: IGNORE_TRAIN_ID,
        }
    }

    /// The table of a model that says nothing of its classes: Cityscapes' for 19 classes, as
    /// every public Fast-SCNN checkpoint of 19 classes is; otherwise `class_0`, `class_1`, …
    /// in the distinct colours of [`Palette::for_classes`] (classes past the 255th, which no
    /// label map of bytes holds, are named but drawn black). At least one class.
    pub fn for_count(classes: usize) -> Self {
        if classes == NUM_TRAIN_CLASSES {
            return Self::cityscapes();
        }
        let classes = classes.max(1);
        Self {
            classes: (0..classes)
                .map(|c| ClassInfo {
                    name: format!("class_{c}"),
                    color: voc_colour(c + 1),
                })
                .collect(),
            ignore_index: IGNORE_TRAIN_ID,
        }
    }

    /// Reads a `classes.json` file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::Classes {
            path: path.to_path_buf(),
            why: format!("cannot read: {e}"),
        })?;
        Self::from_json(&text).map_err(|why| DataError::Classes {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Parses the text of a `classes.json` (either form); the error says what is wrong where.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        // Windows editors may start the file with a byte order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let (entries, ignore_index) = match value {
            Value::Array(entries) => (entries, IGNORE_TRAIN_ID),
            Value::Object(mut object) => {
                if let Some(key) = object
                    .keys()
                    .find(|k| !matches!(k.as_str(), "classes" | "ignore_index"))
                {
                    return Err(format!(
                        "unknown key `{key}` (the keys are `classes` and `ignore_index`)"
                    ));
                }
                let Some(Value::Array(entries)) = object.remove("classes") else {
                    return Err("`classes` must be a list of {\"name\", \"color\"}".into());
                };
                let ignore_index = match object.remove("ignore_index") {
                    None => IGNORE_TRAIN_ID,
                    Some(v) => byte(&v).ok_or("`ignore_index` must be an integer 0 to 255")?,
                };
                (entries, ignore_index)
            }
            _ => {
                return Err(
                    "expected a list of {\"name\", \"color\"}, or an object with \
                            `classes` and `ignore_index`"
                        .into(),
                )
            }
        };
        let classes = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| class_info(entry).map_err(|why| format!("class {index}: {why}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        check_classes(&classes, ignore_index)?;
        Ok(Self {
            classes,
            ignore_index,
        })
    }

    /// The table as `classes.json` text in the object form, which [`ClassTable::from_json`]
    /// reads back to an equal table.
    pub fn to_json(&self) -> String {
        let classes: Vec<Value> = self
            .classes
            .iter()
            .map(|c| json!({"name": c.name, "color": c.color}))
            .collect();
        let mut object = Map::new();
        object.insert("classes".into(), Value::Array(classes));
        object.insert("ignore_index".into(), json!(self.ignore_index));
        serde_json::to_string_pretty(&Value::Object(object)).expect("a JSON value serialises")
    }

    /// The number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Always false: a table has at least one class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The classes, in index order.
    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    /// The class names, in index order.
    pub fn names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// The mask value of unlabelled pixels in the dataset's own files.
    pub fn ignore_index(&self) -> u8 {
        self.ignore_index
    }

    /// The classes' colours; unknown values and 255 (ignored) are black.
    pub fn palette(&self) -> Palette {
        Palette::from_colours(self.classes.iter().map(|c| c.color))
    }
}

/// An entry of the list: `{"name": "road", "color": [128, 64, 128]}`.
fn class_info(entry: &Value) -> std::result::Result<ClassInfo, String> {
    let Value::Object(object) = entry else {
        return Err("expected {\"name\": …, \"color\": [r, g, b]}".into());
    };
    if let Some(key) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "color"))
    {
        return Err(format!(
            "unknown key `{key}` (the keys are `name` and `color`)"
        ));
    }
    let name = match object.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err("`name` must be a string".into()),
    };
    let color = match object.get("color") {
        Some(Value::Array(rgb)) if rgb.len() == 3 => {
            let mut color = [0u8; 3];
            for (slot, v) in color.iter_mut().zip(rgb) {
                *slot = byte(v).ok_or("`color` must be three integers 0 to 255")?;
            }
            color
        }
        _ => return Err("`color` must be [r, g, b], three integers 0 to 255".into()),
    };
    Ok(ClassInfo { name, color })
}

fn byte(value: &Value) -> Option<u8> {
    value.as_u64().and_then(|v| u8::try_from(v).ok())
}

/// 1 to [`MAX_CLASSES`] classes, names non-empty and distinct, the ignore value no class index.
fn check_classes(classes: &[ClassInfo], ignore_index: u8) -> std::result::Result<(), String> {
    if classes.is_empty() || classes.len() > MAX_CLASSES {
        return Err(format!(
            "{} classes; a table holds 1 to {MAX_CLASSES}",
            classes.len()
        ));
    }
    for (index, class) in classes.iter().enumerate() {
        if class.name.trim().is_empty() {
            return Err(format!("class {index}: the name is empty"));
        }
        if class.name.chars().any(char::is_control) {
            return Err(format!(
                "class {index}: the name {:?} holds a control character",
                class.name
            ));
        }
        if let Some(first) = classes[..index].iter().position(|c| c.name == class.name) {
            return Err(format!(
                "classes {first} and {index} are both named `{}`",
                class.name
            ));
        }
    }
    if usize::from(ignore_index) < classes.len() {
        return Err(format!(
            "ignore_index {ignore_index} is class {ignore_index} (`{}`); it must be {} or more",
            classes[usize::from(ignore_index)].name,
            classes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_read_and_the_object_form_round_trips() {
        let list =
            r#"[{"name": "sky", "color": [70, 130, 180]}, {"name": "ground", "color": [0, 0, 0]}]"#;
        let table = ClassTable::from_json(list).unwrap();
        assert_eq!(
            ClassTable::from_json(&format!("\u{feff}{list}")).unwrap(),
            table
        );
        assert_eq!(table.names(), ["sky", "ground"]);
        assert_eq!(table.ignore_index(), 255);
        assert_eq!(table.palette().colour(0), [70, 130, 180]);
        let object = r#"{"classes": [{"name": "a", "color": [1, 2, 3]}], "ignore_index": 7}"#;
        let table = ClassTable::from_json(object).unwrap();
        assert_eq!(table.ignore_index(), 7);
        assert_eq!(ClassTable::from_json(&table.to_json()).unwrap(), table);
        let cityscapes = ClassTable::cityscapes();
        assert_eq!(
            ClassTable::from_json(&cityscapes.to_json()).unwrap(),
            cityscapes
        );
    }

    #[test]
    fn malformed_tables_say_what_and_where() {
        let cases = [
            ("{", "not JSON"),
            (
                r#"[{"name": "a\nb", "color": [1, 2, 3]}]"#,
                "holds a control character",
            ),
            ("3", "expected a list"),
            ("[]", "0 classes"),
            (r#"[{"name": "a"}]"#, "class 0: `color` must be [r, g, b]"),
            (
                r#"[{"name": "a", "color": [1, 2, 300]}]"#,
                "class 0: `color` must be three integers",
            ),
            (
                r#"[{"name": "a", "colour": [1, 2, 3]}]"#,
                "class 0: unknown key `colour`",
            ),
            (
                r#"[{"name": "", "color": [1, 2, 3]}]"#,
                "class 0: the name is empty",
            ),
            (
                r#"[{"name": "a", "color": [1, 2, 3]}, {"name": "a", "color": [1, 2, 3]}]"#,
                "classes 0 and 1 are both named `a`",
            ),
            (
                r#"{"classes": [{"name": "a", "color": [1, 2, 3]}], "ignore_index": 0}"#,
                "ignore_index 0 is class 0 (`a`)",
            ),
            (r#"{"classes": [], "ignore": 3}"#, "unknown key `ignore`"),
            (r#"{"ignore_index": 3}"#, "`classes` must be a list"),
        ];
        for (text, expected) in cases {
            let err = ClassTable::from_json(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("classes.json");
        let err = ClassTable::read(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        std::fs::write(&path, "[1]").unwrap();
        let err = ClassTable::read(&path).unwrap_err().to_string();
        assert!(err.contains("classes.json: class 0:"), "{err}");
    }

    #[test]
    fn tables_for_a_bare_class_count() {
        assert_eq!(ClassTable::for_count(19), ClassTable::cityscapes());
        let seven = ClassTable::for_count(7);
        assert_eq!(seven.len(), 7);
        assert_eq!(seven.names()[6], "class_6");
        assert_eq!(seven.palette(), Palette::for_classes(7));
    }

    /// The Cityscapes table shipped in `assets/` for users to start theirs from is the one the
    /// code uses.
    #[test]
    fn the_shipped_cityscapes_table_is_the_codes() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/classes/cityscapes.json");
        assert_eq!(ClassTable::read(&path).unwrap(), ClassTable::cityscapes());
    }
}
