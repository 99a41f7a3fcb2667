//! One look for every progress bar of the tool. Bars draw on stderr only when it is a terminal,
//! so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items of `unit` (e.g. "files", "images") with rate and time left.
pub fn bar(len: usize, unit: &str) -> ProgressBar {
    let template =
        format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)");
    let style = ProgressStyle::with_template(&template)
        .expect("the template is valid")
        .progress_chars("=> ");
    ProgressBar::new(len as u64).with_style(style)
}

/// A count of `unit` for a run of unknown length (a video, a stream), after its message.
pub fn spinner(unit: &str) -> ProgressBar {
    let template = format!("{{spinner}} {{msg}} {{pos}} {unit} ({{elapsed}})");
    let style = ProgressStyle::with_template(&template).expect("the template is valid");
    ProgressBar::new_spinner().with_style(style)
}
