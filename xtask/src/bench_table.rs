//! The whole-model table of `cargo xtask bench`, read from criterion's saved estimates.

use std::path::Path;

use anyhow::{Context, Result};

/// The paper's Table 7 sizes, as the model bench names its groups.
const SIZES: [&str; 3] = ["1024x2048", "512x1024", "256x512"];
const OUTPUTS: [&str; 2] = ["logits", "label_map"];

/// Criterion's median estimate of one benchmark in milliseconds, if it has been run.
fn median_ms(criterion: &Path, group: &str, function: &str) -> Result<Option<f64>> {
    let path = criterion
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let estimates: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let nanoseconds = estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{}: no median estimate", path.display()))?;
    Ok(Some(nanoseconds / 1e6))
}

/// A Markdown table of ms and fps per size and output, from the latest criterion run.
pub fn render(criterion: &Path) -> Result<String> {
    let mut rows = Vec::new();
    for size in SIZES {
        let mut cells = vec![size.to_string()];
        let mut any = false;
        for output in OUTPUTS {
            match median_ms(criterion, &format!("fastscnn_{size}"), output)? {
                Some(ms) => {
                    any = true;
                    cells.push(format!("{ms:.1}"));
                    cells.push(format!("{:.1}", 1e3 / ms));
                }
                None => cells.extend(["-".to_string(), "-".to_string()]),
            }
        }
        if any {
            rows.push(format!("| {} |", cells.join(" | ")));
        }
    }
    if rows.is_empty() {
        return Ok(format!(
            "no whole-model results under {} (run `cargo xtask bench fastscnn_`)",
            criterion.display()
        ));
    }
    let mut table = vec![
        "Fast-SCNN, batch 1, float32, criterion medians:".to_string(),
        "| input | logits ms | logits fps | label map ms | label map fps |".to_string(),
        "| --- | --- | --- | --- | --- |".to_string(),
    ];
    table.extend(rows);
    Ok(table.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_estimate(root: &Path, group: &str, function: &str, ns: f64) {
        let dir = root.join(group).join(function).join("new");
        std::fs::create_dir_all(&dir).unwrap();
        let json =
            format!(r#"{{"median": {{"point_estimate": {ns}}}, "mean": {{"point_estimate": 1}}}}"#);
        std::fs::write(dir.join("estimates.json"), json).unwrap();
    }

    #[test]
    fn table_from_saved_estimates() {
        let root = std::env::temp_dir().join(format!("xtask-table-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert!(render(&root).unwrap().starts_with("no whole-model results"));
        write_estimate(&root, "fastscnn_256x512", "logits", 50e6);
        write_estimate(&root, "fastscnn_256x512", "label_map", 62.5e6);
        let table = render(&root).unwrap();
        assert!(
            table.contains("| 256x512 | 50.0 | 20.0 | 62.5 | 16.0 |"),
            "{table}"
        );
        assert!(!table.contains("1024x2048"), "{table}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
