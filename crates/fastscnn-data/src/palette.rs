//! Label maps as images people can look at.

use image::{GrayImage, RgbImage};

use crate::classes::ClassTable;
use crate::labels::{train_id_color, train_id_to_label_id};

/// A colour for every class a model can output; 255 (ignore) and classes the model does not have
/// are black.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Palette {
    colours: [[u8; 3]; 256],
}

impl Palette {
    /// The Cityscapes colours of the 19 train ids.
    pub fn cityscapes() -> Self {
        Self {
            colours: std::array::from_fn(|t| train_id_color(t as u8)),
        }
    }

    /// Class `i` in the `i`-th of `colours` (at most 255 taken: 255 is "ignore", black).
    pub fn from_colours(colours: impl IntoIterator<Item = [u8; 3]>) -> Self {
        let mut table = [[0u8; 3]; 256];
        for (slot, colour) in table.iter_mut().take(255).zip(colours) {
            *slot = colour;
        }
        Self { colours: table }
    }

    /// The palette for a model of `classes` classes: Cityscapes' for 19, otherwise the
    /// bit-interleaved palette of PASCAL VOC (as mmsegmentation and torchvision draw any class
    /// count), starting at its second colour so that no class is the black of "ignore".
    pub fn for_classes(classes: usize) -> Self {
        if classes == 0 {
            return Self::from_colours([]);
        }
        ClassTable::for_count(classes).palette()
    }

    /// The RGB colour of `class`.
    pub fn colour(&self, class: u8) -> [u8; 3] {
        self.colours[usize::from(class)]
    }

    /// A label map (row-major, `width * height` values) in these colours.
    pub fn colorize(&self, labels: &[u8], width: u32, height: u32) -> RgbImage {
        let mut image = RgbImage::new(width, height);
        for (pixel, &t) in image.pixels_mut().zip(labels) {
            pixel.0 = self.colours[usize::from(t)];
        }
        image
    }

    /// These colours blended over `image`: `alpha` of the colour, `1 - alpha` of the photo.
    /// `None` when the sizes disagree.
    pub fn overlay(&self, image: &RgbImage, labels: &[u8], alpha: f32) -> Option<RgbImage> {
        let (width, height) = image.dimensions();
        if labels.len() != (width as usize) * (height as usize) {
            return None;
        }
        let mut out = image.clone();
        for (pixel, &t) in out.pixels_mut().zip(labels) {
            let colour = self.colours[usize::from(t)];
            for (p, &c) in pixel.0.iter_mut().zip(&colour) {
                *p = (alpha * c as f32 + (1.0 - alpha) * *p as f32).round() as u8;
            }
        }
        Some(out)
    }
}

/// Colour `index` of the PASCAL VOC palette: the bits of the index spread over the high bits of
/// red, green and blue, three at a time.
pub(crate) fn voc_colour(index: usize) -> [u8; 3] {
    let mut colour = [0u8; 3];
    let mut id = index;
    for shift in (0..8).rev() {
        for (channel, c) in colour.iter_mut().enumerate() {
            *c |= (((id >> channel) & 1) as u8) << shift;
        }
        id >>= 3;
    }
    colour
}

/// A train-id map (row-major, `width * height` values) coloured with the Cityscapes palette.
pub fn colorize_train_ids(train_ids: &[u8], width: u32, height: u32) -> RgbImage {
    Palette::cityscapes().colorize(train_ids, width, height)
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

/// The Cityscapes colours blended over `image`: `alpha` of the colour, `1 - alpha` of the photo.
/// `None` when the sizes disagree.
pub fn overlay_train_ids(image: &RgbImage, train_ids: &[u8], alpha: f32) -> Option<RgbImage> {
    Palette::cityscapes().overlay(image, train_ids, alpha)
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
    fn every_class_of_any_model_has_its_own_colour() {
        assert_eq!(voc_colour(1), [128, 0, 0]);
        assert_eq!(voc_colour(2), [0, 128, 0]);
        assert_eq!(voc_colour(7), [128, 128, 128]);
        assert_eq!(voc_colour(8), [64, 0, 0]);
        let palette = Palette::for_classes(200);
        let mut seen = std::collections::HashSet::new();
        for class in 0..200u8 {
            let colour = palette.colour(class);
            assert_ne!(colour, [0, 0, 0], "class {class}");
            assert!(seen.insert(colour), "class {class} repeats a colour");
        }
        assert_eq!(palette.colour(255), [0, 0, 0]);
        assert_eq!(Palette::for_classes(19), Palette::cityscapes());
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
