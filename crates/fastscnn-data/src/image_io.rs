//! Decoding the dataset's PNGs with errors that name the file.

use std::path::Path;

use image::{DynamicImage, GrayImage, RgbImage};

use crate::error::{DataError, Result};

fn read_error(path: &Path, source: image::ImageError) -> DataError {
    DataError::ReadImage {
        path: path.to_path_buf(),
        source,
    }
}

fn decode(path: &Path) -> Result<DynamicImage> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| read_error(path, image::ImageError::IoError(e)))?
        .decode()
        .map_err(|e| read_error(path, e))
}

/// Width and height from the file's header, without decoding the pixels.
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    image::image_dimensions(path).map_err(|e| read_error(path, e))
}

/// Any image the `image` crate reads, as 8-bit RGB.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode(path)?.into_rgb8())
}

/// An 8-bit single-channel image. Anything else is refused rather than converted: a colour or
/// 16-bit file where ids are expected would silently become wrong ids.
pub fn read_gray(path: &Path) -> Result<GrayImage> {
    match decode(path)? {
        DynamicImage::ImageLuma8(image) => Ok(image),
        other => Err(DataError::LabelFormat {
            path: path.to_path_buf(),
            found: format!("{:?}", other.color()),
        }),
    }
}
