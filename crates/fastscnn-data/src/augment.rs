//! Training augmentation as the paper lists it: random scale, crop, horizontal flip, colour-channel
//! noise, brightness.
//!
//! Scale, flip and crop are one resampling pass straight into the crop: the scaled image is never
//! built, so a 2x scale of a 1024x2048 frame costs the same as any other crop of the same size.
//! Images are resampled bilinearly (PyTorch's `align_corners=False` convention), labels by nearest
//! neighbour so no new class values appear ([`crate::resample`]).

use image::{GrayImage, RgbImage};
use rand::Rng;

use crate::error::{DataError, Result};
use crate::resample::{colour_lut, resample_nearest, resample_rgb, scaled_size, Axis};

/// The augmentation recipe of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Output (height, width). Where the scaled frame is smaller, the image is padded with 0 and
    /// the label with 255 (ignored) at the bottom and right.
    pub crop: (usize, usize),
    /// Scale factors are drawn uniformly from this closed range.
    pub scale_range: (f32, f32),
    /// Flip horizontally with probability one half.
    pub hflip: bool,
    /// All channels are multiplied by a factor drawn from `[1 - brightness, 1 + brightness]`.
    pub brightness: f32,
    /// Each channel is further multiplied by its own factor from
    /// `[1 - channel_noise, 1 + channel_noise]`, shifting the colour balance.
    pub channel_noise: f32,
}

impl AugmentConfig {
    /// The paper's recipe: scale 0.5–2.0, crop, flip, brightness ±20% and channel gains ±5%
    /// (the paper names the last two without magnitudes; these are the usual ones).
    pub fn paper(crop_height: usize, crop_width: usize) -> Self {
        Self {
            crop: (crop_height, crop_width),
            scale_range: (0.5, 2.0),
            hflip: true,
            brightness: 0.2,
            channel_noise: 0.05,
        }
    }

    /// Checks that the crop is not empty, the scale range is positive and ordered, and
    /// `brightness` and `channel_noise` lie in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        let invalid = |why: String| {
            Err(DataError::InvalidConfig {
                what: "augmentation",
                why,
            })
        };
        let (lo, hi) = self.scale_range;
        if self.crop.0 == 0 || self.crop.1 == 0 {
            return invalid(format!("crop {}x{} is empty", self.crop.0, self.crop.1));
        }
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return invalid(format!("scale range {lo}-{hi} must satisfy 0 < min <= max"));
        }
        for (name, v) in [
            ("brightness", self.brightness),
            ("channel noise", self.channel_noise),
        ] {
            if !(0.0..1.0).contains(&v) {
                return invalid(format!("{name} {v} must be in [0, 1)"));
            }
        }
        Ok(())
    }

    /// Draws the random decisions for a frame of `(height, width)`, in a fixed order.
    pub fn draw(&self, size: (usize, usize), rng: &mut impl Rng) -> Augmentation {
        let (lo, hi) = self.scale_range;
        let scale = if lo < hi {
            rng.random_range(lo..=hi)
        } else {
            lo
        };
        let scaled = scaled_size(size, scale);
        let offset = (
            rng.random_range(0..=scaled.0.saturating_sub(self.crop.0)),
            rng.random_range(0..=scaled.1.saturating_sub(self.crop.1)),
        );
        let flip = self.hflip && rng.random_bool(0.5);
        let mut factor = |spread: f32| {
            if spread > 0.0 {
                rng.random_range(1.0 - spread..=1.0 + spread)
            } else {
                1.0
            }
        };
        let brightness = factor(self.brightness);
        let gains = [
            factor(self.channel_noise),
            factor(self.channel_noise),
            factor(self.channel_noise),
        ];
        Augmentation {
            scale,
            crop: self.crop,
            offset,
            flip,
            brightness,
            gains,
        }
    }

    /// Draws and applies one augmentation.
    pub fn apply(
        &self,
        image: &RgbImage,
        train_ids: Option<&GrayImage>,
        rng: &mut impl Rng,
    ) -> (RgbImage, Option<GrayImage>) {
        let (w, h) = image.dimensions();
        self.draw((h as usize, w as usize), rng)
            .apply(image, train_ids)
    }
}

/// The drawn decisions for one frame: applying the same `Augmentation` twice gives the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentation {
    /// Factor the frame is scaled by before the crop is taken.
    pub scale: f32,
    /// Output (height, width).
    pub crop: (usize, usize),
    /// Top-left corner of the crop in the scaled (and flipped) frame.
    pub offset: (usize, usize),
    /// Whether the frame is mirrored left to right.
    pub flip: bool,
    /// Factor every channel of the image is multiplied by.
    pub brightness: f32,
    /// Further factor of each channel, in R, G, B order.
    pub gains: [f32; 3],
}

impl Augmentation {
    /// Resamples the image (bilinear, then brightness and channel gains) and the train ids
    /// (nearest) into the crop. The label must have the image's size.
    pub fn apply(
        &self,
        image: &RgbImage,
        train_ids: Option<&GrayImage>,
    ) -> (RgbImage, Option<GrayImage>) {
        let (w, h) = image.dimensions();
        let (h, w) = (h as usize, w as usize);
        let scaled = scaled_size((h, w), self.scale);
        let rows = Axis::new(h, scaled.0, self.offset.0, self.crop.0, false);
        let cols = Axis::new(w, scaled.1, self.offset.1, self.crop.1, self.flip);
        let luts = std::array::from_fn(|c| colour_lut(self.brightness * self.gains[c]));
        let image = resample_rgb(image, &rows, &cols, &luts);
        let label = train_ids.map(|l| {
            assert_eq!(l.dimensions(), (w as u32, h as u32), "label size");
            resample_nearest(l, &rows, &cols)
        });
        (image, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::IGNORE_TRAIN_ID;
    use crate::rng::sample_rng;

    fn frame(w: u32, h: u32) -> (RgbImage, GrayImage) {
        let image = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, (x ^ y) as u8])
        });
        let label = GrayImage::from_fn(w, h, |x, y| image::Luma([((x / 3 + y) % 19) as u8]));
        (image, label)
    }

    fn identity(crop: (usize, usize)) -> Augmentation {
        Augmentation {
            scale: 1.0,
            crop,
            offset: (0, 0),
            flip: false,
            brightness: 1.0,
            gains: [1.0; 3],
        }
    }

    #[test]
    fn unit_scale_without_flip_copies_the_frame() {
        let (image, label) = frame(13, 7);
        let (i, l) = identity((7, 13)).apply(&image, Some(&label));
        assert_eq!(i, image);
        assert_eq!(l.unwrap(), label);
    }

    #[test]
    fn flipping_twice_is_the_identity() {
        let (image, label) = frame(13, 7);
        let flip = Augmentation {
            flip: true,
            ..identity((7, 13))
        };
        let (i1, l1) = flip.apply(&image, Some(&label));
        assert_ne!(i1, image);
        assert_eq!(i1.get_pixel(0, 2), image.get_pixel(12, 2));
        assert_eq!(l1.as_ref().unwrap().get_pixel(12, 6), label.get_pixel(0, 6));
        let (i2, l2) = flip.apply(&i1, l1.as_ref());
        assert_eq!(i2, image);
        assert_eq!(l2.unwrap(), label);
    }

    #[test]
    fn crops_have_the_exact_size_and_labels_keep_their_values() {
        let (image, label) = frame(64, 32);
        let config = AugmentConfig::paper(24, 40);
        for index in 0..40 {
            let (i, l) = config.apply(&image, Some(&label), &mut sample_rng(3, 0, index));
            let l = l.unwrap();
            assert_eq!(i.dimensions(), (40, 24));
            assert_eq!(l.dimensions(), (40, 24));
            assert!(l.iter().all(|&v| v < 19 || v == IGNORE_TRAIN_ID));
        }
    }

    #[test]
    fn small_frames_are_padded_with_black_and_ignore() {
        let (image, label) = frame(8, 4);
        let pad = identity((6, 10)).apply(&image, Some(&label));
        let l = pad.1.unwrap();
        assert_eq!(pad.0.get_pixel(9, 5).0, [0, 0, 0]);
        assert_eq!(l.get_pixel(9, 5).0, [IGNORE_TRAIN_ID]);
        assert_eq!(l.get_pixel(7, 3), label.get_pixel(7, 3));
        assert_eq!(l.get_pixel(8, 0).0, [IGNORE_TRAIN_ID]);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (image, label) = frame(64, 32);
        let config = AugmentConfig::paper(16, 16);
        let run = |seed| config.apply(&image, Some(&label), &mut sample_rng(seed, 1, 5));
        let (a, b, c) = (run(1), run(1), run(2));
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn doubling_repeats_each_label_pixel_and_interpolates_the_image() {
        let image = RgbImage::from_raw(2, 1, vec![0, 0, 0, 100, 200, 40]).unwrap();
        let label = GrayImage::from_raw(2, 1, vec![3, 7]).unwrap();
        let double = Augmentation {
            scale: 2.0,
            ..identity((2, 4))
        };
        let (i, l) = double.apply(&image, Some(&label));
        assert_eq!(l.unwrap().as_raw(), &[3, 3, 7, 7, 3, 3, 7, 7]);
        // Source x of output columns: 0 (clamped), 0.25, 0.75, 1 (clamped).
        let reds: Vec<u8> = i.pixels().take(4).map(|p| p.0[0]).collect();
        assert_eq!(reds, [0, 25, 75, 100]);
    }

    #[test]
    fn brightness_and_gains_scale_and_saturate() {
        let image = RgbImage::from_raw(1, 1, vec![100, 200, 10]).unwrap();
        let bright = Augmentation {
            brightness: 1.5,
            gains: [1.0, 1.0, 0.5],
            ..identity((1, 1))
        };
        assert_eq!(bright.apply(&image, None).0.as_raw(), &[150, 255, 8]);
    }

    #[test]
    fn invalid_recipes_are_refused() {
        let mut c = AugmentConfig::paper(0, 8);
        assert!(c.validate().is_err());
        c = AugmentConfig::paper(8, 8);
        c.scale_range = (2.0, 1.0);
        assert!(c.validate().is_err());
        c.scale_range = (1.0, 1.0);
        assert!(c.validate().is_ok());
    }
}
