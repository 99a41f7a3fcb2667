//! 1x1 convolution as one matrix product on the NCHW layout, with bias, residual and ReLU fused.
//!
//! A channel-major (C, H·W) plane is already the right-hand matrix of `W · X`, so a pointwise conv
//! needs no im2col and no transposes. The output is cut into column panels, one per task. With
//! AVX-512, AVX2 or NEON the panel goes through this crate's kernel, which applies bias, shortcut
//! and ReLU in registers; otherwise `gemm` writes the panel single-threaded and they are applied in
//! one pass while it is still in cache. Either way they cost no extra trip to memory.

use rayon::prelude::*;

use super::epilogue::finish_row;
use super::packed_gemm::PackedWeights;
use super::packed_gemm::{conv1x1, Epilogue, PANEL_PIXELS};
use super::SendPtr;

/// A 1x1 convolution with its BatchNorm folded in: `weight` is (out, in) row-major. [`Self::new`]
/// packs a copy of the weights for this crate's kernel: for other weights, build a new one.
#[derive(Debug, Clone)]
pub struct PointwiseConv {
    /// Weights in (out, in) row-major order.
    pub weight: Vec<f32>,
    /// One value per output channel, added before the ReLU.
    pub bias: Vec<f32>,
    /// Channels of the input map.
    pub in_channels: usize,
    /// Channels of the output map.
    pub out_channels: usize,
    /// Whether a ReLU follows the bias (and the shortcut or accumulated sum, if any).
    pub relu: bool,
    /// The weights packed for this crate's kernel, when the processor has one.
    packed: Option<PackedWeights>,
}

/// What the output holds before the product is added to it.
#[derive(Debug, Clone, Copy)]
pub enum Seed<'a> {
    /// The bias alone.
    Bias,
    /// The bias plus this (out, H·W) tensor: a residual shortcut.
    BiasPlus(&'a [f32]),
    /// The bias plus what the output already holds: a second product summed into the first (the
    /// feature fusion's two branches).
    Accumulate,
}

impl PointwiseConv {
    /// Checks the shapes and packs a copy of `weight` for this processor's kernel, where it has
    /// one.
    ///
    /// # Panics
    /// If `weight` does not hold `in_channels * out_channels` floats or `bias` `out_channels`.
    pub fn new(
        weight: Vec<f32>,
        bias: Vec<f32>,
        in_channels: usize,
        out_channels: usize,
        relu: bool,
    ) -> Self {
        assert_eq!(weight.len(), in_channels * out_channels, "pointwise weight");
        assert_eq!(bias.len(), out_channels, "pointwise bias");
        let packed = PackedWeights::for_this_processor(&weight, out_channels, in_channels);
        Self {
            weight,
            bias,
            in_channels,
            out_channels,
            relu,
            packed,
        }
    }

    /// The same convolution run by the `gemm` crate, whatever the processor: what runs without
    /// AVX-512, AVX2 or NEON, and the reference this crate's kernel is tested against.
    pub fn without_packed_kernel(mut self) -> Self {
        self.packed = None;
        self
    }

    /// `out = relu?(W · input + seed)` for one image: `input` is (in, pixels), `out` (out, pixels).
    pub fn run(&self, input: &[f32], pixels: usize, out: &mut [f32], seed: Seed) {
        let (cin, cout) = (self.in_channels, self.out_channels);
        assert_eq!(input.len(), cin * pixels, "pointwise input");
        assert_eq!(out.len(), cout * pixels, "pointwise output");
        if let Seed::BiasPlus(residual) = seed {
            assert_eq!(residual.len(), out.len(), "pointwise residual");
        }
        if let Some(packed) = &self.packed {
            return self.run_packed(packed, input, pixels, out, seed);
        }
        let panel = panel_width(cout, pixels);
        let panels = pixels.div_ceil(panel);
        let dst = SendPtr(out.as_mut_ptr());
        (0..panels).into_par_iter().for_each(|p| {
            let start = p * panel;
            let width = panel.min(pixels - start);
            // SAFETY: panels cover disjoint column ranges of `out`, every row of which lies in
            // bounds (checked above); `input` is read-only and (cin, pixels).
            unsafe {
                let dst = dst.get();
                gemm::gemm(
                    cout,
                    width,
                    cin,
                    dst.add(start),
                    1,
                    pixels as isize,
                    matches!(seed, Seed::Accumulate),
                    self.weight.as_ptr(),
                    1,
                    cin as isize,
                    input.as_ptr().add(start),
                    1,
                    pixels as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for row in 0..cout {
                    let offset = row * pixels + start;
                    let out_row = std::slice::from_raw_parts_mut(dst.add(offset), width);
                    let residual = match seed {
                        Seed::BiasPlus(residual) => Some(&residual[offset..offset + width]),
                        Seed::Bias | Seed::Accumulate => None,
                    };
                    finish_row(out_row, self.bias[row], residual, self.relu);
                }
            }
        });
    }
}

impl PointwiseConv {
    fn run_packed(
        &self,
        packed: &PackedWeights,
        input: &[f32],
        pixels: usize,
        out: &mut [f32],
        seed: Seed,
    ) {
        // Per task, the input columns (in x panel) about a quarter of a core's L2.
        let by_cache =
            (64 * 1024 / self.in_channels.max(1)).max(PANEL_PIXELS) / PANEL_PIXELS * PANEL_PIXELS;
        let by_threads = pixels
            .div_ceil(4 * rayon::current_num_threads())
            .div_ceil(PANEL_PIXELS)
            * PANEL_PIXELS;
        let panel = by_cache.min(by_threads).max(PANEL_PIXELS);
        let dst = SendPtr(out.as_mut_ptr());
        let epilogue = Epilogue {
            bias: &self.bias,
            residual: match seed {
                Seed::BiasPlus(residual) => Some(residual.as_ptr()),
                Seed::Bias | Seed::Accumulate => None,
            },
            accumulate: matches!(seed, Seed::Accumulate),
            relu: self.relu,
        };
        let epilogue = SendEpilogue(epilogue);
        (0..pixels.div_ceil(panel)).into_par_iter().for_each(|p| {
            let start = p * panel;
            let end = (start + panel).min(pixels);
            // SAFETY: `PointwiseConv::new` packs weights only for a kernel the processor has;
            // tasks write disjoint column ranges; `run` checked every length.
            unsafe {
                conv1x1(
                    packed,
                    0..self.out_channels,
                    0..self.in_channels,
                    input.as_ptr(),
                    pixels,
                    dst.get(),
                    pixels,
                    start,
                    end,
                    epilogue.get(),
                );
            }
        });
    }
}

impl PointwiseConv {
    /// Whether [`Self::gemm_slice`] can run: the weights are packed for this processor's kernel.
    pub(crate) fn has_packed_kernel(&self) -> bool {
        self.packed.is_some()
    }

    /// One task's slice of the product on this crate's kernel: output channels `channels` from
    /// input channels `depth`, over `pixels` columns; see [`conv1x1`] for the layout.
    ///
    /// # Safety
    /// [`Self::has_packed_kernel`] must hold, and the pointers satisfy [`conv1x1`]'s contract.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_slice(
        &self,
        channels: std::ops::Range<usize>,
        depth: std::ops::Range<usize>,
        x: *const f32,
        x_stride: usize,
        out: *mut f32,
        out_stride: usize,
        pixels: usize,
        epilogue: Epilogue,
    ) {
        let packed = self
            .packed
            .as_ref()
            .expect("gemm_slice without packed weights");
        conv1x1(
            packed, channels, depth, x, x_stride, out, out_stride, 0, pixels, epilogue,
        );
    }
}

/// The epilogue's raw residual pointer, shared read-only by the tasks.
#[derive(Clone, Copy)]
struct SendEpilogue<'a>(Epilogue<'a>);

// SAFETY: the residual is only read, and outlives the parallel loop.
unsafe impl Send for SendEpilogue<'_> {}
unsafe impl Sync for SendEpilogue<'_> {}

impl<'a> SendEpilogue<'a> {
    fn get(self) -> Epilogue<'a> {
        self.0
    }
}

/// Columns per panel: the panel's output (out x width) about the size of a core's L2 share, in
/// multiples of 16, and small enough that every thread gets several panels.
fn panel_width(out_channels: usize, pixels: usize) -> usize {
    const PANEL_FLOATS: usize = 96 * 1024;
    let by_cache = (PANEL_FLOATS / out_channels.max(1)).clamp(64, 4096) / 16 * 16;
    let by_threads = pixels
        .div_ceil(4 * rayon::current_num_threads())
        .div_ceil(16)
        * 16;
    by_cache.min(by_threads).max(16)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::on_every_isa;

    fn naive(conv: &PointwiseConv, x: &[f32], pixels: usize, residual: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0f32; conv.out_channels * pixels];
        for o in 0..conv.out_channels {
            for p in 0..pixels {
                let mut acc = conv.bias[o] as f64;
                for i in 0..conv.in_channels {
                    acc += conv.weight[o * conv.in_channels + i] as f64 * x[i * pixels + p] as f64;
                }
                if let Some(r) = residual {
                    acc += r[o * pixels + p] as f64;
                }
                out[o * pixels + p] = if conv.relu { acc.max(0.0) } else { acc } as f32;
            }
        }
        out
    }

    /// `n` deterministic values in [-1, 1), different for each `seed`.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_naive_product_for_every_seed_and_odd_sizes() {
        on_every_isa(|_| {
            for (cin, cout, pixels, relu) in
                [(3, 5, 1, false), (64, 96, 1000, true), (17, 33, 4099, true)]
            {
                let fast =
                    PointwiseConv::new(values(cin * cout, 1), values(cout, 2), cin, cout, relu);
                for conv in [fast.clone(), fast.without_packed_kernel()] {
                    let x = values(cin * pixels, 3);
                    let residual = values(cout * pixels, 4);
                    let mut out = vec![f32::NAN; cout * pixels];
                    conv.run(&x, pixels, &mut out, Seed::Bias);
                    let expected = naive(&conv, &x, pixels, None);
                    assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4));
                    conv.run(&x, pixels, &mut out, Seed::BiasPlus(&residual));
                    let expected = naive(&conv, &x, pixels, Some(&residual));
                    assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4));
                }
            }
        });
    }

    #[test]
    fn accumulate_adds_a_second_product_and_its_bias() {
        on_every_isa(|_| {
            let (cin, cout, pixels) = (8, 4, 50);
            let first =
                PointwiseConv::new(values(cin * cout, 5), values(cout, 6), cin, cout, false);
            let second =
                PointwiseConv::new(values(cin * cout, 7), values(cout, 10), cin, cout, true);
            let (a, b) = (values(cin * pixels, 8), values(cin * pixels, 9));
            let mut out = vec![0f32; cout * pixels];
            first.run(&a, pixels, &mut out, Seed::Bias);
            second.run(&b, pixels, &mut out, Seed::Accumulate);
            let sum: Vec<f32> = naive(&first, &a, pixels, None)
                .iter()
                .zip(naive(
                    &PointwiseConv {
                        relu: false,
                        ..second.clone()
                    },
                    &b,
                    pixels,
                    None,
                ))
                .map(|(x, y)| (x + y).max(0.0))
                .collect();
            assert!(out.iter().zip(&sum).all(|(a, b)| (a - b).abs() < 1e-4));
        });
    }
}
