//! Segments one image, writes its colour map and prints the share of each class.
//!
//! ```sh
//! cargo run --release -p fastscnn-model --example segment_image -- WEIGHTS IMAGE OUT.png
//! ```

use std::error::Error;
use std::process::ExitCode;

use fastscnn_model::{load_rgb_image, Segmenter, SegmenterOptions};

/// Errors end the program with their one-line message, not their `Debug` form.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, image, output] = args.as_slice() else {
        return Err("usage: segment_image WEIGHTS IMAGE OUT.png".into());
    };
    let segmenter = Segmenter::from_file(weights, &SegmenterOptions::default())?;
    let image = load_rgb_image(image)?;
    let labels = segmenter.segment(&image)?;
    segmenter.colorize(&labels).save(output)?;
    println!("{output}: {}x{}", labels.width(), labels.height());

    let mut pixels = vec![0usize; segmenter.class_names().len()];
    for &class in labels.as_slice() {
        pixels[usize::from(class)] += 1;
    }
    for (name, count) in segmenter.class_names().iter().zip(pixels) {
        if count > 0 {
            let share = 100.0 * count as f64 / labels.as_slice().len() as f64;
            println!("{name:>15} {share:5.1}%");
        }
    }
    Ok(())
}
