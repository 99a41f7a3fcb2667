//! Fast-SCNN's blocks on plain buffers, each made of the convolutions of its layers with
//! BatchNorm folded into them.
//!
//! Every `run` takes one image's (C, H, W) input ([`MapView`]) and returns its output as a
//! [`FeatureMap`] in a buffer from the [`BufferPool`], handing its intermediates back to the pool
//! as soon as they are read.

mod bottleneck;
mod classifier;
mod feature_fusion;
mod pyramid_pooling;
mod separable;
#[cfg(test)]
mod tests;

pub use bottleneck::*;
pub use classifier::*;
pub use feature_fusion::*;
pub use pyramid_pooling::*;
pub use separable::*;

use super::buffers::as_uninit;
use super::epilogue::finish_row;
use super::packed_gemm::{Epilogue, TILE_CHANNELS};
use super::resize::resize_planes;
use super::resize::{blend, horizontal_planes, row_taps};
use super::SendPtr;
use super::{
    Buffer, BufferPool, DenseConv, DepthwiseConv, FeatureMap, MapView, PointwiseConv, Seed,
};
use crate::sampling::pool_planes;
use rayon::prelude::*;

/// A dense conv routed to the pointwise kernel when it is 1x1.
#[derive(Debug, Clone)]
pub enum AnyConv {
    /// A 1x1 conv with stride 1 and no padding, run by the pointwise kernel.
    Pointwise(PointwiseConv),
    /// Any other shape, run as im2col and a matrix product.
    Dense(DenseConv),
}

impl AnyConv {
    /// Channels of the output map.
    pub fn out_channels(&self) -> usize {
        match self {
            AnyConv::Pointwise(c) => c.out_channels,
            AnyConv::Dense(c) => c.out_channels,
        }
    }

    /// Output height and width for an `h`x`w` input.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        match self {
            AnyConv::Pointwise(_) => (h, w),
            AnyConv::Dense(c) => c.output_size(h, w),
        }
    }

    /// Runs the conv on one image, its output in a buffer from `pool`.
    pub fn run(&self, x: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        let (h, w) = (x.height, x.width);
        let (oh, ow) = self.output_size(h, w);
        let mut out = pool.take(self.out_channels() * oh * ow);
        match self {
            AnyConv::Pointwise(c) => c.run(x.data, h * w, &mut out, Seed::Bias),
            AnyConv::Dense(c) => c.run(x.data, h, w, &mut out),
        }
        FeatureMap {
            data: out,
            channels: self.out_channels(),
            height: oh,
            width: ow,
        }
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
/// row) about [`crate::Tuning::band_floats`], and enough bands for every thread to get several.
fn band_rows(floats_per_row: usize, out_rows: usize) -> usize {
    let by_cache = (crate::Tuning::current().band_floats / floats_per_row.max(1)).max(1);
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
