//! Label maps as images people can look at.

use image::{GrayImage, RgbImage};

use crate::labels::{train_id_color, train_id_to_label_id};

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

/// A train-id map as Cityscapes label ids (`road` 7, …, `bicycle` 33, ignore 0): the format of
/// benchmark submissions. `None` when the sizes disagree.
pub fn label_id_image(train_ids: &[u8], width: u32, height: u32) -> Option<GrayImage> {
    let lut: [u8; 256] = std::array::from_fn(|t| train_id_to_label_id(t as u8));
    GrayImage::from_raw(
        width,
        height,
        train_ids.iter().map(|&t| lut[t as usize]).collect(),
    )
}

/// The palette colours blended over `image`: `alpha` of the colour, `1 - alpha` of the photo.
/// `None` when the sizes disagree.
pub fn overlay_train_ids(image: &RgbImage, train_ids: &[u8], alpha: f32) -> Option<RgbImage> {
    let (width, height) = image.dimensions();
    if train_ids.len() != (width * height) as usize {
        return None;
    }
    let colours = colorize_train_ids(train_ids, width, height);
    let mut out = image.clone();
    for (pixel, colour) in out.pixels_mut().zip(colours.pixels()) {
        for (p, &c) in pixel.0.iter_mut().zip(&colour.0) {
            *p = (alpha * c as f32 + (1.0 - alpha) * *p as f32).round() as u8;
        }
    }
    Some(out)
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
    fn label_ids_for_submission() {
        let img = label_id_image(&[0, 18, 255, 10], 2, 2).unwrap();
        assert_eq!(img.as_raw(), &[7, 33, 0, 23]);
        assert!(label_id_image(&[0], 2, 2).is_none());
    }

    #[test]
    fn overlay_blends_by_alpha() {
        let photo = RgbImage::from_pixel(1, 2, image::Rgb([100, 100, 100]));
        let half = overlay_train_ids(&photo, &[0, 255], 0.5).unwrap();
        assert_eq!(half.get_pixel(0, 0).0, [114, 82, 114]);
        assert_eq!(half.get_pixel(0, 1).0, [50, 50, 50]);
        let opaque = overlay_train_ids(&photo, &[0, 0], 1.0).unwrap();
        assert_eq!(opaque.get_pixel(0, 1).0, [128, 64, 128]);
        assert_eq!(overlay_train_ids(&photo, &[0, 0], 0.0).unwrap(), photo);
        assert!(overlay_train_ids(&photo, &[0], 0.5).is_none());
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
