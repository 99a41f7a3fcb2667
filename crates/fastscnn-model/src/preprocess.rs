//! Turning an RGB image into the network's input. The one place this happens, so the CLI, the
//! evaluator and the trainer cannot drift apart.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{ModelError, Result};
use crate::Normalization;

/// Decodes an image file of any format the `image` crate reads, converted to 8-bit RGB.
pub fn load_rgb_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let image = image::ImageReader::open(path)
        .map_err(|e| ModelError::ReadImage {
            path: path.to_path_buf(),
            source: image::ImageError::IoError(e),
        })?
        .with_guessed_format()
        .map_err(|e| ModelError::ReadImage {
            path: path.to_path_buf(),
            source: image::ImageError::IoError(e),
        })?
        .decode()
        .map_err(|source| ModelError::ReadImage {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(image.into_rgb8())
}

/// An RGB image as a normalised f32 (1, 3, H, W) tensor: `(v / 255 - mean) / std` per channel.
pub fn image_to_tensor(
    image: &RgbImage,
    norm: &Normalization,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (w, h) = image.dimensions();
    let mut data = vec![0f32; image.as_raw().len()];
    norm.rgb_to_planar(image.as_raw(), &mut data);
    Tensor::from_vec(data, (1, 3, h as usize, w as usize), device)
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
