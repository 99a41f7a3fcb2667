//! Label maps as images people can look at.

use image::{GrayImage, RgbImage};

use crate::labels::train_id_color;

/// A train-id map (row-major, `width * height` values) coloured with the Cityscapes palette.
pub fn colorize_train_ids(train_ids: &[u8], width: u32, height: u32) -> RgbImage {
    let mut lut = [[0u8; 3]; 256];
    for (t, slot) in lut.iter_mut().enumerate() {
        *slot = train_id_color(t as u8);
    }
    let mut image = RgbImage::new(width, height);
    for (pixel, &t) in image.pixels_mut().zip(train_ids) {
        pixel.0 = lut[t as usize];
    }
    image
}

/// A train-id map as an 8-bit grey image, the format of `*_gtFine_labelTrainIds.png`.
pub fn train_id_image(train_ids: &[u8], width: u32, height: u32) -> Option<GrayImage> {
    GrayImage::from_raw(width, height, train_ids.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_each_pixel() {
        let img = colorize_train_ids(&[0, 10, 255, 18], 2, 2);
        assert_eq!(img.get_pixel(0, 0).0, [128, 64, 128]);
        assert_eq!(img.get_pixel(1, 0).0, [70, 130, 180]);
        assert_eq!(img.get_pixel(0, 1).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 1).0, [119, 11, 32]);
    }

    #[test]
    fn grey_image_needs_matching_size() {
        assert!(train_id_image(&[1, 2, 3], 2, 2).is_none());
        assert_eq!(
            train_id_image(&[1, 2, 3, 4], 2, 2)
                .unwrap()
                .get_pixel(1, 1)
                .0,
            [4]
        );
    }
}
