//! Fast-SCNN's blocks on plain buffers, each made of the convolutions of its layers with
//! BatchNorm folded into them.
//!
//! Every `run` takes one image's (C, H, W) input and returns its output in a buffer from the
//! [`BufferPool`], handing its intermediates back to the pool as soon as they are read.

use super::buffers::as_uninit;
use super::epilogue::finish_row;
use super::packed_gemm::{Epilogue, TILE_CHANNELS};
use super::resize::resize_planes;
use super::resize::{blend, horizontal_planes, row_taps};
use super::SendPtr;
use super::{Buffer, BufferPool, DenseConv, DepthwiseConv, PointwiseConv, Seed};
use crate::sampling::pool_planes;
use rayon::prelude::*;

/// A dense conv routed to the pointwise kernel when it is 1x1.
#[derive(Debug, Clone)]
pub enum AnyConv {
    Pointwise(PointwiseConv),
    Dense(DenseConv),
}

impl AnyConv {
    pub fn out_channels(&self) -> usize {
        match self {
            AnyConv::Pointwise(c) => c.out_channels,
            AnyConv::Dense(c) => c.out_channels,
        }
    }

    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self {
            AnyConv::Pointwise(_) => (h, w),
            AnyConv::Dense(c) => c.output_size(h, w),
        }
    }

    pub fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        let (oh, ow) = self.output_size(h, w);
        let mut out = pool.take(self.out_channels() * oh * ow);
        match self {
            AnyConv::Pointwise(c) => c.run(x, h * w, &mut out, Seed::Bias),
            AnyConv::Dense(c) => c.run(x, h, w, &mut out),
        }
        (out, oh, ow)
    }
}

/// Depthwise 3x3 then pointwise 1x1 (DSConv).
#[derive(Debug, Clone)]
pub struct SeparableConv {
    pub depthwise: DepthwiseConv,
    pub pointwise: PointwiseConv,
}

impl SeparableConv {
    pub fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        if self.pointwise.has_packed_kernel() {
            return self.run_fused(x, h, w, pool);
        }
        let (oh, ow) = self.depthwise.output_size(h, w);
        let mut hidden = pool.take(self.depthwise.channels * oh * ow);
        self.depthwise.run(x, h, w, &mut hidden);
        let mut out = pool.take(self.pointwise.out_channels * oh * ow);
        self.pointwise.run(&hidden, oh * ow, &mut out, Seed::Bias);
        pool.give(hidden);
        (out, oh, ow)
    }

    /// Band by band of output rows: the depthwise output of a band, all channels, stays in cache
    /// for the pointwise product instead of going to memory and back.
    fn run_fused(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        self.run_fused_then(x, h, w, None, pool)
    }

    /// [`Self::run_fused`], and when `then` is given, that 1x1 conv applied to each band while it
    /// is in cache, its output returned instead (the classifier's last conv).
    fn run_fused_then(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        then: Option<&PointwiseConv>,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        let (dw, pw) = (&self.depthwise, &self.pointwise);
        let (oh, ow) = dw.output_size(h, w);
        let channels = dw.channels;
        assert_eq!(x.len(), channels * h * w, "separable conv input");
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
        (out, oh, ow)
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
    unsafe fn band(
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

/// A task's buffers for [`SeparableConv::band`].
#[derive(Debug, Default)]
struct BandScratch {
    filtered: Vec<f32>,
    separable: Vec<f32>,
    /// The depthwise kernel's row scratch.
    rows: Vec<f32>,
}

/// The buffers of one band task of a fused block: a [`BandScratch`] and three more for what the
/// block computes around it (stem rows, expanded or upsampled rows, filtered rows, the depthwise
/// kernel's scratch).
#[derive(Debug, Default)]
struct TaskScratch {
    band: BandScratch,
    first: Vec<f32>,
    second: Vec<f32>,
    third: Vec<f32>,
}

/// Runs `f` with this thread's [`TaskScratch`], kept between tasks, blocks and frames, so that no
/// task zeroes fresh buffers: rayon's `for_each_init` would build the state anew for every piece
/// of work a loop splits off. (A nested call, which the blocks never make, gets fresh buffers
/// instead of failing.)
fn with_task_scratch<R>(f: impl FnOnce(&mut TaskScratch) -> R) -> R {
    thread_local! {
        static KEPT: std::cell::RefCell<TaskScratch> = std::cell::RefCell::default();
    }
    KEPT.with(|kept| match kept.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut TaskScratch::default()),
    })
}

/// The first `n` floats of `buffer`, grown (with zeros) if it is shorter but never shrunk, so a
/// kept buffer lent for various sizes is written by nothing but its users.
fn grown(buffer: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buffer.len() < n {
        buffer.resize(n, 0.0);
    }
    &mut buffer[..n]
}

/// Output rows per band of a fused block: the band's intermediate (`floats_per_row` per output
/// row) about 256 KiB, and enough bands for every thread to get several.
fn band_rows(floats_per_row: usize, out_rows: usize) -> usize {
    let by_cache = (64 * 1024 / floats_per_row.max(1)).max(1);
    let by_threads = out_rows.div_ceil(4 * rayon::current_num_threads()).max(1);
    by_cache.min(by_threads)
}

/// A fused block's output rows cut into bands of near-equal height, each a task of its own: no
/// more than `most` rows a band, and as many bands as a multiple of the thread count, so that no
/// band is left short (bands of exactly `most` rows would make the stem's last band at 384x768
/// one row of five). One task per band, never a run of bands handed to a thread in one piece:
/// when one core runs slower than the others (a shared machine), the threads that finish early
/// take its remaining bands rather than wait idle at the end of the region.
#[derive(Debug, Clone, Copy)]
struct RowBands {
    rows: usize,
    count: usize,
}

impl RowBands {
    fn new(rows: usize, most: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let count = rows
            .div_ceil(most.max(1))
            .next_multiple_of(threads)
            .min(rows);
        Self { rows, count }
    }

    /// `f` on every band's rows, in parallel.
    fn for_each(self, f: impl Fn(std::ops::Range<usize>) + Sync + Send) {
        (0..self.count)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|b| f(b * self.rows / self.count..(b + 1) * self.rows / self.count));
    }
}

/// The stem conv and the depthwise-separable conv after it (learning-to-downsample's first two
/// layers), fused: at 1024x2048 the stem's output is 64 MB, the largest map of the network, and
/// here only the few rows a band of the separable conv reads ever exist.
#[derive(Debug, Clone)]
pub struct StemSeparable {
    pub stem: DenseConv,
    pub dsconv: SeparableConv,
}

impl StemSeparable {
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (sh, sw) = self.stem.output_size(h, w);
        self.dsconv.depthwise.output_size(sh, sw)
    }

    pub fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        if self.dsconv.pointwise.has_packed_kernel() {
            return self.run_fused(x, h, w, pool);
        }
        let (sh, sw) = self.stem.output_size(h, w);
        let mut stem = pool.take(self.stem.out_channels * sh * sw);
        self.stem.run(x, h, w, &mut stem);
        let out = self.dsconv.run(&stem, sh, sw, pool);
        pool.give(stem);
        out
    }

    fn run_fused(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
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
        let out = self.run_stepped(x, h, w, RowBands::new(oh, most), step, pool);
        (out, oh, ow)
    }

    /// [`Self::run_fused`] on `bands`, each cut into near-equal steps of at most `step` output
    /// rows run one after the other, each step computing only the stem rows the steps before it
    /// in the band did not. A band's first and last stem rows are shared with its neighbours and
    /// computed by both; rows shared by two steps are computed once. With bands of one step of
    /// two rows (what the cache budget allows at 1024x2048), a fifth of the stem's rows would be
    /// computed twice; with three steps a band, a fourteenth (the block alone:
    /// `cargo bench -p fastscnn-benches --bench kernels -- stem_separable`).
    fn run_stepped(
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

/// MobileNet-V2 inverted residual: expand 1x1, depthwise 3x3, linear project 1x1 (+ shortcut).
#[derive(Debug, Clone)]
pub struct FusedBottleneck {
    pub expand: PointwiseConv,
    pub depthwise: DepthwiseConv,
    pub project: PointwiseConv,
    pub shortcut: bool,
}

impl FusedBottleneck {
    pub fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        if self.expand.has_packed_kernel() && self.project.has_packed_kernel() {
            let hidden = self.expand.out_channels * h * w;
            return if hidden >= fuse_above() {
                self.run_fused(x, h, w, pool)
            } else {
                self.run_split(x, h, w, pool)
            };
        }
        let mut expanded = pool.take(self.expand.out_channels * h * w);
        self.expand.run(x, h * w, &mut expanded, Seed::Bias);
        let (oh, ow) = self.depthwise.output_size(h, w);
        let mut filtered = pool.take(self.depthwise.channels * oh * ow);
        self.depthwise.run(&expanded, h, w, &mut filtered);
        pool.give(expanded);
        let mut out = pool.take(self.project.out_channels * oh * ow);
        let seed = if self.shortcut {
            Seed::BiasPlus(x)
        } else {
            Seed::Bias
        };
        self.project.run(&filtered, oh * ow, &mut out, seed);
        pool.give(filtered);
        (out, oh, ow)
    }

    /// Band by band of output rows, and within a band [`hidden_chunk`] hidden channels at a time:
    /// expand the input rows the band reads, filter them depthwise, and add their share of the
    /// projection to the band's output. The 6x-wide hidden tensor never exists in full; what
    /// exists of it stays in cache. The price is recomputing the expansion of the one or two
    /// input rows two bands share.
    fn run_fused(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        let (expand, dw, project) = (&self.expand, &self.depthwise, &self.project);
        let (oh, ow) = dw.output_size(h, w);
        let (cin, hidden, cout, stride) = (
            expand.in_channels,
            expand.out_channels,
            project.out_channels,
            dw.stride,
        );
        assert_eq!(x.len(), cin * h * w, "bottleneck input");
        let mut out = pool.take(cout * oh * ow);
        // A band's expanded chunk: `chunk` x (band·stride + 2) rows x w, allowed twice the
        // usual budget: the two halo rows are expanded twice, so thin bands cost compute.
        let chunk = hidden_chunk();
        let bands = RowBands::new(oh, band_rows(chunk * w * stride / 2, oh));
        let dst = SendPtr(out.as_mut_ptr());
        let zeros = vec![0f32; cout];
        bands.for_each(|band| {
            with_task_scratch(|task| {
                let (oy0, oy1) = (band.start, band.end);
                let n = (oy1 - oy0) * ow;
                let iy0 = (oy0 * stride).saturating_sub(1);
                let iy1 = ((oy1 - 1) * stride + 2).min(h);
                let m = (iy1 - iy0) * w;
                for c0 in (0..hidden).step_by(chunk) {
                    let c1 = (c0 + chunk).min(hidden);
                    let expanded = grown(&mut task.first, (c1 - c0) * m);
                    let filtered = grown(&mut task.second, (c1 - c0) * n);
                    let expand_epilogue = Epilogue {
                        bias: &expand.bias,
                        residual: None,
                        accumulate: false,
                        relu: expand.relu,
                    };
                    let first = c0 == 0;
                    let project_epilogue = Epilogue {
                        bias: if first { &project.bias } else { &zeros },
                        residual: (first && self.shortcut).then(|| x[oy0 * ow..].as_ptr()),
                        accumulate: !first,
                        relu: false,
                    };
                    // SAFETY: `has_packed_kernel` holds for both convs; `x` has the input rows
                    // iy0..iy1 of every input channel at stride h·w; `expanded` is
                    // (c1 - c0, m), `filtered` (c1 - c0, n); bands write disjoint pixel ranges of
                    // every output plane, and a shortcut means stride 1 with cin == cout, so the
                    // residual shares the output's layout.
                    unsafe {
                        expand.gemm_slice(
                            c0..c1,
                            0..cin,
                            x[iy0 * w..].as_ptr(),
                            h * w,
                            expanded.as_mut_ptr(),
                            m,
                            m,
                            expand_epilogue,
                        );
                    }
                    dw.run_band(
                        c0,
                        expanded,
                        m,
                        iy0,
                        h,
                        w,
                        oy0,
                        n,
                        filtered,
                        &mut task.third,
                    );
                    // SAFETY: as above.
                    unsafe {
                        project.gemm_slice(
                            0..cout,
                            c0..c1,
                            filtered.as_ptr(),
                            n,
                            dst.get().add(oy0 * ow),
                            oh * ow,
                            n,
                            project_epilogue,
                        );
                    }
                }
            })
        });
        (out, oh, ow)
    }
}

impl FusedBottleneck {
    /// For maps too small to cut into bands: each task takes a share of the hidden channels over
    /// the whole map, expands, filters and projects them, and the partial projections are summed.
    /// One parallel region per block instead of three, and no halo rows recomputed. One task per
    /// thread, the first projecting straight into the output with the bias and the shortcut: every
    /// other share's partial projection is kept in a buffer of its own and summed after, so the
    /// fewer shares the better, and the first needs no buffer.
    fn run_split(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
        let (expand, dw, project) = (&self.expand, &self.depthwise, &self.project);
        let (oh, ow) = dw.output_size(h, w);
        let (cin, hidden, cout) = (
            expand.in_channels,
            expand.out_channels,
            project.out_channels,
        );
        assert_eq!(x.len(), cin * h * w, "bottleneck input");
        let (m, n) = (h * w, oh * ow);
        let tiles = hidden.div_ceil(TILE_CHANNELS);
        let tasks = rayon::current_num_threads().clamp(1, tiles);
        let share = tiles.div_ceil(tasks) * TILE_CHANNELS;
        let zeros = vec![0f32; cout];
        let mut out = pool.take(cout * n);
        let dst = SendPtr(out.as_mut_ptr());
        // Each task's expanded and filtered maps, and but for the first its partial projection,
        // from the pool: kept between frames.
        let mut work: Vec<(Buffer, Buffer, Option<Buffer>)> = (0..hidden.div_ceil(share))
            .map(|t| {
                let channels = share.min(hidden - t * share);
                (
                    pool.take(channels * m),
                    pool.take(channels * n),
                    (t > 0).then(|| pool.take(cout * n)),
                )
            })
            .collect();
        work.par_iter_mut()
            .enumerate()
            .for_each(|(t, (expanded, filtered, partial))| {
                let (c0, c1) = (t * share, ((t + 1) * share).min(hidden));
                let expand_epilogue = Epilogue {
                    bias: &expand.bias,
                    residual: None,
                    accumulate: false,
                    relu: expand.relu,
                };
                let (target, project_epilogue) = match partial {
                    None => (
                        dst.get(),
                        Epilogue {
                            bias: &project.bias,
                            residual: self.shortcut.then_some(x.as_ptr()),
                            accumulate: false,
                            relu: false,
                        },
                    ),
                    Some(partial) => (
                        partial.as_mut_ptr(),
                        Epilogue {
                            bias: &zeros,
                            residual: None,
                            accumulate: false,
                            relu: false,
                        },
                    ),
                };
                // SAFETY: `has_packed_kernel` holds for both convs; every buffer has the size the
                // products read and write; only the first task writes the output, and a shortcut
                // means stride 1 with cin == cout, so the residual shares the output's layout.
                unsafe {
                    expand.gemm_slice(
                        c0..c1,
                        0..cin,
                        x.as_ptr(),
                        m,
                        expanded.as_mut_ptr(),
                        m,
                        m,
                        expand_epilogue,
                    );
                }
                with_task_scratch(|task| {
                    dw.run_band(c0, expanded, m, 0, h, w, 0, n, filtered, &mut task.third)
                });
                // SAFETY: as above.
                unsafe {
                    project.gemm_slice(
                        0..cout,
                        c0..c1,
                        filtered.as_ptr(),
                        n,
                        target,
                        n,
                        n,
                        project_epilogue,
                    );
                }
            });
        let partials: Vec<&[f32]> = work.iter().filter_map(|(_, _, p)| p.as_deref()).collect();
        if !partials.is_empty() {
            out.par_chunks_mut(n).enumerate().for_each(|(c, row)| {
                for partial in &partials {
                    finish_row(row, 0.0, Some(&partial[c * n..(c + 1) * n]), false);
                }
            });
        }
        drop(partials);
        for (expanded, filtered, partial) in work {
            pool.give(expanded);
            pool.give(filtered);
            if let Some(partial) = partial {
                pool.give(partial);
            }
        }
        (out, oh, ow)
    }
}

/// Hidden tensors (in floats) worth cutting into bands: smaller ones stay in the last-level cache
/// anyway, and their bands would be so thin that recomputing the shared input rows costs more
/// than the memory traffic saved; they are split by channels instead, one parallel region per
/// block. Either way beats the three layers in three parallel regions, the path left to the
/// processors without the packed kernel. 1 M floats on AVX-512; 2 M on AVX2, where the
/// 1.2-1.8 M-float tensors of 768x1536 and 1024x2048 run faster split, as their bands of four
/// rows expand half as many rows again (`cargo xtask profile --size 768x1536`, the bottleneck
/// groups). On NEON, 1 M, the AVX-512 value, not timed on an ARM machine: small boards'
/// last-level caches (2-4 MB) suggest no larger value; Apple's and Graviton's larger caches
/// might take one.
fn fuse_above() -> usize {
    match super::simd::Isa::detected() {
        super::simd::Isa::Avx2 => 2 << 20,
        super::simd::Isa::Avx512 | super::simd::Isa::Neon | super::simd::Isa::Portable => 1 << 20,
    }
}

/// Hidden channels a fused bottleneck expands at a time (a multiple of the kernels' eight-channel
/// weight panels). On AVX2, 64: each chunk packs the band's input and re-reads its output for
/// the projection, so chunks of 32 would do both twice as often, and 128 saves nothing more
/// (`cargo xtask profile --size 768x1536`, bottleneck group 1). On AVX-512, 32, where 64 is no
/// faster. On NEON 64, not timed on an ARM machine: its kernel packs strips of the input as
/// AVX2's does, so the same count of packings is saved.
fn hidden_chunk() -> usize {
    match super::simd::Isa::detected() {
        super::simd::Isa::Avx2 | super::simd::Isa::Neon => 64,
        super::simd::Isa::Avx512 | super::simd::Isa::Portable => 32,
    }
}

/// Pyramid pooling: the input, and each bin's pooled, projected and upsampled features, concatenated
/// and fused by the output conv.
#[derive(Debug, Clone)]
pub struct FusedPyramidPooling {
    pub branches: Vec<(usize, PointwiseConv)>,
    pub out: AnyConv,
    pub align_corners: bool,
}

impl FusedPyramidPooling {
    pub fn run(
        &self,
        x: &[f32],
        c: usize,
        h: usize,
        w: usize,
        pool: &mut BufferPool,
    ) -> (Buffer, usize, usize) {
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
                &projected,
                conv.out_channels,
                *bin,
                *bin,
                &mut concat[offset..end],
                h,
                w,
                self.align_corners,
            );
            offset = end;
        }
        let out = self.out.run(&concat, h, w, pool);
        pool.give(concat);
        out
    }
}

/// Feature fusion: the global features upsampled, depthwise-filtered and projected, plus the
/// projected higher-resolution features, rectified.
#[derive(Debug, Clone)]
pub struct FusedFeatureFusion {
    pub depthwise: DepthwiseConv,
    pub lower: PointwiseConv,
    /// Carries the ReLU of the sum, applied after its product is added to the lower branch's.
    pub higher: PointwiseConv,
    pub align_corners: bool,
}

impl FusedFeatureFusion {
    /// `higher` is (c_h, h, w), `lower` (c_l, lh, lw); the output is (out, h, w).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        higher: &[f32],
        h: usize,
        w: usize,
        lower: &[f32],
        lh: usize,
        lw: usize,
        pool: &mut BufferPool,
    ) -> Buffer {
        if self.lower.has_packed_kernel() && self.higher.has_packed_kernel() {
            return self.run_fused(higher, h, w, lower, lh, lw, pool);
        }
        let channels = self.depthwise.channels;
        let mut upsampled = pool.take(channels * h * w);
        resize_planes(
            lower,
            channels,
            lh,
            lw,
            &mut upsampled,
            h,
            w,
            self.align_corners,
        );
        let mut filtered = pool.take(channels * h * w);
        self.depthwise.run(&upsampled, h, w, &mut filtered);
        pool.give(upsampled);
        let mut out = pool.take(self.lower.out_channels * h * w);
        self.lower.run(&filtered, h * w, &mut out, Seed::Bias);
        pool.give(filtered);
        self.higher.run(higher, h * w, &mut out, Seed::Accumulate);
        out
    }

    /// Band by band of output rows: the upsampled rows a band's depthwise conv reads are blended
    /// from the horizontally interpolated global features (computed once, 1/4 of the rows), the
    /// filtered band stays in cache for the lower-branch product, and the higher branch is added
    /// to it in place. Neither the upsampled nor the filtered map is ever stored in full.
    #[allow(clippy::too_many_arguments)]
    fn run_fused(
        &self,
        higher: &[f32],
        h: usize,
        w: usize,
        lower: &[f32],
        lh: usize,
        lw: usize,
        pool: &mut BufferPool,
    ) -> Buffer {
        let (dw, low, high) = (&self.depthwise, &self.lower, &self.higher);
        let channels = dw.channels;
        assert_eq!(
            lower.len(),
            channels * lh * lw,
            "feature fusion lower input"
        );
        assert_eq!(
            higher.len(),
            high.in_channels * h * w,
            "feature fusion higher input"
        );
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
        out
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pointwise::tests::values;

    /// Seeded weights scaled by `1/sqrt(fan_in)`, so that activations keep their magnitude
    /// through the layers.
    fn weights(n: usize, fan_in: usize, seed: u32) -> Vec<f32> {
        let scale = (fan_in as f32).sqrt().recip();
        values(n, seed).into_iter().map(|v| v * scale).collect()
    }

    fn pointwise(cin: usize, cout: usize, relu: bool, seed: u32) -> PointwiseConv {
        let weight = weights(cout * cin, cin, seed);
        PointwiseConv::new(weight, values(cout, seed + 1), cin, cout, relu)
    }

    fn depthwise(channels: usize, stride: usize, relu: bool, seed: u32) -> DepthwiseConv {
        let weight = weights(channels * 9, 9, seed);
        DepthwiseConv::new(weight, values(channels, seed + 1), channels, stride, relu)
    }

    /// Depthwise 3x3 then 1x1, both rectified, as every DSConv of the network.
    fn separable(cin: usize, cout: usize, stride: usize, seed: u32) -> SeparableConv {
        SeparableConv {
            depthwise: depthwise(cin, stride, true, seed),
            pointwise: pointwise(cin, cout, true, seed + 2),
        }
    }

    /// `n` seeded input values.
    fn input(n: usize, seed: u32) -> Vec<f32> {
        values(n, seed)
    }

    /// The largest difference between `a` and `b`, relative to `b`'s largest magnitude (at
    /// least 1), after checking that `b` is not all zeros.
    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "an output of zeros compares equal to anything");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale.max(1.0)
    }

    /// A random bottleneck (expansion 6) on the packed kernels where the processor has them, and
    /// the same one layer by layer.
    fn bottleneck_pair(
        cin: usize,
        cout: usize,
        stride: usize,
    ) -> (FusedBottleneck, FusedBottleneck) {
        let hidden = 6 * cin;
        let fused = FusedBottleneck {
            expand: pointwise(cin, hidden, true, 1),
            depthwise: depthwise(hidden, stride, true, 3),
            project: pointwise(hidden, cout, false, 5),
            shortcut: stride == 1 && cin == cout,
        };
        let plain = FusedBottleneck {
            expand: fused.expand.clone().without_packed_kernel(),
            project: fused.project.clone().without_packed_kernel(),
            ..fused.clone()
        };
        (fused, plain)
    }

    /// Whatever the thread count, the bands of a fused block's rows are contiguous, cover every
    /// row once, keep to the height asked for and differ by at most a row.
    #[test]
    fn row_bands_cover_the_rows_once_in_near_equal_bands_no_taller_than_asked() {
        for threads in [1, 2, 3] {
            let workers = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (rows, most) in [
                (0, 4),
                (1, 4),
                (2, 1),
                (5, 9),
                (96, 5),
                (48, 5),
                (256, 2),
                (7, 3),
            ] {
                let bands = workers.install(|| RowBands::new(rows, most));
                let seen = std::sync::Mutex::new(Vec::new());
                workers.install(|| bands.for_each(|band| seen.lock().unwrap().push(band)));
                let mut seen = seen.into_inner().unwrap();
                seen.sort_by_key(|band| band.start);
                let case = format!("{rows} rows, at most {most}, {threads} threads: {seen:?}");
                assert_eq!(seen.len(), bands.count, "{case}");
                assert!(bands.count % threads == 0 || bands.count == rows, "{case}");
                let mut next = 0;
                for band in &seen {
                    assert_eq!(band.start, next, "{case}");
                    assert!(!band.is_empty() && band.len() <= most, "{case}");
                    next = band.end;
                }
                assert_eq!(next, rows, "{case}");
                let (short, tall) = seen.iter().fold((usize::MAX, 0), |(a, b), band| {
                    (a.min(band.len()), b.max(band.len()))
                });
                assert!(seen.is_empty() || tall - short <= 1, "{case}");
            }
        }
    }

    /// The channel-split bottleneck cuts the hidden channels by the thread count, the first share
    /// written straight to the output: one share, two and three must all sum to the same.
    #[test]
    fn split_bottleneck_sums_to_the_same_for_any_thread_count() {
        for (cin, cout, stride) in [(16, 16, 1), (16, 24, 2)] {
            let (fused, plain) = bottleneck_pair(cin, cout, stride);
            let (h, w) = (13, 21);
            let x = input(cin * h * w, 5);
            let mut pool = BufferPool::default();
            let (expected, _, _) = plain.run(&x, h, w, &mut pool);
            for threads in [1, 2, 3] {
                let workers = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (got, _, _) = workers.install(|| fused.run(&x, h, w, &mut pool));
                let d = max_diff(&got, &expected);
                assert!(
                    d < 1e-4,
                    "{cin}->{cout} stride {stride}, {threads} threads: {d}"
                );
                pool.give(got);
            }
        }
    }

    /// The fused paths (AVX-512, AVX2 and NEON machines) against the layer-by-layer ones, which
    /// run everywhere.
    #[test]
    fn fused_blocks_equal_the_layer_by_layer_path() {
        let mut pool = BufferPool::default();
        // Big enough for the bottleneck's hidden tensor to pass `fuse_above`, odd-sized, with
        // a last hidden chunk shorter than the others.
        for (cin, cout, stride, h, w) in [
            (24, 24, 1, 97, 163),
            (24, 16, 2, 97, 163),
            (24, 16, 1, 97, 163),
            // Below `fuse_above`: the channel-split path.
            (16, 16, 1, 13, 21),
            (16, 24, 2, 13, 21),
        ] {
            assert_eq!(6 * cin * h * w >= fuse_above(), h > 13, "{cin}x{h}x{w}");
            let (fused, plain) = bottleneck_pair(cin, cout, stride);
            let x = input(cin * h * w, 3);
            let (a, ah, aw) = fused.run(&x, h, w, &mut pool);
            let (b, bh, bw) = plain.run(&x, h, w, &mut pool);
            assert_eq!((ah, aw), (bh, bw));
            let d = max_diff(&a, &b);
            assert!(d < 1e-4, "bottleneck {cin}->{cout} stride {stride}: {d}");
            pool.give(a);
            pool.give(b);
        }
        let fused = FusedFeatureFusion {
            depthwise: depthwise(40, 1, true, 11),
            lower: pointwise(40, 40, false, 13),
            higher: pointwise(24, 40, true, 15),
            align_corners: false,
        };
        let plain = FusedFeatureFusion {
            lower: fused.lower.clone().without_packed_kernel(),
            higher: fused.higher.clone().without_packed_kernel(),
            ..fused.clone()
        };
        let higher = input(24 * 37 * 45, 6);
        let lower = input(40 * 10 * 12, 7);
        let a = fused.run(&higher, 37, 45, &lower, 10, 12, &mut pool);
        let b = plain.run(&higher, 37, 45, &lower, 10, 12, &mut pool);
        let d = max_diff(&a, &b);
        assert!(d < 1e-4, "feature fusion: {d}");
        // Narrow maps, one band per task, and wide ones, cut into bands of a few rows whose edge
        // stem rows are computed by both bands that read them.
        for (padding, stride, h, w) in [
            (0, 2, 67, 93),
            (1, 2, 67, 93),
            (1, 2, 41, 1500),
            (1, 1, 41, 1500),
        ] {
            let stem_weight = weights(16 * 3 * 9, 3 * 9, 21);
            let fused = StemSeparable {
                stem: DenseConv::new(stem_weight, values(16, 22), 3, 16, 3, 2, padding, true),
                dsconv: separable(16, 24, stride, 23),
            };
            let plain = StemSeparable {
                stem: fused.stem.clone().without_packed_kernel(),
                dsconv: SeparableConv {
                    pointwise: fused.dsconv.pointwise.clone().without_packed_kernel(),
                    ..fused.dsconv.clone()
                },
            };
            let x = input(3 * h * w, 8);
            let (a, ah, aw) = fused.run(&x, h, w, &mut pool);
            let (b, bh, bw) = plain.run(&x, h, w, &mut pool);
            assert_eq!((ah, aw), (bh, bw));
            assert_eq!((ah, aw), fused.output_size(h, w));
            let d = max_diff(&a, &b);
            assert!(
                d < 1e-4,
                "stem + separable {h}x{w}, padding {padding}, stride {stride}: {d}"
            );
            // Bands of several steps, which compute the stem rows two steps share once (at the
            // sizes above every band is one step; several come from 768x1536 inputs up). The
            // stepped path runs on the packed kernel alone.
            let steps: &[(usize, usize)] = if fused.dsconv.pointwise.has_packed_kernel() {
                &[(5, 2), (7, 3), (4, 1)]
            } else {
                &[]
            };
            for &(most, step) in steps {
                let c = fused.run_stepped(&x, h, w, RowBands::new(ah, most), step, &mut pool);
                let d = max_diff(&c, &b);
                assert!(
                    d < 1e-4,
                    "stem + separable {h}x{w}, padding {padding}, stride {stride}, bands of \
                     {most} rows in steps of {step}: {d}"
                );
                pool.give(c);
            }
        }
        let fused = FusedClassifier {
            dsconv1: separable(24, 24, 1, 31),
            dsconv2: separable(24, 24, 1, 35),
            conv: pointwise(24, 19, false, 39),
        };
        let plain = FusedClassifier {
            dsconv1: SeparableConv {
                pointwise: fused.dsconv1.pointwise.clone().without_packed_kernel(),
                ..fused.dsconv1.clone()
            },
            dsconv2: SeparableConv {
                pointwise: fused.dsconv2.pointwise.clone().without_packed_kernel(),
                ..fused.dsconv2.clone()
            },
            conv: fused.conv.clone().without_packed_kernel(),
        };
        let x = input(24 * 29 * 53, 9);
        let a = fused.run(&x, 29, 53, &mut pool);
        let b = plain.run(&x, 29, 53, &mut pool);
        let d = max_diff(&a, &b);
        assert!(d < 1e-4, "classifier: {d}");
        for stride in [1, 2] {
            let fused = separable(24, 40, stride, 41);
            let plain = SeparableConv {
                pointwise: fused.pointwise.clone().without_packed_kernel(),
                ..fused.clone()
            };
            let x = input(24 * 33 * 47, 5);
            let (a, _, _) = fused.run(&x, 33, 47, &mut pool);
            let (b, _, _) = plain.run(&x, 33, 47, &mut pool);
            let d = max_diff(&a, &b);
            assert!(d < 1e-4, "separable stride {stride}: {d}");
        }
    }
}
