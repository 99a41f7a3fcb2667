//! Segments one image and writes its Cityscapes colour map.
//!
//! ```sh
//! cargo run --release -p fastscnn-model --example segment_image -- WEIGHTS IMAGE OUT.png
//! ```

use std::error::Error;

use candle_core::Device;
use fastscnn_data::colorize_train_ids;
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, image, output] = args.as_slice() else {
        return Err("usage: segment_image WEIGHTS IMAGE OUT.png".into());
    };
    let model = FastScnn::from_file(weights, &LoadOptions::default())?;
    let image = load_rgb_image(image)?;
    let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu)?;
    // (1, H, W) class indices, one per pixel.
    let labels: Vec<u32> = model.predict(&input)?.flatten_all()?.to_vec1()?;
    let train_ids: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
    colorize_train_ids(&train_ids, image.width(), image.height()).save(output)?;
    println!("{output}: {}x{}", image.width(), image.height());
    Ok(())
}
