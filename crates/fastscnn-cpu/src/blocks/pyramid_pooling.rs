//! Pyramid pooling on the fused path.

use super::*;

/// Pyramid pooling: the input, and each bin's pooled, projected and upsampled features, concatenated
/// and fused by the output conv.
#[derive(Debug, Clone)]
pub struct FusedPyramidPooling {
    /// One `(bin, conv)` per branch: the input is average-pooled to `bin`x`bin` and projected by
    /// the 1x1 `conv`.
    pub branches: Vec<(usize, PointwiseConv)>,
    /// The conv over the input and the upsampled branches, concatenated in that order.
    pub out: AnyConv,
    /// Whether the bilinear upsampling of the branches aligns corner pixels, as PyTorch's
    /// `align_corners`.
    pub align_corners: bool,
}

impl FusedPyramidPooling {
    /// Runs the block on one image, its output in a buffer from `pool`.
    pub fn run(&self, input: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        let (x, c, h, w) = (input.data, input.channels, input.height, input.width);
        let plane = h * w;
        let concat_channels = c + self
            .branches
            .iter()
            .map(|(_, b)| b.out_channels)
            .sum::<usize>();
        let mut concat = pool.take(concat_channels * plane);
        concat[..c * plane].copy_from_slice(x);
        let mut offset = c * plane;
        for (bin, conv) in &self.branches {
            let mut pooled = vec![0f32; c * bin * bin];
            pool_planes(x, h, w, &mut pooled, *bin, *bin);
            let mut projected = vec![0f32; conv.out_channels * bin * bin];
            conv.run(&pooled, bin * bin, &mut projected, Seed::Bias);
            let end = offset + conv.out_channels * plane;
            resize_planes(
                MapView::new(&projected, conv.out_channels, *bin, *bin),
                &mut concat[offset..end],
                (h, w),
                self.align_corners,
            );
            offset = end;
        }
        let out = self
            .out
            .run(MapView::new(&concat, concat_channels, h, w), pool);
        pool.give(concat);
        out
    }
}
