//! The AVX2 + FMA tile of [`super::packed_gemm`]: 4 channels x 24 pixels, whose 12 accumulators,
//! three X vectors and one broadcast weight fill the sixteen vector registers; each step over K
//! loads three vectors of one X row and broadcasts four weights (12 FMAs for 7 loads).
//!
//! The tiles run pixel strip by pixel strip: each strip of X (K rows of 24 pixels) is copied
//! once into a contiguous buffer, zero-padded past a tail, and every output channel's tiles read
//! it from L1; only the weights (a few KB per panel) stream from L2.
//!
//! The loop over K is written in assembly. With all sixteen registers live, LLVM rotated the
//! accumulators through the registers every step (a dozen moves and a spill per 12 FMAs, 1.5x
//! slower than the 8-accumulator tile it was meant to beat); the assembly is the loop a
//! register allocator should have produced.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

use super::packed_gemm::{Epilogue, PackedWeights, Rows, TILE_CHANNELS};

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
    STRIP.with_borrow_mut(|strip| {
        strip.resize(depth.len(), [_mm256_setzero_ps(); 3]);
        let mut p = p0;
        while p < p1 {
            let width = TILE_PIXELS.min(p1 - p);
            let masks = [
                lane_mask(width, 0),
                lane_mask(width, 1),
                lane_mask(width, 2),
            ];
            pack_strip(x, p, width, &masks, strip);
            let mut channel = channels.start;
            while channel < channels.end {
                let tile = Tile {
                    weights: w.at(channel, depth.start),
                    out: out.add((channel - channels.start) * out_stride + p),
                    out_stride,
                    rows: TILE_ROWS.min(channels.end - channel),
                    first_channel: channel,
                    first_pixel: p,
                };
                let sums = tile.sums(strip);
                if width == TILE_PIXELS {
                    tile.store::<true>(sums, &masks, epilogue);
                } else {
                    tile.store::<false>(sums, &masks, epilogue);
                }
                channel += TILE_ROWS;
            }
            p += width;
        }
    })
}

thread_local! {
    /// The strip of X the tiles read: K rows of 24 pixels, one after another.
    static STRIP: RefCell<Vec<[__m256; 3]>> = const { RefCell::new(Vec::new()) };
}

/// Pixels `p..p + width` of every row of X into `strip`, the lanes past them (`masks`) as zeros.
/// X's rows are a feature map's planes, often a multiple of 4 KiB apart: read in place, a strip's
/// rows all fell in the same few L1 sets and came from L2 every time.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn pack_strip(
    x: impl Rows,
    p: usize,
    width: usize,
    masks: &[__m256i; 3],
    strip: &mut [[__m256; 3]],
) {
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

/// The lanes of vector `j` (8 floats each) of a run of `width` floats that hold one of them, as
/// AVX2's masked moves take it: a lane is on when its sign bit is set.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn lane_mask(width: usize, j: usize) -> __m256i {
    let n = width.saturating_sub(8 * j).min(8) as i32;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes)
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
        // SAFETY: `strip` holds `depth` rows of three vectors; the weights hold `depth` steps
        // of TILE_CHANNELS floats from `self.weights` (the caller's contract).
        asm!(
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
    /// took the twelve sums through memory.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(self, sums: Sums, masks: &[__m256i; 3], epilogue: Epilogue) {
        let load = |at: *const f32, j: usize| {
            if FULL {
                _mm256_loadu_ps(at)
            } else {
                _mm256_maskload_ps(at, masks[j])
            }
        };
        let zero = _mm256_setzero_ps();
        // A loop over all rows with a test rather than `take(rows)`, so it unrolls with constant
        // indices and the sums stay in registers.
        for (r, row_sums) in sums.iter().enumerate() {
            if r >= self.rows {
                break;
            }
            let channel = self.first_channel + r;
            let bias = _mm256_set1_ps(epilogue.bias[channel]);
            let out_row = self.out.add(r * self.out_stride);
            for (j, &sum) in row_sums.iter().enumerate() {
                let mut v = _mm256_add_ps(sum, bias);
                if epilogue.accumulate {
                    v = _mm256_add_ps(v, load(out_row.add(8 * j), j));
                }
                if let Some(residual) = epilogue.residual {
                    let at = channel * self.out_stride + self.first_pixel + 8 * j;
                    v = _mm256_add_ps(v, load(residual.add(at), j));
                }
                if epilogue.relu {
                    v = _mm256_max_ps(v, zero);
                }
                if FULL {
                    _mm256_storeu_ps(out_row.add(8 * j), v);
                } else {
                    _mm256_maskstore_ps(out_row.add(8 * j), masks[j], v);
                }
            }
        }
    }
}
