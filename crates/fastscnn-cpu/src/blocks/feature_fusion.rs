//! Feature fusion on the fused path.

use super::*;

/// Feature fusion: the global features upsampled, depthwise-filtered and projected, plus the
/// projected higher-resolution features, rectified.
#[derive(Debug, Clone)]
pub struct FusedFeatureFusion {
    /// The depthwise 3x3 conv on the upsampled global features.
    pub depthwise: DepthwiseConv,
    /// The 1x1 conv on the filtered global features; linear, as the ReLU follows the sum.
    pub lower: PointwiseConv,
    /// Carries the ReLU of the sum, applied after its product is added to the lower branch's.
    pub higher: PointwiseConv,
    /// Whether the bilinear upsampling of the global features aligns corner pixels, as PyTorch's
    /// `align_corners`.
    pub align_corners: bool,
}

impl FusedFeatureFusion {
    /// The output has `higher`'s height and width.
    pub fn run(
        &self,
        higher: MapView<'_>,
        lower: MapView<'_>,
        pool: &mut BufferPool,
    ) -> FeatureMap {
        if self.lower.has_packed_kernel() && self.higher.has_packed_kernel() {
            return self.run_fused(higher, lower, pool);
        }
        let (h, w) = (higher.height, higher.width);
        let higher = higher.data;
        let channels = self.depthwise.channels;
        assert_eq!(lower.channels, channels, "feature fusion lower input");
        let mut upsampled = pool.take(channels * h * w);
        resize_planes(lower, &mut upsampled, (h, w), self.align_corners);
        let mut filtered = pool.take(channels * h * w);
        self.depthwise.run(&upsampled, h, w, &mut filtered);
        pool.give(upsampled);
        let mut out = pool.take(self.lower.out_channels * h * w);
        self.lower.run(&filtered, h * w, &mut out, Seed::Bias);
        pool.give(filtered);
        self.higher.run(higher, h * w, &mut out, Seed::Accumulate);
        FeatureMap {
            data: out,
            channels: self.lower.out_channels,
            height: h,
            width: w,
        }
    }

    /// Band by band of output rows: the upsampled rows a band's depthwise conv reads are blended
    /// from the horizontally interpolated global features (computed once, 1/4 of the rows), the
    /// filtered band stays in cache for the lower-branch product, and the higher branch is added
    /// to it in place. Neither the upsampled nor the filtered map is ever stored in full.
    pub(super) fn run_fused(
        &self,
        higher: MapView<'_>,
        lower: MapView<'_>,
        pool: &mut BufferPool,
    ) -> FeatureMap {
        let (dw, low, high) = (&self.depthwise, &self.lower, &self.higher);
        let channels = dw.channels;
        assert_eq!(lower.channels, channels, "feature fusion lower input");
        assert_eq!(
            higher.channels, high.in_channels,
            "feature fusion higher input"
        );
        let (h, w, lh, lw) = (higher.height, higher.width, lower.height, lower.width);
        let (higher, lower) = (higher.data, lower.data);
        let mut widened = pool.take(channels * lh * w);
        horizontal_planes(lower, lh, lw, &mut widened, w, self.align_corners);
        let rows = row_taps(lh, h, self.align_corners);
        let widened_rows: &[f32] = &widened;
        let mut out = pool.take(low.out_channels * h * w);
        let bands = RowBands::new(h, band_rows(channels * w, h));
        let dst = SendPtr(out.as_mut_ptr());
        bands.for_each(|band| {
            with_task_scratch(|task| {
                let (y0, y1) = (band.start, band.end);
                let n = (y1 - y0) * w;
                // The depthwise conv reads one upsampled row above and below the band.
                let (u0, u1) = (y0.saturating_sub(1), (y1 + 1).min(h));
                let upsampled = grown(&mut task.first, (u1 - u0) * w);
                let filtered = grown(&mut task.second, channels * n);
                for (c, band_rows) in filtered.chunks_exact_mut(n).enumerate() {
                    let plane = &widened_rows[c * lh * w..(c + 1) * lh * w];
                    for (row, &(s0, s1, wy0, wy1)) in
                        upsampled.chunks_exact_mut(w).zip(&rows[u0..u1])
                    {
                        blend(
                            &plane[s0 * w..(s0 + 1) * w],
                            &plane[s1 * w..(s1 + 1) * w],
                            wy0,
                            wy1,
                            // SAFETY: `blend` only writes values.
                            unsafe { as_uninit(row) },
                        );
                    }
                    dw.run_rows(c, upsampled, u0, h, w, y0, band_rows, &mut task.third);
                }
                let out = dst.get().wrapping_add(y0 * w);
                // SAFETY: `has_packed_kernel` holds for both convs; bands write disjoint pixel
                // ranges of every output plane; `filtered` is (channels, n) and `higher` has rows
                // y0..y1 of every channel at stride h·w.
                unsafe {
                    let lower_epilogue = Epilogue {
                        bias: &low.bias,
                        residual: None,
                        accumulate: false,
                        relu: false,
                    };
                    low.gemm_slice(
                        0..low.out_channels,
                        0..channels,
                        filtered.as_ptr(),
                        n,
                        out,
                        h * w,
                        n,
                        lower_epilogue,
                    );
                    let higher_epilogue = Epilogue {
                        bias: &high.bias,
                        residual: None,
                        accumulate: true,
                        relu: high.relu,
                    };
                    high.gemm_slice(
                        0..high.out_channels,
                        0..high.in_channels,
                        higher[y0 * w..].as_ptr(),
                        h * w,
                        out,
                        h * w,
                        n,
                        higher_epilogue,
                    );
                }
            })
        });
        pool.give(widened);
        FeatureMap {
            data: out,
            channels: low.out_channels,
            height: h,
            width: w,
        }
    }
}
