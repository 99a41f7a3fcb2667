//! The whole-model table of `cargo xtask bench`, read from the estimates criterion saved in this
//! run, with the date and the machine.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

/// The paper's Table 7 sizes, as the model bench names its groups.
const SIZES: [&str; 3] = ["1024x2048", "512x1024", "256x512"];
const OUTPUTS: [&str; 2] = ["logits", "label_map"];

/// Criterion's median estimate of one benchmark in milliseconds, if it was measured at `since` or
/// later (an older estimate is another run's).
fn median_ms(
    criterion: &Path,
    group: &str,
    function: &str,
    since: SystemTime,
) -> Result<Option<f64>> {
    let path = criterion
        .join(group)
        .join(function)
        .join("new/estimates.json");
    // File systems stamp files from a clock that lags the one `since` was read from by up to a
    // tick; a second of slack covers it, and no two runs of criterion are that close.
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|written| written + Duration::from_secs(1) >= since);
    if !fresh {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: unreadable", path.display()))?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let nanoseconds = estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{}: no median estimate", path.display()))?;
    Ok(Some(nanoseconds / 1e6))
}

/// A Markdown table of ms and fps per size and output measured since `since` (this run), headed
/// by `setup` (the date and the machine).
pub fn render(criterion: &Path, since: SystemTime, setup: &str) -> Result<String> {
    let mut rows = Vec::new();
    for size in SIZES {
        let mut cells = vec![size.to_string()];
        let mut any = false;
        for output in OUTPUTS {
            match median_ms(criterion, &format!("fastscnn_{size}"), output, since)? {
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
        return Ok(
            "this run measured no whole-model case (`cargo xtask bench fastscnn_` runs them)"
                .to_string(),
        );
    }
    let mut table = vec![
        format!("Fast-SCNN, batch 1, float32, criterion medians of this run; {setup}:"),
        "| input | logits ms | logits fps | label map ms | label map fps |".to_string(),
        "| --- | --- | --- | --- | --- |".to_string(),
    ];
    table.extend(rows);
    Ok(table.join("\n"))
}

/// The date and the machine, for the table's heading: `2026-12-05, AMD EPYC, 2 logical CPUs,
/// avx2 kernels`.
pub fn setup(now: SystemTime) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{}, {}, {cpus} logical CPUs, {} kernels",
        utc_date(now),
        cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        fastscnn_cpu::Isa::detected().name()
    )
}

/// The processor's name, where the system says it (`/proc/cpuinfo` on Linux).
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

/// `time` as a UTC date, `YYYY-MM-DD` (the civil-from-days conversion of the proleptic
/// Gregorian calendar).
fn utc_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
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
    fn the_table_holds_only_this_runs_estimates() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        // An earlier run's estimate, then this run's.
        write_estimate(root, "fastscnn_1024x2048", "logits", 400e6);
        let started = SystemTime::now();
        let old = root.join("fastscnn_1024x2048/logits/new/estimates.json");
        std::fs::File::options()
            .write(true)
            .open(old)
            .unwrap()
            .set_modified(started - Duration::from_secs(60))
            .unwrap();
        assert!(render(root, started, "setup")
            .unwrap()
            .starts_with("this run measured no whole-model case"));
        write_estimate(root, "fastscnn_256x512", "logits", 50e6);
        write_estimate(root, "fastscnn_256x512", "label_map", 62.5e6);
        let table = render(root, started, "2026-12-05, a machine").unwrap();
        assert!(
            table.contains("| 256x512 | 50.0 | 20.0 | 62.5 | 16.0 |"),
            "{table}"
        );
        assert!(
            table.contains("this run; 2026-12-05, a machine:"),
            "{table}"
        );
        assert!(!table.contains("1024x2048"), "{table}");
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        let at =
            |secs: u64| utc_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_796_428_800), "2026-12-05");
        assert_eq!(at(1_796_515_199), "2026-12-05");
    }
}
