//! Decoding images with errors that name the file, and with the checks an untrusted file needs
//! before its pixels are trusted: the size its header declares against a pixel budget (before a
//! byte is allocated for the pixels), a JPEG cut short (which the decoder would fill in and
//! return as if whole), and the EXIF orientation a camera writes instead of rotating the pixels.

use std::io::{Cursor, Read};
use std::path::Path;

use image::{
    DynamicImage, ExtendedColorType, GrayImage, ImageDecoder, ImageFormat, ImageReader, Limits,
    RgbImage,
};

use crate::error::{DataError, Result};
use crate::jpeg::jpeg_is_complete;

/// The largest image, in pixels, the dataset readers decode: 16 Cityscapes frames (32 MP). A
/// dataset of larger frames needs its own reader.
pub const DATASET_MAX_PIXELS: u64 = 16 * 1024 * 2048;

/// Bytes a file may hold per pixel of the budget: no PNG or JPEG of an image within the budget
/// is larger (raw 8-bit RGBA is 4), so a larger file is refused before it is read.
const MAX_FILE_BYTES_PER_PIXEL: u64 = 8;
/// Files below this size are read whatever the budget: headers and metadata of tiny images.
const MIN_FILE_BYTE_LIMIT: u64 = 1 << 20;

fn read_error(path: &Path, source: image::ImageError) -> DataError {
    DataError::ReadImage {
        path: path.to_path_buf(),
        cause: source,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    read_error(path, image::ImageError::IoError(source))
}

/// Decodes `path`, refusing an image of more than `max_pixels` pixels from its header alone, a
/// JPEG without its end, and rotating or mirroring the pixels as the EXIF orientation says.
pub fn decode_within(path: &Path, max_pixels: u64) -> Result<DynamicImage> {
    Ok(decode(path, max_pixels)?.0)
}

/// [`decode_within`], with the colour type the file stores (before decoders expand it).
fn decode(path: &Path, max_pixels: u64) -> Result<(DynamicImage, ExtendedColorType)> {
    let byte_limit = max_pixels
        .saturating_mul(MAX_FILE_BYTES_PER_PIXEL)
        .max(MIN_FILE_BYTE_LIMIT);
    // Read through the opened file, never more than the limit: its size can change between a
    // check and a read, and a device or a pipe has none.
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let is_file = file.metadata().map_err(|e| io_error(path, e))?.is_file();
    if !is_file {
        let why = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(io_error(path, why));
    }
    let mut bytes = Vec::new();
    file.take(byte_limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > byte_limit {
        let bytes = std::fs::metadata(path).map_or(byte_limit + 1, |m| m.len().max(byte_limit + 1));
        return Err(DataError::FileTooLarge {
            path: path.to_path_buf(),
            bytes,
            max_pixels,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let mut limits = Limits::default();
    // The decoder's own allocations: the pixels at up to 16 bits per channel, and room for its
    // tables.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(|e| read_error(path, e))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DataError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            max_pixels,
        });
    }
    if format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
        });
    }
    // A file whose orientation tag cannot be read is shown unrotated by viewers too.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let stored = decoder.original_color_type();
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| read_error(path, e))?;
    image.apply_orientation(orientation);
    Ok((image, stored))
}

/// Width and height from the file's header, without decoding the pixels: as [`decode_within`]
/// returns the image, turned upright by its EXIF orientation (a quarter turn swaps them), so
/// that a label drawn on the upright photo matches it.
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    use image::metadata::Orientation;
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| io_error(path, e))?;
    let mut decoder = reader.into_decoder().map_err(|e| read_error(path, e))?;
    let (width, height) = decoder.dimensions();
    let quarter_turn = matches!(
        decoder.orientation(),
        Ok(Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH)
    );
    Ok(if quarter_turn {
        (height, width)
    } else {
        (width, height)
    })
}

/// Any image the `image` crate reads within [`DATASET_MAX_PIXELS`], as 8-bit RGB.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(decode_within(path, DATASET_MAX_PIXELS)?.into_rgb8())
}

/// An 8-bit single-channel image. Anything else is refused rather than converted: a colour or
/// 16-bit file where ids are expected would silently become wrong ids.
///
/// Grey of fewer bits (1, 2, 4) is refused too: decoders scale it to 0..255, so the class 1 of a
/// 1-bit mask would read as 255.
pub fn read_gray(path: &Path) -> Result<GrayImage> {
    match decode(path, DATASET_MAX_PIXELS)? {
        (DynamicImage::ImageLuma8(image), ExtendedColorType::L8) => Ok(image),
        (_, stored @ (ExtendedColorType::L1 | ExtendedColorType::L2 | ExtendedColorType::L4)) => {
            Err(DataError::LabelFormat {
                path: path.to_path_buf(),
                found: format!("{stored:?}, whose values decoders rescale to 0-255"),
            })
        }
        (other, _) => Err(DataError::LabelFormat {
            path: path.to_path_buf(),
            found: format!("{:?}", other.color()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;
    use image::ImageEncoder;

    fn png_bytes(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(
                &vec![7u8; (width * height * 3) as usize],
                width,
                height,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    fn jpeg_bytes(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let pixels: Vec<u8> = (0..width * height * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// A folder, and on Unix a device that never ends, named like an image.
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a.png");
        std::fs::create_dir(&folder).unwrap();
        let why = |path: &Path| {
            let err = decode_within(path, 1 << 20).unwrap_err();
            let source = std::error::Error::source(&err).map(|s| s.to_string());
            format!("{err}: {}", source.unwrap_or_default())
        };
        let err = why(&folder);
        assert!(err.contains("not a regular file"), "{err}");
        #[cfg(unix)]
        {
            let zeros = dir.path().join("zeros.png");
            std::os::unix::fs::symlink("/dev/zero", &zeros).unwrap();
            let err = why(&zeros);
            assert!(err.contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn the_budget_is_checked_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        std::fs::write(&path, png_bytes(40, 30)).unwrap();
        assert_eq!(decode_within(&path, 1200).unwrap().width(), 40);
        let err = decode_within(&path, 1199).unwrap_err();
        assert!(matches!(
            err,
            DataError::TooManyPixels {
                width: 40,
                height: 30,
                ..
            }
        ));
        assert!(err.to_string().starts_with(&path.display().to_string()));
    }

    #[test]
    fn the_size_is_the_upright_images() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg = jpeg_bytes(64, 48);
        for (orientation, size) in [(1, (64, 48)), (3, (64, 48)), (6, (48, 64)), (8, (48, 64))] {
            let path = dir.path().join(format!("o{orientation}.jpg"));
            std::fs::write(
                &path,
                fastscnn_core::testing::jpeg_with_orientation(&jpeg, orientation),
            )
            .unwrap();
            assert_eq!(
                image_size(&path).unwrap(),
                size,
                "orientation {orientation}"
            );
            assert_eq!(
                {
                    let image = decode_within(&path, 1 << 20).unwrap();
                    (image.width(), image.height())
                },
                size
            );
        }
    }

    #[test]
    fn a_jpeg_cut_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = jpeg_bytes(64, 48);
        let whole = dir.path().join("whole.jpg");
        std::fs::write(&whole, &bytes).unwrap();
        assert!(decode_within(&whole, 1 << 20).is_ok());
        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let err = decode_within(&cut, 1 << 20).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    }

    #[test]
    fn a_file_larger_than_any_image_within_the_budget_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        let mut bytes = png_bytes(4, 4);
        bytes.resize(MIN_FILE_BYTE_LIMIT as usize + 1, 0);
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            decode_within(&path, 16).unwrap_err(),
            DataError::FileTooLarge { .. }
        ));
    }
}
