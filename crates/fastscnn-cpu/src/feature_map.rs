//! One image's feature map with its shape, as the blocks take and return it.

use crate::Buffer;

/// One image's feature map: `channels` planes of `height` x `width` floats, channel-major, in a
/// buffer lent by a [`BufferPool`](crate::BufferPool). What every block returns; give it back to
/// the pool (`pool.give(map)`) once read.
#[derive(Debug)]
pub struct FeatureMap {
    /// `channels * height * width` floats, plane after plane, row after row.
    pub data: Buffer,
    /// Planes in `data`, one per channel.
    pub channels: usize,
    /// Rows per plane.
    pub height: usize,
    /// Floats per row.
    pub width: usize,
}

impl FeatureMap {
    /// The map borrowed as the next block's input.
    pub fn view(&self) -> MapView<'_> {
        MapView {
            data: &self.data,
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }
}

impl From<FeatureMap> for Buffer {
    fn from(map: FeatureMap) -> Buffer {
        map.data
    }
}

/// A borrowed one-image (C, H, W) map: a block's input, whether an image, a slice of a batch or
/// another block's [`FeatureMap`].
#[derive(Debug, Clone, Copy)]
pub struct MapView<'a> {
    /// `channels * height * width` floats, plane after plane, row after row.
    pub data: &'a [f32],
    /// Planes in `data`, one per channel.
    pub channels: usize,
    /// Rows per plane.
    pub height: usize,
    /// Floats per row.
    pub width: usize,
}

impl<'a> MapView<'a> {
    /// # Panics
    /// If `data` does not hold exactly `channels * height * width` floats: the blocks index the
    /// planes by that shape.
    pub fn new(data: &'a [f32], channels: usize, height: usize, width: usize) -> Self {
        assert_eq!(
            Some(data.len()),
            channels
                .checked_mul(height)
                .and_then(|n| n.checked_mul(width)),
            "a {channels}x{height}x{width} map"
        );
        Self {
            data,
            channels,
            height,
            width,
        }
    }

    /// Floats per channel plane.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }
}
