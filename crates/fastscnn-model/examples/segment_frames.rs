//! Segments a stream of frames with one model, the way a robot's camera loop would: the model is
//! loaded once, its CPU buffers are kept from one frame to the next, and the threads and kernels
//! are chosen once. Here the frames are image files; a camera hands over its RGB buffer the same
//! way ([`Segmenter::segment_rgb`]).
//!
//! ```sh
//! cargo run --release -p fastscnn-model --example segment_frames -- WEIGHTS FRAME...
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

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
    let Some((weights, frames)) = args.split_first().filter(|(_, f)| !f.is_empty()) else {
        return Err("usage: segment_frames WEIGHTS FRAME...".into());
    };
    // Two threads, the processor's best kernels: a robot keeps the other cores for itself.
    let options = SegmenterOptions::default().threads(2);
    let segmenter = Segmenter::from_file(weights, &options)?;
    let road = segmenter
        .class_names()
        .iter()
        .position(|&name| name == "road")
        .ok_or("these weights have no `road` class")?;
    for frame in frames {
        let image = load_rgb_image(frame)?;
        let (width, height) = image.dimensions();
        let camera_buffer: Vec<u8> = image.into_raw();
        let start = Instant::now();
        let labels = segmenter.segment_rgb(&camera_buffer, width, height)?;
        let elapsed = start.elapsed();
        // The share of pixels labelled road, as a stand-in for what a robot does with the map.
        let road_pixels = labels
            .as_slice()
            .iter()
            .filter(|&&l| usize::from(l) == road)
            .count();
        println!(
            "{frame}: {:.1} ms, {:.1}% road",
            elapsed.as_secs_f64() * 1e3,
            100.0 * road_pixels as f64 / labels.as_slice().len() as f64
        );
    }
    Ok(())
}
