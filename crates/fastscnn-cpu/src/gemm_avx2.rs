//! The AVX2 + FMA tile of [`super::packed_gemm`]: 4 channels x 24 pixels, whose 12 accumulators,
//! three X vectors and one broadcast weight fill the sixteen vector registers; each step over K
//! loads three vectors of one X row and broadcasts four weights (12 FMAs for 7 loads).
//!
//! The tiles run four pixel strips at a time: each strip of X (K rows of 24 pixels) is copied
//! once into a contiguous buffer, zero-padded past a tail, and every output channel's tiles read
//! it from L1 or L2; only the weights (a few KB per panel) stream from L2.
//!
//! The loop over K is written in assembly: with all sixteen registers live, LLVM rotates the
//! accumulators through the registers every step (a dozen moves and a spill per 12 FMAs), where
//! the assembly keeps each in one register, the loop a register allocator should produce
//! (`cargo bench -p fastscnn-benches --bench kernels -- pointwise`, `fused_packed_kernel`).

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

use super::packed_gemm::{
    with_epilogue_constants, Epilogue, PackedWeights, ProductArgs, Rows, TILE_CHANNELS,
};

/// Output channels per tile: half a weight panel.
const TILE_ROWS: usize = 4;
/// Pixels per tile: three 8-float vectors.
const TILE_PIXELS: usize = 24;

/// [`super::packed_gemm::conv1x1`] on this kernel.
///
/// # Safety
/// The processor must support AVX2 and FMA, and the arguments satisfy `conv1x1`'s contract.
#[target_feature(enable = "avx2,fma")]
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
#[target_feature(enable = "avx2,fma")]
unsafe fn product_with<const ACCUMULATE: bool, const RESIDUAL: bool, const RELU: bool>(
    (w, channels, depth, x, out, out_stride, p0, p1, epilogue): ProductArgs<impl Rows>,
) {
    let k = depth.len();
    let bias = epilogue.bias;
    let residual = epilogue.residual.unwrap_or(std::ptr::null());
    STRIPS.with_borrow_mut(|strips| {
        // Grown, never shrunk: the products of one frame have many depths, and a resize down
        // and up again would write the zeros anew.
        if strips.len() < STRIPS_PER_BLOCK * k {
            strips.resize(STRIPS_PER_BLOCK * k, [_mm256_setzero_ps(); 3]);
        }
        let mut block = p0;
        while block < p1 {
            let end = (block + STRIPS_PER_BLOCK * TILE_PIXELS).min(p1);
            let count = (end - block).div_ceil(TILE_PIXELS);
            for (s, strip) in strips.chunks_exact_mut(k.max(1)).take(count).enumerate() {
                let p = block + s * TILE_PIXELS;
                pack_strip(x, p, TILE_PIXELS.min(end - p), strip);
            }
            let mut channel = channels.start;
            while channel < channels.end {
                for s in 0..count {
                    let p = block + s * TILE_PIXELS;
                    let width = TILE_PIXELS.min(end - p);
                    let tile = Tile {
                        weights: w.at(channel, depth.start),
                        out: out.add((channel - channels.start) * out_stride + p),
                        out_stride,
                        rows: TILE_ROWS.min(channels.end - channel),
                        first_channel: channel,
                        first_pixel: p,
                    };
                    let sums = tile.sums(&strips[s * k..(s + 1) * k]);
                    if width == TILE_PIXELS {
                        tile.store::<true, ACCUMULATE, RESIDUAL, RELU>(sums, width, bias, residual);
                    } else {
                        tile.store::<false, ACCUMULATE, RESIDUAL, RELU>(
                            sums, width, bias, residual,
                        );
                    }
                }
                channel += TILE_ROWS;
            }
            block = end;
        }
    })
}

/// Strips packed and run through every channel tile together: each output row is written
/// `STRIPS_PER_BLOCK` tiles (384 bytes) at a time instead of one, so that outputs that do not fit
/// in cache are not written a partial line per row per strip.
const STRIPS_PER_BLOCK: usize = 4;

thread_local! {
    /// The strips of X the tiles read: each K rows of 24 pixels, one after another.
    static STRIPS: RefCell<Vec<[__m256; 3]>> = const { RefCell::new(Vec::new()) };
}

/// Pixels `p..p + width` of every row of X into `strip`, the lanes past them as zeros.
/// X's rows are a feature map's planes, often a multiple of 4 KiB apart: read in place, a strip's
/// rows would all fall in the same few L1 sets and come from L2 every time.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn pack_strip(x: impl Rows, p: usize, width: usize, strip: &mut [[__m256; 3]]) {
    let masks = lane_masks(width);
    for (k, packed) in strip.iter_mut().enumerate() {
        let row = x.row(k).add(p);
        *packed = if width == TILE_PIXELS {
            [0, 1, 2].map(|j| _mm256_loadu_ps(row.add(8 * j)))
        } else {
            [0, 1, 2].map(|j| _mm256_maskload_ps(row.add(8 * j), masks[j]))
        };
    }
}

/// One tile's place in the product.
#[derive(Clone, Copy)]
struct Tile {
    /// The first channel's weight for the first input channel; k steps are [`TILE_CHANNELS`]
    /// floats apart.
    weights: *const f32,
    /// The tile's first output.
    out: *mut f32,
    out_stride: usize,
    /// Output channels to store, at most [`TILE_ROWS`] (the weights beyond are padding or
    /// another tile's, and are computed but never stored).
    rows: usize,
    first_channel: usize,
    first_pixel: usize,
}

/// A tile's sums: [channel][vector of 8 pixels].
type Sums = [[__m256; 3]; TILE_ROWS];

/// For each of a tile's three vectors (8 floats each), its lanes that hold one of a run of
/// `width` floats, as AVX2's masked moves take them: a lane is on when its sign bit is set.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn lane_masks(width: usize) -> [__m256i; 3] {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    [0, 1, 2].map(|j| {
        let n = width.saturating_sub(8 * j).min(8) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes)
    })
}

impl Tile {
    /// The tile's sums over the packed strip, by the loop in assembly.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sums(self, strip: &[[__m256; 3]]) -> Sums {
        let z = _mm256_setzero_ps();
        if strip.is_empty() {
            return [[z; 3]; TILE_ROWS];
        }
        let (mut a00, mut a01, mut a02) = (z, z, z);
        let (mut a10, mut a11, mut a12) = (z, z, z);
        let (mut a20, mut a21, mut a22) = (z, z, z);
        let (mut a30, mut a31, mut a32) = (z, z, z);
        debug_assert_eq!(
            TILE_CHANNELS * 4,
            32,
            "the loop steps the weights by 32 bytes"
        );
        // The loop's start is aligned to a 64-byte line, so that its speed does not depend on
        // where the function's layout puts it
        // (`cargo bench -p fastscnn-benches --bench kernels -- pointwise`).
        // SAFETY: `strip` holds `depth` rows of three vectors; the weights hold `depth` steps
        // of TILE_CHANNELS floats from `self.weights` (the caller's contract).
        asm!(
            ".p2align 6",
            "2:",
            "vmovaps {x0}, ymmword ptr [{row}]",
            "vmovaps {x1}, ymmword ptr [{row} + 32]",
            "vmovaps {x2}, ymmword ptr [{row} + 64]",
            "add {row}, 96",
            "vbroadcastss {w}, dword ptr [{wk}]",
            "vfmadd231ps {a00}, {w}, {x0}",
            "vfmadd231ps {a01}, {w}, {x1}",
            "vfmadd231ps {a02}, {w}, {x2}",
            "vbroadcastss {w}, dword ptr [{wk} + 4]",
            "vfmadd231ps {a10}, {w}, {x0}",
            "vfmadd231ps {a11}, {w}, {x1}",
            "vfmadd231ps {a12}, {w}, {x2}",
            "vbroadcastss {w}, dword ptr [{wk} + 8]",
            "vfmadd231ps {a20}, {w}, {x0}",
            "vfmadd231ps {a21}, {w}, {x1}",
            "vfmadd231ps {a22}, {w}, {x2}",
            "vbroadcastss {w}, dword ptr [{wk} + 12]",
            "vfmadd231ps {a30}, {w}, {x0}",
            "vfmadd231ps {a31}, {w}, {x1}",
            "vfmadd231ps {a32}, {w}, {x2}",
            "add {wk}, 32",
            "dec {k}",
            "jnz 2b",
            row = inout(reg) strip.as_ptr() => _,
            wk = inout(reg) self.weights => _,
            k = inout(reg) strip.len() => _,
            w = out(ymm_reg) _,
            x0 = out(ymm_reg) _,
            x1 = out(ymm_reg) _,
            x2 = out(ymm_reg) _,
            a00 = inout(ymm_reg) a00,
            a01 = inout(ymm_reg) a01,
            a02 = inout(ymm_reg) a02,
            a10 = inout(ymm_reg) a10,
            a11 = inout(ymm_reg) a11,
            a12 = inout(ymm_reg) a12,
            a20 = inout(ymm_reg) a20,
            a21 = inout(ymm_reg) a21,
            a22 = inout(ymm_reg) a22,
            a30 = inout(ymm_reg) a30,
            a31 = inout(ymm_reg) a31,
            a32 = inout(ymm_reg) a32,
            options(nostack, readonly),
        );
        [
            [a00, a01, a02],
            [a10, a11, a12],
            [a20, a21, a22],
            [a30, a31, a32],
        ]
    }

    /// The epilogue and the only store. `FULL` tiles are [`TILE_PIXELS`] wide and use plain
    /// loads and stores; a tail tile masked ones, which keep to the pixels it has (AMD's masked
    /// stores are slow, so only tails pay for them).
    ///
    /// Inlined into [`product`], whose target features it runs with: as a call of its own it
    /// would take the twelve sums through memory.
    #[inline(always)]
    unsafe fn store<
        const FULL: bool,
        const ACCUMULATE: bool,
        const RESIDUAL: bool,
        const RELU: bool,
    >(
        self,
        sums: Sums,
        width: usize,
        bias: &[f32],
        residual: *const f32,
    ) {
        let masks = lane_masks(width);
        let [s0, s1, s2, s3] = sums;
        // Spelt out rather than a loop over the array, which LLVM keeps on the stack, or a
        // closure, which has none of `product`'s target features.
        self.store_row::<FULL, ACCUMULATE, RESIDUAL, RELU>(0, s0, &masks, bias, residual);
        if self.rows > 1 {
            self.store_row::<FULL, ACCUMULATE, RESIDUAL, RELU>(1, s1, &masks, bias, residual);
        }
        if self.rows > 2 {
            self.store_row::<FULL, ACCUMULATE, RESIDUAL, RELU>(2, s2, &masks, bias, residual);
        }
        if self.rows > 3 {
            self.store_row::<FULL, ACCUMULATE, RESIDUAL, RELU>(3, s3, &masks, bias, residual);
        }
    }

    /// Row `r` of [`Self::store`]; `residual` is used only when `RESIDUAL`.
    #[inline(always)]
    unsafe fn store_row<
        const FULL: bool,
        const ACCUMULATE: bool,
        const RESIDUAL: bool,
        const RELU: bool,
    >(
        self,
        r: usize,
        sums: [__m256; 3],
        masks: &[__m256i; 3],
        bias: &[f32],
        residual: *const f32,
    ) {
        let channel = self.first_channel + r;
        let bias = _mm256_set1_ps(bias[channel]);
        let out_row = self.out.add(r * self.out_stride);
        let residual_row = residual.wrapping_add(channel * self.out_stride + self.first_pixel);
        for (j, sum) in sums.into_iter().enumerate() {
            let mut v = _mm256_add_ps(sum, bias);
            if ACCUMULATE {
                v = _mm256_add_ps(v, load::<FULL>(out_row.add(8 * j), masks[j]));
            }
            if RESIDUAL {
                v = _mm256_add_ps(v, load::<FULL>(residual_row.add(8 * j), masks[j]));
            }
            if RELU {
                v = _mm256_max_ps(v, _mm256_setzero_ps());
            }
            if FULL {
                _mm256_storeu_ps(out_row.add(8 * j), v);
            } else {
                _mm256_maskstore_ps(out_row.add(8 * j), masks[j], v);
            }
        }
    }
}

/// Eight floats at `at`: all of them in a full tile, the lanes of `mask` in a tail.
#[inline(always)]
unsafe fn load<const FULL: bool>(at: *const f32, mask: __m256i) -> __m256 {
    if FULL {
        _mm256_loadu_ps(at)
    } else {
        _mm256_maskload_ps(at, mask)
    }
}
