//! Turning an RGB image into the network's input (decoded, optionally scaled down, normalised).
//! The one place this happens, so the CLI, the evaluator and the trainer cannot drift apart.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::Result;
use crate::Normalization;

/// The paper's reduced input resolutions (½, ¼ of each side) without retraining: the image
/// resized before [`image_to_tensor`], the predictions resized back
/// ([`crate::FastScnn::predict_at`]).
pub use fastscnn_data::resample::{resize_image, scaled_size};

/// The largest image [`load_rgb_image`] decodes, in pixels: 4096x4096, eight Cityscapes frames,
/// which a 12-megapixel photo fits. The network's memory grows with the pixels it runs on.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 24;

/// Decodes an image file of any format the `image` crate reads, converted to 8-bit RGB, within
/// [`DEFAULT_MAX_PIXELS`].
pub fn load_rgb_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    load_rgb_image_within(path, DEFAULT_MAX_PIXELS)
}

/// Decodes an image of at most `max_pixels` pixels (checked from its header, before decoding),
/// turned upright as its EXIF orientation says, as 8-bit RGB. A JPEG cut short is an error.
pub fn load_rgb_image_within(path: impl AsRef<Path>, max_pixels: u64) -> Result<RgbImage> {
    Ok(fastscnn_data::image_io::decode_within(path.as_ref(), max_pixels)?.into_rgb8())
}

/// An RGB image as a normalised f32 (1, 3, H, W) tensor: `(v / 255 - mean) / std` per channel.
pub fn image_to_tensor(image: &RgbImage, norm: &Normalization, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    pixels_to_tensor(image.as_raw(), w, h, norm, device)
}

/// `width` x `height` RGB bytes as [`image_to_tensor`] makes them; `pixels` holds exactly
/// `3 * width * height` bytes.
pub(crate) fn pixels_to_tensor(
    pixels: &[u8],
    width: u32,
    height: u32,
    norm: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    let mut data = vec![0f32; pixels.len()];
    norm.rgb_to_planar(pixels, &mut data);
    Ok(Tensor::from_vec(
        data,
        (1, 3, height as usize, width as usize),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_becomes_one_normalised_planar_batch() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 128, 255]));
        img.put_pixel(1, 0, image::Rgb([255, 0, 51]));
        let t = image_to_tensor(&img, &Normalization::IMAGENET, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Red of the second pixel: (255 / 255 - 0.485) / 0.229.
        assert!((v[1] - (1.0 - 0.485) / 0.229).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn unreadable_files_name_the_path() {
        let dir = std::env::temp_dir().join(format!("fastscnn-preprocess-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("not_an_image.png");
        std::fs::write(&fake, b"hello").unwrap();
        let err = load_rgb_image(&fake).unwrap_err().to_string();
        assert!(err.starts_with(&fake.display().to_string()), "{err}");
        let missing = load_rgb_image(dir.join("missing.png"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.png"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
