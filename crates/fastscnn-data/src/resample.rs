//! Resampling 8-bit images on a grid: bilinear for RGB (PyTorch's `align_corners=False`
//! convention, with a per-channel lookup table applied to the result), nearest for label maps.
//! One implementation for the training augmentation (scale, crop and flip in one pass) and the
//! fixed input scales of inference and evaluation.

use image::{GrayImage, RgbImage};

use crate::labels::IGNORE_TRAIN_ID;

/// Resizes an image by `scale` (bilinear): the paper's reduced input resolutions (½, ¼), for
/// inference and evaluation.
pub fn resize_image(image: &RgbImage, scale: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (h, w) = (h as usize, w as usize);
    let (oh, ow) = scaled_size((h, w), scale);
    if (oh, ow) == (h, w) {
        return image.clone();
    }
    let rows = Axis::new(h, oh, 0, oh, false);
    let cols = Axis::new(w, ow, 0, ow, false);
    resample_rgb(image, &rows, &cols, &[colour_lut(1.0); 3])
}

/// The size of a `(height, width)` frame scaled by `scale`, rounded, at least 1x1.
pub fn scaled_size(size: (usize, usize), scale: f32) -> (usize, usize) {
    let s = |n: usize| ((n as f64 * scale as f64).round() as usize).max(1);
    (s(size.0), s(size.1))
}

pub(crate) fn colour_lut(factor: f32) -> [u8; 256] {
    std::array::from_fn(|v| (v as f32 * factor).round().clamp(0.0, 255.0) as u8)
}

/// Where each output row (or column) samples the source: two bilinear taps and a weight, the
/// nearest source index, or nothing where the output lies in the padding.
pub(crate) struct Axis {
    taps: Vec<Option<Tap>>,
}

#[derive(Clone, Copy)]
struct Tap {
    lo: usize,
    hi: usize,
    weight: f32,
    nearest: usize,
}

impl Axis {
    /// `src` source pixels scaled to `scaled`, read from `offset` for `out` pixels, optionally
    /// mirrored within the scaled extent.
    pub(crate) fn new(src: usize, scaled: usize, offset: usize, out: usize, flip: bool) -> Self {
        let ratio = src as f64 / scaled as f64;
        let taps = (0..out)
            .map(|o| {
                let s = o + offset;
                if s >= scaled {
                    return None;
                }
                let s = if flip { scaled - 1 - s } else { s };
                let centre = (s as f64 + 0.5) * ratio;
                let f = (centre - 0.5).max(0.0);
                let lo = (f.floor() as usize).min(src - 1);
                let hi = (lo + 1).min(src - 1);
                Some(Tap {
                    lo,
                    hi,
                    weight: if hi == lo {
                        0.0
                    } else {
                        (f - lo as f64) as f32
                    },
                    nearest: (centre.floor() as usize).min(src - 1),
                })
            })
            .collect();
        Self { taps }
    }
}

pub(crate) fn resample_rgb(
    src: &RgbImage,
    rows: &Axis,
    cols: &Axis,
    luts: &[[u8; 256]; 3],
) -> RgbImage {
    let (w, _) = src.dimensions();
    let stride = w as usize * 3;
    let data = src.as_raw();
    let out_w = cols.taps.len();
    let mut out = vec![0u8; rows.taps.len() * out_w * 3];
    for (row_out, ty) in out.chunks_exact_mut(out_w * 3).zip(&rows.taps) {
        let Some(ty) = ty else { continue };
        let top = &data[ty.lo * stride..][..stride];
        let bottom = &data[ty.hi * stride..][..stride];
        for (px, tx) in row_out.chunks_exact_mut(3).zip(&cols.taps) {
            let Some(tx) = tx else { continue };
            for c in 0..3 {
                let (a, b) = (top[tx.lo * 3 + c] as f32, top[tx.hi * 3 + c] as f32);
                let (d, e) = (bottom[tx.lo * 3 + c] as f32, bottom[tx.hi * 3 + c] as f32);
                let upper = a + (b - a) * tx.weight;
                let lower = d + (e - d) * tx.weight;
                let v = upper + (lower - upper) * ty.weight;
                px[c] = luts[c][(v + 0.5) as u8 as usize];
            }
        }
    }
    RgbImage::from_raw(out_w as u32, rows.taps.len() as u32, out).expect("buffer fits")
}

pub(crate) fn resample_nearest(src: &GrayImage, rows: &Axis, cols: &Axis) -> GrayImage {
    let w = src.width() as usize;
    let data = src.as_raw();
    let out_w = cols.taps.len();
    let mut out = vec![IGNORE_TRAIN_ID; rows.taps.len() * out_w];
    for (row_out, ty) in out.chunks_exact_mut(out_w).zip(&rows.taps) {
        let Some(ty) = ty else { continue };
        let row = &data[ty.nearest * w..][..w];
        for (v, tx) in row_out.iter_mut().zip(&cols.taps) {
            if let Some(tx) = tx {
                *v = row[tx.nearest];
            }
        }
    }
    GrayImage::from_raw(out_w as u32, rows.taps.len() as u32, out).expect("buffer fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_resize_halves_the_frame() {
        let image = RgbImage::from_fn(64, 32, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(resize_image(&image, 0.5).dimensions(), (32, 16));
        assert_eq!(resize_image(&image, 0.25).dimensions(), (16, 8));
        assert_eq!(resize_image(&image, 1.0), image);
    }
}
