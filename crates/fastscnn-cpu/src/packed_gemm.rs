//! `out = W · X` for the pointwise convs and the stem, where X is channel-major (K, pixels) or K
//! rows anywhere, with bias, shortcut, accumulation and ReLU applied to the registers before the
//! only store.
//!
//! A general GEMM packs both operands and writes its result before any epilogue can run. Here the
//! weights are packed once at load time, eight output channels at a time ([`PackedWeights`]), and
//! X is read by a register-tiled kernel written for the machine's vector width: AVX-512
//! ([`super::gemm_avx512`]), AVX2 with FMA ([`super::gemm_avx2`]) or NEON
//! ([`super::gemm_neon`]). The fused blocks run on
//! slices of it (a few channels of an expansion, a few input channels of a projection), so its
//! contract is one per-slice call, whatever the instruction set.

use super::simd::Isa;

/// Output channels per weight panel: what a fused block's channel slices are multiples of.
pub(crate) const TILE_CHANNELS: usize = 8;

/// A multiple of every kernel's tile width in pixels: column panels of this many pixels have no
/// tail tiles but the last.
pub(crate) const PANEL_PIXELS: usize = 48;

/// A kernel's `product` arguments in one tuple, as its epilogue-specialised copies take them.
pub(super) type ProductArgs<'a, R> = (
    &'a PackedWeights,
    std::ops::Range<usize>,
    std::ops::Range<usize>,
    R,
    *mut f32,
    usize,
    usize,
    usize,
    Epilogue<'a>,
);

/// `$kernel::<ACCUMULATE, RESIDUAL, RELU>($args)` with the epilogue's three choices as constants:
/// one compiled copy of a kernel per epilogue, so that its stores test no flags.
macro_rules! with_epilogue_constants {
    ($kernel:ident, $epilogue:expr, $args:expr) => {
        match (
            $epilogue.accumulate,
            $epilogue.residual.is_some(),
            $epilogue.relu,
        ) {
            (false, false, false) => $kernel::<false, false, false>($args),
            (false, false, true) => $kernel::<false, false, true>($args),
            (false, true, false) => $kernel::<false, true, false>($args),
            (false, true, true) => $kernel::<false, true, true>($args),
            (true, false, false) => $kernel::<true, false, false>($args),
            (true, false, true) => $kernel::<true, false, true>($args),
            (true, true, false) => $kernel::<true, true, false>($args),
            (true, true, true) => $kernel::<true, true, true>($args),
        }
    };
}

pub(super) use with_epilogue_constants;

/// (out, K) weights as panels of eight rows stored k-major, the last panel padded with
/// zero rows: the weights a step of the kernel broadcasts are adjacent.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    pub(super) data: Vec<f32>,
    pub(super) out_channels: usize,
    pub(super) depth: usize,
    /// The kernel these weights run on.
    pub(super) isa: Isa,
}

impl PackedWeights {
    /// The weights packed for the kernel of the instruction set this thread runs
    /// ([`Isa::current`]), or `None` when this crate has none for it (the `gemm` crate runs the
    /// product there). The weights keep their instruction set: they run on its kernel wherever
    /// they are used.
    pub fn for_this_processor(weight: &[f32], out_channels: usize, depth: usize) -> Option<Self> {
        match Isa::current() {
            isa @ (Isa::Avx512 | Isa::Avx2 | Isa::Neon) => {
                Some(Self::new(weight, out_channels, depth, isa))
            }
            Isa::Portable => None,
        }
    }

    fn new(weight: &[f32], out_channels: usize, depth: usize, isa: Isa) -> Self {
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
            isa,
        }
    }

    /// The instruction set of the kernel these weights run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Where output channel `channel`'s weight for input channel `k` is: steps over `k` are
    /// [`TILE_CHANNELS`] floats apart.
    #[inline(always)]
    pub(super) fn at(&self, channel: usize, k: usize) -> *const f32 {
        let (panel, row) = (channel / TILE_CHANNELS, channel % TILE_CHANNELS);
        // SAFETY (of the caller's reads): `channel` and `k` within the packed shape stay inside
        // `data`, which holds whole panels.
        self.data
            .as_ptr()
            .wrapping_add((panel * self.depth + k) * TILE_CHANNELS + row)
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
/// `channels.start` must be a multiple of [`TILE_CHANNELS`] and `channels.end`, `depth.end`
/// within the weights. `x` points at row `depth.start` and must be valid for reads of
/// `depth.len()` rows at stride `x_stride` over columns `p0..p1`; `out` points at channel
/// `channels.start` and must be valid for reads and writes of `channels.len()` rows at stride
/// `out_stride` over the same columns, not overlapping `x`. A residual is indexed from channel 0
/// at stride `out_stride`.
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

/// The kernel the weights were packed for, on rows `x`.
///
/// # Safety
/// As [`conv1x1`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
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
    // SAFETY: weights are packed only for an instruction set the processor has.
    match w.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            super::gemm_avx512::product(w, channels, depth, x, out, out_stride, p0, p1, epilogue)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            super::gemm_avx2::product(w, channels, depth, x, out, out_stride, p0, p1, epilogue)
        }
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        Isa::Neon => {
            super::gemm_neon::product(w, channels, depth, x, out, out_stride, p0, p1, epilogue)
        }
        isa => unreachable!("weights are never packed for {isa:?} on this build target"),
    }
}

/// Where the rows of X are.
pub(super) trait Rows: Copy {
    /// Row `k` (from the product's first row), column 0.
    ///
    /// # Safety
    /// `k` must be one of the product's rows.
    unsafe fn row(self, k: usize) -> *const f32;
}

/// Rows one after another at a fixed stride: a channel-major feature map.
#[derive(Clone, Copy)]
struct Strided {
    x: *const f32,
    stride: usize,
}

impl Rows for Strided {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        self.x.add(k * self.stride)
    }
}

/// Rows wherever their pointers say.
#[derive(Clone, Copy)]
struct Gathered<'a>(&'a [*const f32]);

impl Rows for Gathered<'_> {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        *self.0.get_unchecked(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pointwise::tests::values;

    /// Every packed kernel this processor can run, not only the one `Isa::detected` picks.
    fn kernels() -> Vec<Isa> {
        Isa::available()
            .into_iter()
            .filter(|&isa| isa != Isa::Portable)
            .collect()
    }

    /// A slice of the product (channels, depth, pixels p0..p1) with every epilogue, against a
    /// naive loop, on strided and on gathered rows; outputs outside the slice stay untouched.
    #[test]
    fn every_kernel_computes_slices_of_the_product_with_its_epilogue() {
        let (cout, cin, pixels) = (37, 45, 101);
        let weight = values(cout * cin, 1);
        let bias = values(cout, 2);
        let x = values(cin * pixels, 3);
        let residual = values(cout * pixels, 4);
        let before = values(cout * pixels, 5);
        for isa in kernels() {
            let packed = PackedWeights::new(&weight, cout, cin, isa);
            for (channels, depth, (p0, p1)) in [
                (0..cout, 0..cin, (0, pixels)),
                (8..29, 3..40, (5, 77)),
                (32..cout, 0..1, (0, 24)),
                (16..24, 44..45, (60, 61)),
            ] {
                for (accumulate, with_residual, relu) in [
                    (false, false, false),
                    (true, false, true),
                    (false, true, true),
                ] {
                    let epilogue = Epilogue {
                        bias: &bias,
                        residual: with_residual.then_some(residual.as_ptr()),
                        accumulate,
                        relu,
                    };
                    let expected: Vec<f32> = (0..cout * pixels)
                        .map(|i| {
                            let (c, p) = (i / pixels, i % pixels);
                            if !channels.contains(&c) || !(p0..p1).contains(&p) {
                                return before[i];
                            }
                            let mut v = bias[c] as f64;
                            for k in depth.clone() {
                                v += weight[c * cin + k] as f64 * x[k * pixels + p] as f64;
                            }
                            if accumulate {
                                v += before[i] as f64;
                            }
                            if with_residual {
                                v += residual[i] as f64;
                            }
                            if relu {
                                v = v.max(0.0);
                            }
                            v as f32
                        })
                        .collect();
                    let gathered: Vec<*const f32> =
                        depth.clone().map(|k| x[k * pixels..].as_ptr()).collect();
                    for rows_in_place in [true, false] {
                        let mut out = before.clone();
                        let at = out[channels.start * pixels..].as_mut_ptr();
                        // SAFETY: the slice lies inside `out`, `x` and the weights; `isa` is one
                        // the processor has.
                        unsafe {
                            if rows_in_place {
                                let x = x[depth.start * pixels..].as_ptr();
                                conv1x1(
                                    &packed,
                                    channels.clone(),
                                    depth.clone(),
                                    x,
                                    pixels,
                                    at,
                                    pixels,
                                    p0,
                                    p1,
                                    epilogue,
                                );
                            } else {
                                conv_gathered(
                                    &packed,
                                    channels.clone(),
                                    depth.clone(),
                                    &gathered,
                                    at,
                                    pixels,
                                    p0,
                                    p1,
                                    epilogue,
                                );
                            }
                        }
                        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                            assert!(
                                (a - b).abs() < 1e-4,
                                "{isa:?} {channels:?} {depth:?} {p0}..{p1} at {i}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }
}
