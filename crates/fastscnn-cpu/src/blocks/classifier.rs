//! The classifier on the fused path.

use super::*;

/// Two DSConvs and the 1x1 conv to class scores (dropout is the identity at inference).
#[derive(Debug, Clone)]
pub struct FusedClassifier {
    pub dsconv1: SeparableConv,
    pub dsconv2: SeparableConv,
    pub conv: PointwiseConv,
}

impl FusedClassifier {
    pub fn run(&self, x: &[f32], h: usize, w: usize, pool: &mut BufferPool) -> Buffer {
        let (a, h, w) = self.dsconv1.run(x, h, w, pool);
        if self.dsconv2.pointwise.has_packed_kernel() && self.conv.has_packed_kernel() {
            // The class scores straight from each band of the second DSConv.
            let (scores, _, _) = self
                .dsconv2
                .run_fused_then(&a, h, w, Some(&self.conv), pool);
            pool.give(a);
            return scores;
        }
        let (b, h, w) = self.dsconv2.run(&a, h, w, pool);
        pool.give(a);
        let mut out = pool.take(self.conv.out_channels * h * w);
        self.conv.run(&b, h * w, &mut out, Seed::Bias);
        pool.give(b);
        out
    }
}
