//! Separable convolutions on the fused path: a DSConv band by band, and the stem fused with the
//! first DSConv.

use super::*;

/// Depthwise 3x3 then pointwise 1x1 (DSConv).
#[derive(Debug, Clone)]
pub struct SeparableConv {
    /// The depthwise 3x3 conv; it applies the stride.
    pub depthwise: DepthwiseConv,
    /// The 1x1 conv to the output channels.
    pub pointwise: PointwiseConv,
}

impl SeparableConv {
    /// Runs the conv on one image, its output in a buffer from `pool`: band by band when the
    /// pointwise conv has a packed kernel, layer by layer otherwise.
    pub fn run(&self, x: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        if self.pointwise.has_packed_kernel() {
            return self.run_fused(x, pool);
        }
        let (h, w) = (x.height, x.width);
        let (oh, ow) = self.depthwise.output_size(h, w);
        let mut hidden = pool.take(self.depthwise.channels * oh * ow);
        self.depthwise.run(x.data, h, w, &mut hidden);
        let mut out = pool.take(self.pointwise.out_channels * oh * ow);
        self.pointwise.run(&hidden, oh * ow, &mut out, Seed::Bias);
        pool.give(hidden);
        FeatureMap {
            data: out,
            channels: self.pointwise.out_channels,
            height: oh,
            width: ow,
        }
    }

    /// Band by band of output rows: the depthwise output of a band, all channels, stays in cache
    /// for the pointwise product instead of going to memory and back.
    pub(super) fn run_fused(&self, x: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        self.run_fused_then(x, None, pool)
    }

    /// [`Self::run_fused`], and when `then` is given, that 1x1 conv applied to each band while it
    /// is in cache, its output returned instead (the classifier's last conv).
    pub(super) fn run_fused_then(
        &self,
        x: MapView<'_>,
        then: Option<&PointwiseConv>,
        pool: &mut BufferPool,
    ) -> FeatureMap {
        let (dw, pw) = (&self.depthwise, &self.pointwise);
        let (h, w) = (x.height, x.width);
        let (oh, ow) = dw.output_size(h, w);
        let channels = dw.channels;
        assert_eq!(x.channels, channels, "separable conv input");
        let x = x.data;
        if let Some(next) = then {
            assert!(
                next.has_packed_kernel() && next.in_channels == pw.out_channels,
                "fused 1x1 conv"
            );
        }
        let out_channels = then.map_or(pw.out_channels, |next| next.out_channels);
        let mut out = pool.take(out_channels * oh * ow);
        let bands = RowBands::new(oh, band_rows(channels * ow, oh));
        let dst = SendPtr(out.as_mut_ptr());
        bands.for_each(|band| {
            let oy0 = band.start;
            let n = band.len() * ow;
            // SAFETY: `has_packed_kernel` was checked for both convs; bands write disjoint
            // pixel ranges of every output plane.
            with_task_scratch(|task| unsafe {
                self.band(
                    x,
                    h * w,
                    0,
                    h,
                    w,
                    oy0,
                    n,
                    then,
                    dst.get().add(oy0 * ow),
                    oh * ow,
                    &mut task.band,
                )
            });
        });
        FeatureMap {
            data: out,
            channels: out_channels,
            height: oh,
            width: ow,
        }
    }
}

impl SeparableConv {
    /// Output pixels `oy0·ow..oy0·ow + n` of the depthwise half, from `planes` (one per channel,
    /// `plane_len` floats apart, holding image rows `r0..` of an `h`x`w` input), through the
    /// pointwise half and `then` into `out` (channel rows `out_stride` apart).
    ///
    /// # Safety
    /// Both pointwise convs must have packed weights, and `out` must be valid for writes of `n`
    /// floats in each of the output channels' rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn band(
        &self,
        planes: &[f32],
        plane_len: usize,
        r0: usize,
        h: usize,
        w: usize,
        oy0: usize,
        n: usize,
        then: Option<&PointwiseConv>,
        out: *mut f32,
        out_stride: usize,
        scratch: &mut BandScratch,
    ) {
        let (dw, pw) = (&self.depthwise, &self.pointwise);
        let channels = dw.channels;
        let filtered = grown(&mut scratch.filtered, channels * n);
        dw.run_band(
            0,
            planes,
            plane_len,
            r0,
            h,
            w,
            oy0,
            n,
            filtered,
            &mut scratch.rows,
        );
        let epilogue = Epilogue {
            bias: &pw.bias,
            residual: None,
            accumulate: false,
            relu: pw.relu,
        };
        let Some(next) = then else {
            pw.gemm_slice(
                0..pw.out_channels,
                0..channels,
                filtered.as_ptr(),
                n,
                out,
                out_stride,
                n,
                epilogue,
            );
            return;
        };
        let separable = grown(&mut scratch.separable, pw.out_channels * n);
        pw.gemm_slice(
            0..pw.out_channels,
            0..channels,
            filtered.as_ptr(),
            n,
            separable.as_mut_ptr(),
            n,
            n,
            epilogue,
        );
        let next_epilogue = Epilogue {
            bias: &next.bias,
            residual: None,
            accumulate: false,
            relu: next.relu,
        };
        next.gemm_slice(
            0..next.out_channels,
            0..pw.out_channels,
            separable.as_ptr(),
            n,
            out,
            out_stride,
            n,
            next_epilogue,
        );
    }
}

/// The stem conv and the depthwise-separable conv after it (learning-to-downsample's first two
/// layers), fused: at 1024x2048 the stem's output is 64 MB, the largest map of the network, and
/// here only the few rows a band of the separable conv reads ever exist.
#[derive(Debug, Clone)]
pub struct StemSeparable {
    /// The dense stem conv on the input image.
    pub stem: DenseConv,
    /// The depthwise-separable conv on the stem's output.
    pub dsconv: SeparableConv,
}

impl StemSeparable {
    /// Output height and width for an `h`x`w` input, after the stem and the depthwise conv.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (sh, sw) = self.stem.output_size(h, w);
        self.dsconv.depthwise.output_size(sh, sw)
    }

    /// Runs both layers on one image, its output in a buffer from `pool`: band by band when the
    /// separable conv's pointwise conv has a packed kernel, layer by layer otherwise.
    pub fn run(&self, x: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        if self.dsconv.pointwise.has_packed_kernel() {
            return self.run_fused(x, pool);
        }
        let (h, w) = (x.height, x.width);
        let (sh, sw) = self.stem.output_size(h, w);
        let mut stem = pool.take(self.stem.out_channels * sh * sw);
        self.stem.run(x.data, h, w, &mut stem);
        let out = self
            .dsconv
            .run(MapView::new(&stem, self.stem.out_channels, sh, sw), pool);
        pool.give(stem);
        out
    }

    pub(super) fn run_fused(&self, x: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        let (h, w) = (x.height, x.width);
        let dw = &self.dsconv.depthwise;
        let (sh, sw) = self.stem.output_size(h, w);
        let (oh, ow) = dw.output_size(sh, sw);
        let (channels, stride) = (dw.channels, dw.stride);
        // A step's stem rows, `channels` x (step·stride + 1 or 2) x sw, about the usual band
        // budget (at least two rows a step, so the shared stem row is not recomputed too often);
        // a band up to three steps, fewer where the threads need more bands.
        let step = band_rows(channels * sw * stride / 2, oh).max(2);
        let most = (3 * step)
            .min(oh.div_ceil(4 * rayon::current_num_threads()))
            .max(step);
        let out = self.run_stepped(x.data, h, w, RowBands::new(oh, most), step, pool);
        FeatureMap {
            data: out,
            channels: self.dsconv.pointwise.out_channels,
            height: oh,
            width: ow,
        }
    }

    /// [`Self::run_fused`] on `bands`, each cut into near-equal steps of at most `step` output
    /// rows run one after the other, each step computing only the stem rows the steps before it
    /// in the band did not. A band's first and last stem rows are shared with its neighbours and
    /// computed by both; rows shared by two steps are computed once. With bands of one step of
    /// two rows (what the cache budget allows at 1024x2048), a fifth of the stem's rows would be
    /// computed twice; with three steps a band, a fourteenth (the block alone:
    /// `cargo bench -p fastscnn-benches --bench kernels -- stem_separable`).
    pub(super) fn run_stepped(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        bands: RowBands,
        step: usize,
        pool: &mut BufferPool,
    ) -> Buffer {
        let stem = &self.stem;
        let (sh, sw) = stem.output_size(h, w);
        let (oh, ow) = self.dsconv.depthwise.output_size(sh, sw);
        let stride = self.dsconv.depthwise.stride;
        let mut out = pool.take(self.dsconv.pointwise.out_channels * oh * ow);
        let dst = SendPtr(out.as_mut_ptr());
        bands.for_each(|band| {
            with_task_scratch(|task| {
                let (oy0, oy1) = (band.start, band.end);
                // The band's stem rows r0..r1, one plane of them per channel; a step writes
                // the rows it adds and reads (with the rows before) only the few it needs.
                let r0 = (oy0 * stride).saturating_sub(1);
                let r1 = ((oy1 - 1) * stride + 2).min(sh);
                let plane = (r1 - r0) * sw;
                let stem_rows = grown(&mut task.first, stem.out_channels * plane);
                let steps = (oy1 - oy0).div_ceil(step.max(1));
                let mut done = r0;
                for i in 0..steps {
                    let a = oy0 + i * (oy1 - oy0) / steps;
                    let b = oy0 + (i + 1) * (oy1 - oy0) / steps;
                    let needed = ((b - 1) * stride + 2).min(sh);
                    // SAFETY: stem rows done..needed of every channel lie inside its plane of
                    // `stem_rows` (rows r0..r1, `plane` floats apart).
                    unsafe {
                        stem.rows_into(
                            x,
                            h,
                            w,
                            done,
                            needed - done,
                            stem_rows.as_mut_ptr().add((done - r0) * sw),
                            plane,
                            &mut task.second,
                        );
                    }
                    done = needed;
                    // SAFETY: `has_packed_kernel` was checked; bands and their steps write
                    // disjoint pixel ranges of every output plane.
                    unsafe {
                        self.dsconv.band(
                            stem_rows,
                            plane,
                            r0,
                            sh,
                            sw,
                            a,
                            (b - a) * ow,
                            None,
                            dst.get().add(a * ow),
                            oh * ow,
                            &mut task.band,
                        )
                    };
                }
            })
        });
        out
    }
}
