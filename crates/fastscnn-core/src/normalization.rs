//! Input normalisation, shared by inference (one image) and training batches (many), so that the
//! network always sees the numbers it was trained on.

/// Per-channel input normalisation on RGB scaled to [0, 1]: `(v / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Mean of each channel, in R, G, B order, on the [0, 1] scale.
    pub mean: [f32; 3],
    /// Standard deviation of each channel, in R, G, B order, on the [0, 1] scale.
    pub std: [f32; 3],
}

impl Normalization {
    /// The ImageNet statistics both public Fast-SCNN implementations train with.
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Writes interleaved 8-bit RGB (`HxWx3`) into `planar` as three normalised planes (`3xHxW`),
    /// in the same float operations as torchvision's `ToTensor` + `Normalize`.
    ///
    /// # Panics
    /// If `planar` does not hold exactly as many values as `rgb`.
    pub fn rgb_to_planar(&self, rgb: &[u8], planar: &mut [f32]) {
        assert_eq!(rgb.len(), planar.len(), "one float per RGB byte");
        let plane = rgb.len() / 3;
        // A lookup per channel: 256 entries replace a divide per pixel.
        let luts: [[f32; 256]; 3] = std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f32 / 255.0 - self.mean[c]) / self.std[c])
        });
        let (r, rest) = planar.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            r[i] = luts[0][px[0] as usize];
            g[i] = luts[1][px[1] as usize];
            b[i] = luts[2][px[2] as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_channel_in_planar_order() {
        let norm = Normalization {
            mean: [0.5, 0.0, 0.2],
            std: [0.5, 1.0, 0.1],
        };
        let mut out = [0f32; 6];
        norm.rgb_to_planar(&[0, 128, 255, 255, 0, 51], &mut out);
        let expected = [-1.0, 1.0, 128.0 / 255.0, 0.0, 8.0, 0.0];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }
}
