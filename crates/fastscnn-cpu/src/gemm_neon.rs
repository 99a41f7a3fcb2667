//! The NEON tile of [`super::packed_gemm`]: 8 channels x 12 pixels. Its 24 accumulators, the
//! three X vectors of a step and the two vectors of a step's eight weights take 29 of the 32
//! vector registers. Each step over K loads one X row's three vectors and the eight weights, and
//! multiplies every X vector by every weight lane (`fmla v.4s, v.4s, v.s[lane]`): 24 FMAs for 5
//! loads, so the two FMA pipes of a Cortex-A76 class core, not the loads, set the pace
//! (`docs/platforms.md` has the `llvm-mca` analysis of the compiled loop).
//!
//! As on AVX2, the tiles run a few pixel strips at a time: each strip of X (K rows of 12 pixels)
//! is copied once into a contiguous buffer, zero-padded past a tail, and every channel panel's
//! tiles read it from L1 or L2, so a feature map's planes (often a multiple of 4 KiB apart) never
//! meet in the same cache sets. NEON has no masked loads or stores: a tail tile goes through a
//! small buffer on the stack.

use std::arch::aarch64::*;
use std::cell::RefCell;

use super::packed_gemm::{
    with_epilogue_constants, Epilogue, PackedWeights, ProductArgs, Rows, TILE_CHANNELS,
};

/// Pixels per tile: three 4-float vectors.
const TILE_PIXELS: usize = 12;

/// Strips packed and run through every channel panel together, so each output row is written
/// 48 pixels (three cache lines) at a time rather than a partial line per strip.
const STRIPS_PER_BLOCK: usize = 4;

/// One step of a strip: pixels of one X row.
type Step = [float32x4_t; 3];

/// A tile's sums: [channel][vector of 4 pixels].
type Sums = [Step; TILE_CHANNELS];

thread_local! {
    /// The strips of X the tiles read: each K steps of 12 pixels, one after another.
    static STRIPS: RefCell<Vec<Step>> = const { RefCell::new(Vec::new()) };
}

/// [`super::packed_gemm::conv1x1`] on this kernel.
///
/// # Safety
/// The arguments satisfy `conv1x1`'s contract.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    w: &PackedWeights,
    channels: std::ops::Range<usize>,
    depth: std::ops::Range<usize>,
    x: impl Rows,
    out: *mut f32,
    out_stride: usize,
    p0: usize,
    p1: usize,
    epilogue: Epilogue,
) {
    let args = (w, channels, depth, x, out, out_stride, p0, p1, epilogue);
    with_epilogue_constants!(product_with, epilogue, args)
}

/// [`product`] with the epilogue's choices fixed: add what the output holds (`ACCUMULATE`), add
/// the residual (`RESIDUAL`), then the ReLU (`RELU`).
unsafe fn product_with<const ACCUMULATE: bool, const RESIDUAL: bool, const RELU: bool>(
    (w, channels, depth, x, out, out_stride, p0, p1, epilogue): ProductArgs<impl Rows>,
) {
    let k = depth.len();
    let residual = epilogue.residual.unwrap_or(std::ptr::null());
    STRIPS.with_borrow_mut(|strips| {
        // Grown, never shrunk: the products of one frame have many depths.
        if strips.len() < STRIPS_PER_BLOCK * k {
            strips.resize(STRIPS_PER_BLOCK * k, [vdupq_n_f32(0.0); 3]);
        }
        let mut block = p0;
        while block < p1 {
            let end = (block + STRIPS_PER_BLOCK * TILE_PIXELS).min(p1);
            let count = (end - block).div_ceil(TILE_PIXELS);
            for (s, strip) in strips.chunks_exact_mut(k.max(1)).take(count).enumerate() {
                let p = block + s * TILE_PIXELS;
                pack_strip(x, p, TILE_PIXELS.min(end - p), &mut strip[..k]);
            }
            let mut channel = channels.start;
            while channel < channels.end {
                for s in 0..count {
                    let p = block + s * TILE_PIXELS;
                    let tile = Tile {
                        out: out.add((channel - channels.start) * out_stride + p),
                        out_stride,
                        rows: TILE_CHANNELS.min(channels.end - channel),
                        width: TILE_PIXELS.min(end - p),
                        first_channel: channel,
                        first_pixel: p,
                    };
                    let sums = sums(w.at(channel, depth.start), &strips[s * k..(s + 1) * k]);
                    tile.store::<ACCUMULATE, RESIDUAL, RELU>(sums, epilogue.bias, residual);
                }
                channel += TILE_CHANNELS;
            }
            block = end;
        }
    })
}

/// Pixels `p..p + width` of every row of X into `strip`, the lanes past them as zeros.
#[inline]
unsafe fn pack_strip(x: impl Rows, p: usize, width: usize, strip: &mut [Step]) {
    for (k, packed) in strip.iter_mut().enumerate() {
        let row = x.row(k).add(p);
        *packed = if width == TILE_PIXELS {
            [0, 1, 2].map(|j| vld1q_f32(row.add(4 * j)))
        } else {
            let mut tail = [0f32; TILE_PIXELS];
            std::ptr::copy_nonoverlapping(row, tail.as_mut_ptr(), width);
            [0, 1, 2].map(|j| vld1q_f32(tail.as_ptr().add(4 * j)))
        };
    }
}

/// The eight channels' sums over a packed strip, from the weights at `weights` (each step's
/// eight weights adjacent, steps [`TILE_CHANNELS`] floats apart).
///
/// # Safety
/// The weights must hold `strip.len()` steps from `weights`.
#[inline]
unsafe fn sums(weights: *const f32, strip: &[Step]) -> Sums {
    let z = vdupq_n_f32(0.0);
    let mut acc: Sums = [[z; 3]; TILE_CHANNELS];
    let mut wk = weights;
    // Spelt out lane by lane: the lane of `fmla` by element is an immediate.
    macro_rules! channel {
        ($acc:expr, $x:expr, $w:expr, $lane:literal) => {
            $acc[0] = vfmaq_laneq_f32::<$lane>($acc[0], $x[0], $w);
            $acc[1] = vfmaq_laneq_f32::<$lane>($acc[1], $x[1], $w);
            $acc[2] = vfmaq_laneq_f32::<$lane>($acc[2], $x[2], $w);
        };
    }
    for x in strip {
        let (lo, hi) = (vld1q_f32(wk), vld1q_f32(wk.add(4)));
        channel!(acc[0], x, lo, 0);
        channel!(acc[1], x, lo, 1);
        channel!(acc[2], x, lo, 2);
        channel!(acc[3], x, lo, 3);
        channel!(acc[4], x, hi, 0);
        channel!(acc[5], x, hi, 1);
        channel!(acc[6], x, hi, 2);
        channel!(acc[7], x, hi, 3);
        wk = wk.add(TILE_CHANNELS);
    }
    acc
}

/// One tile's place in the output.
#[derive(Clone, Copy)]
struct Tile {
    /// The tile's first output.
    out: *mut f32,
    out_stride: usize,
    /// Output channels to store, at most [`TILE_CHANNELS`] (the panel's padding rows are
    /// computed but never stored).
    rows: usize,
    /// Pixels to store, at most [`TILE_PIXELS`].
    width: usize,
    first_channel: usize,
    first_pixel: usize,
}

impl Tile {
    /// The epilogue and the only store of each of the tile's rows (the first always exists).
    ///
    /// The sums are taken apart first: as one loop over the array, bounded or not by
    /// `self.rows`, LLVM takes the 24 sums through the stack.
    #[inline(always)]
    unsafe fn store<const ACCUMULATE: bool, const RESIDUAL: bool, const RELU: bool>(
        self,
        sums: Sums,
        bias: &[f32],
        residual: *const f32,
    ) {
        let [s0, s1, s2, s3, s4, s5, s6, s7] = sums;
        self.store_row::<ACCUMULATE, RESIDUAL, RELU>(0, s0, bias, residual);
        for (r, sums) in (1..).zip([s1, s2, s3, s4, s5, s6, s7]) {
            if r < self.rows {
                self.store_row::<ACCUMULATE, RESIDUAL, RELU>(r, sums, bias, residual);
            }
        }
    }

    /// Row `r` of [`Self::store`]. A full tile loads and stores in place; a tail copies its
    /// pixels through buffers on the stack.
    #[inline(always)]
    unsafe fn store_row<const ACCUMULATE: bool, const RESIDUAL: bool, const RELU: bool>(
        self,
        r: usize,
        sums: Step,
        bias: &[f32],
        residual: *const f32,
    ) {
        let channel = self.first_channel + r;
        let out_row = self.out.add(r * self.out_stride);
        let residual_row = residual.wrapping_add(channel * self.out_stride + self.first_pixel);
        let bias = vdupq_n_f32(bias[channel]);
        if self.width == TILE_PIXELS {
            finish::<ACCUMULATE, RESIDUAL, RELU>(sums, bias, out_row, residual_row, out_row);
            return;
        }
        let mut held = [0f32; TILE_PIXELS];
        let mut added = [0f32; TILE_PIXELS];
        if ACCUMULATE {
            std::ptr::copy_nonoverlapping(out_row, held.as_mut_ptr(), self.width);
        }
        if RESIDUAL {
            std::ptr::copy_nonoverlapping(residual_row, added.as_mut_ptr(), self.width);
        }
        finish::<ACCUMULATE, RESIDUAL, RELU>(
            sums,
            bias,
            held.as_ptr(),
            added.as_ptr(),
            held.as_mut_ptr(),
        );
        std::ptr::copy_nonoverlapping(held.as_ptr(), out_row, self.width);
    }
}

/// `to = relu?(sums + bias + held? + added?)` for [`TILE_PIXELS`] floats: `held` (what the output
/// holds) is read when `ACCUMULATE`, `added` (the residual) when `RESIDUAL`. The ReLU is
/// `fmaxnm` with zero, which turns a NaN into 0 as the other kernels do.
#[inline(always)]
unsafe fn finish<const ACCUMULATE: bool, const RESIDUAL: bool, const RELU: bool>(
    sums: Step,
    bias: float32x4_t,
    held: *const f32,
    added: *const f32,
    to: *mut f32,
) {
    for (j, sum) in sums.into_iter().enumerate() {
        let mut v = vaddq_f32(sum, bias);
        if ACCUMULATE {
            v = vaddq_f32(v, vld1q_f32(held.add(4 * j)));
        }
        if RESIDUAL {
            v = vaddq_f32(v, vld1q_f32(added.add(4 * j)));
        }
        if RELU {
            v = vmaxnmq_f32(v, vdupq_n_f32(0.0));
        }
        vst1q_f32(to.add(4 * j), v);
    }
}
