//! Segments a stream of frames with one model, the way a robot's camera loop would: the model is
//! loaded once, its CPU buffers are kept from one frame to the next, and the threads and kernels
//! are chosen once, in an execution context. Here the frames are image files; a camera would
//! hand over its RGB buffers the same way.
//!
//! ```sh
//! cargo run --release -p fastscnn-model --example segment_frames -- WEIGHTS FRAME...
//! ```

use std::error::Error;
use std::time::Instant;

use candle_core::Device;
use fastscnn_model::{image_to_tensor, load_rgb_image, ExecutionContext, FastScnn, LoadOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((weights, frames)) = args.split_first().filter(|(_, f)| !f.is_empty()) else {
        return Err("usage: segment_frames WEIGHTS FRAME...".into());
    };
    // Two threads, the processor's best kernels: a robot keeps the other cores for itself.
    let context = ExecutionContext::detected(Some(2))?;
    let options = LoadOptions {
        context: Some(context),
        ..LoadOptions::default()
    };
    let model = FastScnn::from_file(weights, &options)?;
    for frame in frames {
        let image = load_rgb_image(frame)?;
        let start = Instant::now();
        let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu)?;
        let labels: Vec<u32> = model.predict(&input)?.flatten_all()?.to_vec1()?;
        let elapsed = start.elapsed();
        // The share of pixels labelled road (train id 0), as a stand-in for what a robot does
        // with the map.
        let road = labels.iter().filter(|&&l| l == 0).count() as f64 / labels.len() as f64;
        println!(
            "{frame}: {:.1} ms, {:.1}% road",
            elapsed.as_secs_f64() * 1e3,
            100.0 * road
        );
    }
    Ok(())
}
