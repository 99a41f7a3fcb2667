//! The classifier on the fused path.

use super::*;

/// Two DSConvs and the 1x1 conv to class scores (dropout is the identity at inference).
#[derive(Debug, Clone)]
pub struct FusedClassifier {
    /// The first DSConv.
    pub dsconv1: SeparableConv,
    /// The second DSConv, whose bands feed `conv` while in cache when both have packed kernels.
    pub dsconv2: SeparableConv,
    /// The 1x1 conv to class scores, one output channel per class.
    pub conv: PointwiseConv,
}

impl FusedClassifier {
    /// Runs the classifier on one image: its class scores, one plane per class, in a buffer from
    /// `pool`.
    pub fn run(&self, x: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        let a = self.dsconv1.run(x, pool);
        if self.dsconv2.pointwise.has_packed_kernel() && self.conv.has_packed_kernel() {
            // The class scores straight from each band of the second DSConv.
            let scores = self
                .dsconv2
                .run_fused_then(a.view(), Some(&self.conv), pool);
            pool.give(a);
            return scores;
        }
        let b = self.dsconv2.run(a.view(), pool);
        pool.give(a);
        let (h, w) = (b.height, b.width);
        let mut out = pool.take(self.conv.out_channels * h * w);
        self.conv.run(&b.data, h * w, &mut out, Seed::Bias);
        pool.give(b);
        FeatureMap {
            data: out,
            channels: self.conv.out_channels,
            height: h,
            width: w,
        }
    }
}
