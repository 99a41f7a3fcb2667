//! An AVX-512 kernel for `out = W · X` where X is channel-major (K, pixels) or K rows anywhere:
//! the pointwise convs and the stem, with bias, shortcut, accumulation and ReLU applied to the
//! registers before the only store.
//!
//! A general GEMM packs both operands and writes its result before any epilogue can run. Here the
//! weights are packed once at load time, eight output channels at a time ([`PackedWeights`]),
//! and X is read in place: a tile of 8 channels x 48 pixels keeps its 24 accumulators in
//! registers, and each step over K loads three vectors of one X row and broadcasts eight weights
//! (24 FMAs for 11 loads). Tails are handled with masked loads and stores.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output channels per tile.
pub(crate) const TILE_CHANNELS: usize = 8;
/// Pixels per tile: three 16-float vectors.
pub(crate) const TILE_PIXELS: usize = 48;

/// (out, K) weights as panels of eight rows stored k-major, the last panel padded with
/// zero rows: the eight weights a step broadcasts are adjacent.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    data: Vec<f32>,
    out_channels: usize,
    depth: usize,
}

impl PackedWeights {
    pub fn new(weight: &[f32], out_channels: usize, depth: usize) -> Self {
        assert_eq!(weight.len(), out_channels * depth, "packed weights");
        let panels = out_channels.div_ceil(TILE_CHANNELS);
        let mut data = vec![0f32; panels * depth * TILE_CHANNELS];
        for c in 0..out_channels {
            let (panel, row) = (c / TILE_CHANNELS, c % TILE_CHANNELS);
            for k in 0..depth {
                data[(panel * depth + k) * TILE_CHANNELS + row] = weight[c * depth + k];
            }
        }
        Self {
            data,
            out_channels,
            depth,
        }
    }
}

/// What happens to a tile's sums before they are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// Added to the sums; laid out as the output (same row stride).
    pub residual: Option<*const f32>,
    /// Add what the output already holds.
    pub accumulate: bool,
    pub relu: bool,
}

/// `out[c][p] = epilogue(Σ_{k in depth} W[c][k] · x[k][p])` for the output channels `channels`
/// and pixels `p0..p1`: the full product, or the slice of it a fused block computes (a few
/// channels of the expansion, a few input channels of the projection).
///
/// # Safety
/// The processor must support AVX-512F. `channels.start` must be a multiple of
/// [`TILE_CHANNELS`] and `channels.end`, `depth.end` within the weights. `x` points at row
/// `depth.start` and must be valid for reads of `depth.len()` rows at stride `x_stride` over
/// columns `p0..p1`; `out` points at channel `channels.start` and must be valid for reads and
/// writes of `channels.len()` rows at stride `out_stride` over the same columns, not overlapping
/// `x`. A residual is indexed from channel 0 at stride `out_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv1x1(
    w: &PackedWeights,
    channels: std::ops::Range<usize>,
    depth: std::ops::Range<usize>,
    x: *const f32,
    x_stride: usize,
    out: *mut f32,
    out_stride: usize,
    p0: usize,
    p1: usize,
    epilogue: Epilogue,
) {
    let rows = Strided {
        x,
        stride: x_stride,
    };
    product(w, channels, depth, rows, out, out_stride, p0, p1, epilogue);
}

/// [`conv1x1`] with X's rows anywhere: row `k` of X (for `k` in `depth`) starts at
/// `rows[k - depth.start]`. A 3x3 stride-2 conv reads its 27 rows straight from de-interleaved
/// input rows this way, so its im2col matrix is never written.
///
/// # Safety
/// As [`conv1x1`], with every row pointer valid for reads over columns `p0..p1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn conv_gathered(
    w: &PackedWeights,
    channels: std::ops::Range<usize>,
    depth: std::ops::Range<usize>,
    rows: &[*const f32],
    out: *mut f32,
    out_stride: usize,
    p0: usize,
    p1: usize,
    epilogue: Epilogue,
) {
    debug_assert_eq!(rows.len(), depth.len());
    product(
        w,
        channels,
        depth,
        Gathered(rows),
        out,
        out_stride,
        p0,
        p1,
        epilogue,
    );
}

/// Where the rows of X are.
#[cfg(target_arch = "x86_64")]
trait Rows: Copy {
    /// Row `k` (from the product's first row), column 0.
    ///
    /// # Safety
    /// `k` must be one of the product's rows.
    unsafe fn row(self, k: usize) -> *const f32;
}

/// Rows one after another at a fixed stride: a channel-major feature map.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Strided {
    x: *const f32,
    stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl Rows for Strided {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        self.x.add(k * self.stride)
    }
}

/// Rows wherever their pointers say.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Gathered<'a>(&'a [*const f32]);

#[cfg(target_arch = "x86_64")]
impl Rows for Gathered<'_> {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        *self.0.get_unchecked(k)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn product(
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
    debug_assert!(channels.start.is_multiple_of(TILE_CHANNELS) && channels.end <= w.out_channels);
    debug_assert!(depth.end <= w.depth);
    let mut channel = channels.start;
    while channel < channels.end {
        let rows = TILE_CHANNELS.min(channels.end - channel);
        let weights = w
            .data
            .as_ptr()
            .add((channel * w.depth) + depth.start * TILE_CHANNELS);
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
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn lane_mask(width: usize, j: usize) -> __mmask16 {
    let n = width.saturating_sub(16 * j).min(16);
    ((1u32 << n) - 1) as __mmask16
}

#[cfg(target_arch = "x86_64")]
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
    // the accumulators stay in registers (with a run-time bound they were kept in a stack array
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
