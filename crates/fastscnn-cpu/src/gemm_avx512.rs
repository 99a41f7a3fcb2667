//! The AVX-512 tile of [`super::packed_gemm`]: 8 channels x 48 pixels, whose 24 accumulators
//! stay in registers; each step over K loads three vectors of one X row and broadcasts eight
//! weights (24 FMAs for 11 loads). Tails are handled with masked loads and stores.

use std::arch::x86_64::*;

use super::packed_gemm::{Epilogue, PackedWeights, Rows, TILE_CHANNELS};

/// Pixels per tile: three 16-float vectors.
const TILE_PIXELS: usize = 48;

/// [`super::packed_gemm::conv1x1`] on this kernel, channel panel by channel panel, each over the
/// pixels.
///
/// # Safety
/// The processor must support AVX-512F, and the arguments satisfy `conv1x1`'s contract.
#[target_feature(enable = "avx512f")]
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
    let mut channel = channels.start;
    while channel < channels.end {
        let rows = TILE_CHANNELS.min(channels.end - channel);
        let weights = w.at(channel, depth.start);
        let out_rows = out.add((channel - channels.start) * out_stride);
        let mut p = p0;
        while p < p1 {
            let width = TILE_PIXELS.min(p1 - p);
            tile(
                weights,
                depth.len(),
                x,
                out_rows.add(p),
                out_stride,
                rows,
                width,
                channel,
                p,
                epilogue,
            );
            p += width;
        }
        channel += TILE_CHANNELS;
    }
}

/// The lanes of vector `j` (16 floats each) of a run of `width` floats that hold one of them:
/// the mask of a run's tail, for loads and stores that stay inside it.
#[inline(always)]
pub(crate) fn lane_mask(width: usize, j: usize) -> __mmask16 {
    let n = width.saturating_sub(16 * j).min(16);
    ((1u32 << n) - 1) as __mmask16
}

#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    weights: *const f32,
    depth: usize,
    x: impl Rows,
    out: *mut f32,
    out_stride: usize,
    rows: usize,
    width: usize,
    first_channel: usize,
    first_pixel: usize,
    epilogue: Epilogue,
) {
    let masks = [
        lane_mask(width, 0),
        lane_mask(width, 1),
        lane_mask(width, 2),
    ];
    let mut acc = [[_mm512_setzero_ps(); 3]; TILE_CHANNELS];
    for k in 0..depth {
        let row = x.row(k).add(first_pixel);
        let xv = [
            _mm512_maskz_loadu_ps(masks[0], row),
            _mm512_maskz_loadu_ps(masks[1], row.add(16)),
            _mm512_maskz_loadu_ps(masks[2], row.add(32)),
        ];
        let wk = weights.add(k * TILE_CHANNELS);
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let wv = _mm512_set1_ps(*wk.add(r));
            for j in 0..3 {
                acc_row[j] = _mm512_fmadd_ps(wv, xv[j], acc_row[j]);
            }
        }
    }
    let zero = _mm512_setzero_ps();
    // A loop over all eight rows with a test, not `take(rows)`: unrolled with constant indices,
    // the accumulators stay in registers (with a run-time bound LLVM keeps them in a stack array
    // as well, zeroed by a 1.5 KB memset per tile).
    for (r, acc_row) in acc.iter().enumerate() {
        if r >= rows {
            break;
        }
        let bias = _mm512_set1_ps(epilogue.bias[first_channel + r]);
        let out_row = out.add(r * out_stride);
        for j in 0..3 {
            let mut v = _mm512_add_ps(acc_row[j], bias);
            if epilogue.accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[j], out_row.add(16 * j)));
            }
            if let Some(residual) = epilogue.residual {
                let res = residual.add((first_channel + r) * out_stride + first_pixel + 16 * j);
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[j], res));
            }
            if epilogue.relu {
                v = _mm512_max_ps(v, zero);
            }
            _mm512_mask_storeu_ps(out_row.add(16 * j), masks[j], v);
        }
    }
}
